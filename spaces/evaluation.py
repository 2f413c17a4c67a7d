"""The Space's Evaluate step: the merge measured on the visitor's text, for bases small enough for a CPU Space.

No Gradio here. :func:`evaluate` checks the request before anything heavy happens (sample count, data given,
the data files' sizes), pulls the adapters, merges them in memory (nothing is pushed), checks the size of the
base model's weights with the Hub before downloading them, and calls ``hubmerge.evaluate``: the base, each
source alone and the merge, scored on each domain's first N records. The page shows hubmerge's own measured
table (the model card's Evaluation section) and the same numbers as a table.

Evaluation data per domain: an uploaded ``.jsonl`` / ``.txt`` file whose name (without its extension) is an
adapter's name as the analysis shows it, or a line ``NAME=user/dataset`` for a Hub dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from form import read_form
from handlers import DEFAULT_LIMITS, DEFAULT_METHOD, Limits, Progress, _download, _merge, _no_progress, _user_errors
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from messages import SpaceError

import hubmerge
from hubmerge.evaluation.render import card_markdown

__all__ = ["EvalLimits", "Evaluation", "evaluate", "read_domains"]

WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class EvalLimits:
    """What one evaluation may ask of a CPU Space.

    Attributes:
        max_base_mb: the base model's weight files, in MB, by the sizes the Hub reports (SmolLM2-135M in
            float32 is ~540 MB).
        max_samples: records scored per domain.
        max_domains: domains per request.
        max_length: tokens per example (longer ones are cut as hubmerge cuts them).
        max_file_mb: an uploaded data file, in MB.
    """

    max_base_mb: float = 600.0
    max_samples: int = 32
    max_domains: int = 4
    max_length: int = 256
    max_file_mb: float = 10.0

    @classmethod
    def from_env(cls) -> EvalLimits:
        """The limits a Space's variables set: ``HUBMERGE_SPACE_EVAL_MAX_BASE_MB``, ``HUBMERGE_SPACE_EVAL_MAX_SAMPLES``.

        Raises:
            ValueError: a value is not a number, or is below 1.
        """
        base = float(os.environ.get("HUBMERGE_SPACE_EVAL_MAX_BASE_MB", cls.max_base_mb))
        samples = int(os.environ.get("HUBMERGE_SPACE_EVAL_MAX_SAMPLES", cls.max_samples))
        if base < 1 or samples < 1:
            raise ValueError("HUBMERGE_SPACE_EVAL_MAX_BASE_MB and HUBMERGE_SPACE_EVAL_MAX_SAMPLES must be ≥ 1")
        return cls(max_base_mb=base, max_samples=samples)

    def describe(self) -> str:
        """The limits in words, for the page and for messages."""
        return (
            f"base models with at most {self.max_base_mb:,.0f} MB of weights, at most {self.max_samples} examples "
            f"per domain of up to {self.max_length} tokens each, {self.max_domains} domains, and data files of "
            f"at most {self.max_file_mb:g} MB"
        )


class Evaluation(NamedTuple):
    """What Evaluate shows."""

    summary: str  # Markdown: hubmerge's measured table, as the model card has it
    table: pd.DataFrame  # the same losses, one row per domain
    warnings: str  # Markdown: merge_loses and the like


def read_domains(files: Sequence[str] | None, datasets: str | None, *, limits: EvalLimits) -> list[tuple[str, str]]:
    """``(NAME, path or dataset id)`` per domain: uploaded files named after an adapter, ``NAME=user/dataset`` lines.

    Raises:
        SpaceError: no data, a name given twice, too many domains, a file too large or of another kind, a bad line.
    """
    domains: list[tuple[str, str]] = []
    for path in files or ():
        file = Path(path)
        if file.suffix.lower() not in (".jsonl", ".txt"):
            raise SpaceError(f"{file.name} is not a .jsonl or .txt file: upload evaluation data as one of those.")
        if file.stat().st_size > limits.max_file_mb * 1024**2:
            raise SpaceError(
                f"{file.name} is {file.stat().st_size / 1024**2:,.1f} MB; this Space takes data files of at most "
                f"{limits.max_file_mb:g} MB: upload the first records only."
            )
        domains.append((file.stem, str(file)))
    for line in (datasets or "").splitlines():
        if not line.strip():
            continue
        name, sep, dataset = (part.strip() for part in line.partition("="))
        if not sep or not name or not _is_dataset_id(dataset):
            raise SpaceError(f"{line.strip()!r} is not NAME=user/dataset (NAME: an adapter's name, as shown above).")
        domains.append((name, dataset))
    if not domains:
        raise SpaceError(
            "Give evaluation data: upload a .jsonl or .txt file named after an adapter (e.g. math.jsonl), "
            "or write NAME=user/dataset for a Hub dataset."
        )
    names = [name for name, _ in domains]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpaceError(f"Evaluation data for {', '.join(twice)} is given more than once: give each adapter one.")
    if len(domains) > limits.max_domains:
        raise SpaceError(
            f"{len(domains)} domains were given; this Space evaluates at most {limits.max_domains} at a time."
        )
    return domains


def _is_dataset_id(text: str) -> bool:
    # A Hub id only: anything that names a file on the server's own disk is refused, as for adapters.
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return text.count("/") == 1 and not Path(text).exists()


def _samples(samples, limits: EvalLimits) -> int:
    if isinstance(samples, float) and samples.is_integer():
        samples = int(samples)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise SpaceError(f"The number of examples per domain must be a whole number of at least 1, not {samples!r}.")
    if samples > limits.max_samples:
        raise SpaceError(
            f"{samples} examples per domain were asked for; this Space scores at most {limits.max_samples} "
            f"(it runs on CPU). Ask for {limits.max_samples} or fewer, or evaluate on your own machine with "
            "hubmerge.evaluate."
        )
    return samples


def check_base_size(repo_id: str, revision: str | None, token, limits: EvalLimits) -> float:
    """The base model's weight files in MB, by the Hub's file sizes; refused above the limit, before any download.

    Raises:
        SpaceError: the Hub does not know the model, lists no weights, or they are over the limit.
    """
    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token, files_metadata=True)
    except RepositoryNotFoundError:
        raise SpaceError(
            f"The adapters' base model {repo_id} is not on the Hub (or not visible to you): this Space evaluates "
            "on base models it can download."
        ) from None
    except HfHubHTTPError as err:
        raise SpaceError(f"The Hub did not answer about the base model {repo_id} ({type(err).__name__}).") from None
    sizes = [s.size for s in info.siblings or () if s.rfilename.endswith(WEIGHT_SUFFIXES)]
    if not sizes or any(size is None for size in sizes):
        raise SpaceError(f"The Hub lists no weight files with sizes for the base model {repo_id}.")
    megabytes = sum(sizes) / 1024**2
    if megabytes > limits.max_base_mb:
        raise SpaceError(
            f"The base model {repo_id} has {megabytes:,.0f} MB of weights; this Space evaluates only on bases of "
            f"at most {limits.max_base_mb:,.0f} MB (it runs on CPU). Evaluate on your own machine with "
            "hubmerge.evaluate.",
            title="Over the limit",
        )
    return megabytes


def evaluate(
    references: Sequence[str | None],
    weights: Sequence[float | None],
    method: str = DEFAULT_METHOD,
    *,
    files: Sequence[str] | None = None,
    datasets: str | None = None,
    samples: int | float = 8,
    token: str | bool | None = None,
    limits: Limits = DEFAULT_LIMITS,
    eval_limits: EvalLimits | None = None,
    rank: float | None = None,
    density: float = 0.5,
    progress: Progress | None = None,
) -> Evaluation:
    """Merge the adapters in memory and measure the merge on the visitor's data (nothing is pushed).

    Args:
        files: uploaded data files, each named after an adapter (``math.jsonl`` for the adapter ``math``).
        datasets: lines ``NAME=user/dataset`` (Hub datasets, read with the ``datasets`` package).
        samples: the first N records of each domain (its ``test`` split where records have one).
        eval_limits: what one evaluation may ask for.
        (the others as :func:`handlers.analyse`)

    Returns:
        The :class:`Evaluation` the page shows.

    Raises:
        SpaceError: a bad form or data, a limit passed (base too large, too many examples), or what
            hubmerge refused, in the Space's words.
    """
    caps = eval_limits or EvalLimits()
    form = read_form(references, weights, method, rank, density)
    count = _samples(samples, caps)
    domains = read_domains(files, datasets, limits=caps)
    step = progress if progress is not None else _no_progress
    _download(form, token, limits, step)
    step(0.3, f"Merging {len(form.sources)} adapters with {form.method}")
    with _user_errors(limits):
        result = _merge(form, token, limits, report_only=False)
    base = result.report.base_model
    if not base.name:
        raise SpaceError("The adapters name no base model, so there is nothing to evaluate them on.")
    megabytes = check_base_size(base.name, base.revision, token, caps)
    step(0.4, f"Scoring {len(domains)} domains on {base.name} ({megabytes:,.0f} MB)")
    with _user_errors(limits):
        measured = hubmerge.evaluate(
            result,
            domains,
            sources=form.sources,
            samples=count,
            max_length=caps.max_length,
            device="cpu",
            token=token,
        )
    section = measured.report.evaluation
    warnings = [w for w in measured.report.warnings if w.code == "merge_loses"]
    text = "\n".join(f"- ⚠ {w.message}" for w in warnings)
    return Evaluation(card_markdown(section), _table(section), text)


def _table(section: dict) -> pd.DataFrame:
    rows = []
    for name, domain in section["domains"].items():
        loss = domain["loss"]
        rows.append(
            {
                "domain": name,
                "examples": domain["examples"],
                "tokens": domain["tokens"],
                "base": loss["base"],
                **{f"{source} alone": value for source, value in loss["sources"].items()},
                "merged": loss["merged"],
                "retention": domain["retention"].get(domain["source"]),
            }
        )
    return pd.DataFrame(rows)
