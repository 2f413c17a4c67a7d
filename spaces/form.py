"""The Space's form, checked: what a request may ask for, and what it typed, as hubmerge takes it.

No Gradio here. Everything is checked before anything is downloaded: at least two Hub references (never a
path: that would read the server's own disk), a usable weight for each (0 leaves an adapter out, so it is a
message, not a merge), a known method, a rank and a density in range.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from messages import REFERENCE_HINT, SpaceError, explain, space_words

import hubmerge

__all__ = ["DEFAULT_METHOD", "Form", "Limits", "MERGE_METHODS", "read_form"]

# The merge methods offered, name -> one line in the page's words, from hubmerge's method registry (the CLI's
# --help and the model card read the same entries).
MERGE_METHODS: dict[str, str] = {name: space_words(m.description) for name, m in hubmerge.METHODS.items()}
DEFAULT_METHOD = "sum"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
        max_adapters: adapters per merge.
        max_download_bytes: adapter files per merge, in bytes, by the sizes the Hub reports.
    """

    max_adapters: int = 8
    max_download_bytes: int = 2 * 1024**3

    @classmethod
    def from_env(cls) -> Limits:
        """The limits a Space's variables set: ``HUBMERGE_SPACE_MAX_ADAPTERS``, ``HUBMERGE_SPACE_MAX_DOWNLOAD_MB``.

        Raises:
            ValueError: a value is not a whole number, or is below 2 adapters / 1 MB.
        """
        adapters = int(os.environ.get("HUBMERGE_SPACE_MAX_ADAPTERS", cls.max_adapters))
        megabytes = int(os.environ.get("HUBMERGE_SPACE_MAX_DOWNLOAD_MB", cls.max_download_bytes // 1024**2))
        if adapters < 2 or megabytes < 1:
            raise ValueError("HUBMERGE_SPACE_MAX_ADAPTERS must be ≥ 2 and HUBMERGE_SPACE_MAX_DOWNLOAD_MB ≥ 1")
        return cls(max_adapters=adapters, max_download_bytes=megabytes * 1024**2)

    def describe(self) -> str:
        """The limits in words, for the page and for messages."""
        return (
            f"at most {self.max_adapters} adapters per merge, and {self.max_download_bytes / 1024**2:,.0f} MB "
            "of adapter files in all (checked against the Hub's file sizes before anything is downloaded)"
        )


class Form(NamedTuple):
    """The form, checked: Hub sources, their weights, the method and its parameters."""

    sources: list[hubmerge.Source]
    weights: list[float]
    method: str
    rank: int | None
    density: float


def read_form(references: Sequence[str | None], weights: Sequence[float | None], method: str, rank, density) -> Form:
    """The form as hubmerge takes it; empty rows are skipped.

    Raises:
        SpaceError: fewer than two adapters, a bad reference, a local path, a missing or unusable weight,
            an unknown method, a bad rank or density. Nothing has been downloaded yet.
    """
    if method not in MERGE_METHODS:
        raise SpaceError(f"Unknown merge method {method!r}: choose one of {', '.join(MERGE_METHODS)}.")
    rows = [(ref.strip(), weight) for ref, weight in zip(references, weights) if ref and ref.strip()]
    if len(rows) < 2:
        raise SpaceError(f"Give at least two adapters, each as {REFERENCE_HINT}.")
    sources, values = [], []
    for text, weight in rows:
        try:
            source = hubmerge.parse_source(text)
        except hubmerge.HubmergeError as err:
            raise explain(err) from None
        if source.is_local:
            # The Space reads the Hub only: a path would read the server's own disk.
            raise SpaceError(
                f"{text!r} is not a Hub reference: this Space reads adapters from the Hub, as {REFERENCE_HINT}."
            )
        values.append(_weight(text, weight))
        sources.append(source)
    # An empty gr.Number with precision=0 arrives as 0: both mean "the method's default".
    if rank in (None, "", 0):
        rank = None
    elif not _is_number(rank) or rank != int(rank) or not 1 <= rank <= 1_000_000:
        raise SpaceError(f"Rank {rank!r} must be a whole number of at least 1 (or empty: the method's default).")
    if not _is_number(density) or not 0 < density <= 1:
        raise SpaceError(f"Density {density!r} must be more than 0 and at most 1.")
    return Form(sources, values, method, None if rank is None else int(rank), float(density))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _weight(text: str, weight) -> float:
    if weight is None or weight == "":
        raise SpaceError(f"Give a weight for {text} (1 adds it as it is, -1 subtracts it).")
    if not _is_number(weight):
        raise SpaceError(f"The weight of {text} must be a finite number, not {weight!r}.")
    if weight == 0:
        raise SpaceError(
            f"The weight of {text} is 0, which leaves it out of the merge: give it a weight other than 0 "
            "(1 adds it as it is, -1 subtracts it), or clear its row."
        )
    return float(weight)
