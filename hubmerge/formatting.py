"""Numbers, sizes and tables as text: the one place every front end formats them.

The terminal table is huggingface_hub's own (``huggingface_hub.utils.tabulate``,
the one ``hf`` prints with); the card's tables are Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from huggingface_hub.utils import tabulate

__all__ = ["format_bytes", "format_number", "markdown_table", "text_table"]

MISSING = "—"


def format_number(value: float | int | None, digits: int = 4) -> str:
    """A number for people: ``digits`` significant digits, scientific beyond 10⁴, "—" for a missing value.

    Example:
        >>> format_number(0.0123456), format_number(None), format_number(3), format_number(123456.0)
        ('0.01235', '—', '3', '1.235e+05')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.{digits - 1}e}"


def format_bytes(count: int) -> str:
    """A file size in binary units: ``512 B``, ``2.5 KB``, ``1.2 GB``."""
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with a dashed rule under the header (trailing spaces removed)."""
    table = tabulate([[str(cell) for cell in row] for row in rows], headers=[str(h) for h in header])
    return "\n".join(line.rstrip() for line in table.splitlines())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; cells are folded to one line and their pipes escaped."""

    def cell(value: object) -> str:
        return " ".join(str(value).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
