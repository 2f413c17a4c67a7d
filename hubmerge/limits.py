"""How much one merge may ask for: the default ceilings and the size syntax of ``--max-download-size``.

A mistyped repo id can point at a repository of any size; the limits stop a
merge before it downloads, judged from the file sizes the Hub reports. They
apply to the Python API and the CLI (``--max-adapters``, ``--max-download-size``,
or ``HUBMERGE_MAX_ADAPTERS`` / ``HUBMERGE_MAX_DOWNLOAD_SIZE``); the Space passes
its own, smaller ceilings to the same arguments (``spaces/app.py``).
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["DEFAULT_MAX_ADAPTERS", "DEFAULT_MAX_DOWNLOAD_BYTES", "parse_size"]

# The largest LoRA adapters in common use (rank 256 on a 70B model) are a few GB; merges of more
# than a few dozen adapters are not a use hubmerge is built for.
DEFAULT_MAX_ADAPTERS = 64
DEFAULT_MAX_DOWNLOAD_BYTES = 20 * 10**9

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*")
_UNLIMITED = ("none", "unlimited")


def parse_size(text: str) -> int | None:
    """Bytes from ``"500MB"``, ``"2GB"``, ``"1.5GiB"`` or ``"1000"``; ``None`` for ``"none"`` (no limit).

    KB, MB, GB, TB are powers of 1000, as the Hub shows sizes; KiB, MiB, GiB, TiB powers of 1024.

    Raises:
        ValueError: not a size.
    """
    if text.strip().lower() in _UNLIMITED:
        return None
    match = _SIZE.fullmatch(text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: write e.g. 500MB, 20GB, 1.5GiB, or none")
    return int(Fraction(match.group(1)) * _UNITS[unit])  # exact, and no float overflow for long numbers
