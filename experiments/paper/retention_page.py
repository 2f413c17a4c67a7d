"""Write the retention section into the results page, with its plot and its raw points.

The section sits between two HTML comments in ``RESULTS.md``; the ``report`` stage keeps it
when it redraws the rest of the page, and this stage replaces only it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .retention import merges
from .retention_report import BOOTSTRAP, analyses, plot, points, section

BEGIN = "<!-- retention: written by `python -m experiments.paper retention-report` -->"
END = "<!-- /retention -->"


def write_retention(cache: Path, settings: dict, seeds: list[int], page: Path, *, command: str) -> dict:
    """Measure nothing: read the cached scores, compute signals and statistics, write page, plot, JSON.

    Returns:
        ``{"points": rows, "analyses": stats}`` as written to ``retention.json`` beside the page.
    """
    rows = points(cache, settings, seeds)
    draws = 200 if settings["quick"] else BOOTSTRAP  # the quick mode shows the page, not the precision
    stats = analyses(rows, draws=draws)
    plot_path = page.with_name("retention.png")
    if rows:
        plot(rows, plot_path)
    planned = sum(len(plan["domains"]) for plan in merges(seeds))
    body = section(rows, stats, planned=planned, plot_name=plot_path.name, seeds=seeds, draws=draws)
    body += f"\n*Regenerate with* `{command}`.\n"
    result = {"seeds": seeds, "planned": planned, "points": rows, "analyses": stats}
    page.with_name("retention.json").write_text(json.dumps(result, indent=1) + "\n")
    replace_section(page, body)
    return result


def replace_section(page: Path, body: str) -> None:
    """Put ``body`` between the markers of ``page`` (appended, with the markers, when absent)."""
    text = page.read_text() if page.exists() else ""
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block
    page.write_text(text)


def kept_section(page: Path) -> str:
    """The retention block of an existing page (markers included), or ``""``."""
    text = page.read_text() if page.exists() else ""
    if BEGIN in text and END in text:
        return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"
    return ""
