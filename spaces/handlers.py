"""What the Space's buttons do, as plain functions: no Gradio component in here.

The page (``app.py``) collects the form and the visitor's credential and calls these; the tests call them
directly. Each one checks the form (``form.read_form``), calls hubmerge's public API, and returns what the
page shows (``views``), or raises :class:`messages.SpaceError` with one line for the visitor.

- :func:`analyse`: ``hubmerge.merge(..., report_only=True)``; :func:`analyse_api` is the same, anonymous and
  as JSON, for the public API endpoint.
- :func:`merge_and_push`: ``hubmerge.merge``, then ``MergeResult.push_to_hub`` (signed in) or a zip holding
  the same files a push uploads (signed out); see ``publish``.
- ``publish.push_target``: says, before the push, whether the target repo exists and will get a commit.

Progress goes to a ``progress(fraction, description)`` callable, step by step: download, merge, push.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import pandas as pd
import publish
import views
from form import DEFAULT_METHOD, MERGE_METHODS, Form, Limits, read_form
from messages import SpaceError, explain
from PIL import Image
from publish import DOWNLOAD_TTL_S, push_target

import hubmerge

logger = logging.getLogger("hubmerge.space")

__all__ = [
    "Analysis",
    "DEFAULT_METHOD",
    "DOWNLOAD_TTL_S",
    "Limits",
    "MERGE_METHODS",
    "Merged",
    "Progress",
    "analyse",
    "analyse_api",
    "default_repo_name",
    "merge_and_push",
    "push_target",
    "read_form",
]

Progress = Callable[[float, str], None]
DEFAULT_LIMITS = Limits()


class Analysis(NamedTuple):
    """What Analyse shows (in the order of the page's outputs)."""

    verdict: str  # Markdown: compatible (and how exactly), or every problem in words
    warnings: str  # Markdown
    heatmap: Image.Image | None  # the RMS-cosine heatmap
    matrix: pd.DataFrame | None  # the same matrix as a table
    per_module: pd.DataFrame | None  # report["similarity"]["per_module"]
    default_name: str | None  # the repo name a push would use when none is typed


class Merged(NamedTuple):
    """What Merge & push shows: the analysis of what was merged, where it went, or the zip to download."""

    verdict: str
    warnings: str
    heatmap: Image.Image | None
    matrix: pd.DataFrame | None
    per_module: pd.DataFrame | None
    default_name: str | None
    status: str  # Markdown: what happened to the repo, or how to use the download
    download: str | None  # path of the zip (signed out), else None


def analyse(
    references: Sequence[str | None],
    weights: Sequence[float | None],
    method: str = DEFAULT_METHOD,
    *,
    token: str | bool | None = None,
    limits: Limits = DEFAULT_LIMITS,
    rank: float | None = None,
    density: float = 0.5,
    progress: Progress | None = None,
) -> Analysis:
    """Pull the adapters and report whether they can be merged, how exactly, and how much they interfere.

    Incompatible adapters are an answer, not an error: the verdict lists every problem.

    Args:
        references: one Hub reference per row (empty rows are skipped).
        weights: one weight per row.
        method: a name from :data:`MERGE_METHODS`.
        token: hubmerge's ``token=`` for this request (``False``: anonymous).
        limits: what one request may ask for.
        rank, density: the method's parameters.
        progress: called with (fraction, description) at each step.

    Returns:
        The :class:`Analysis` the page shows.

    Raises:
        SpaceError: a bad form, a Hub refusal, a limit passed, weights too large to compute with.
    """
    form = read_form(references, weights, method, rank, density)
    step = progress if progress is not None else _no_progress
    _download(form, token, limits, step)
    step(0.5, f"Analysing {len(form.sources)} adapters")
    with _user_errors(limits):
        try:
            report = _merge(form, token, limits, report_only=True).to_dict()
        except hubmerge.IncompatibleAdaptersError as err:
            return Analysis(views.incompatible_verdict(_problems(err)), "", None, None, None, None)
    _check_measurable(report, form)
    step(0.9, "Drawing the heatmap")
    name = default_repo_name(report)
    return _analysis(report, repo_id=name, merged=False, name=name)


def analyse_api(
    adapters: list[str],
    weights: list[float] | None = None,
    method: str = DEFAULT_METHOD,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> dict:
    """Analyse as a public API endpoint: public adapters only (anonymous), the report as JSON.

    Args:
        adapters: Hub references, ``user/repo[/subfolder][@revision]``.
        weights: one per adapter, default 1 each.
        method: a name from :data:`MERGE_METHODS`.

    Returns:
        ``{"compatible": bool, "problems": [...], "verdict": Markdown, "report": hubmerge's report or None}``.

    Raises:
        SpaceError: as :func:`analyse`.
    """
    form = read_form(adapters, weights if weights is not None else [1.0] * len(adapters), method, None, 0.5)
    with _user_errors(limits):
        try:
            report = _merge(form, False, limits, report_only=True).to_dict()
        except hubmerge.IncompatibleAdaptersError as err:
            problems = _problems(err)
            return {"compatible": False, "problems": problems, "verdict": views.incompatible_verdict(problems)}
    _check_measurable(report, form)
    text = views.verdict(report, repo_id=default_repo_name(report), merged=False)
    return {"compatible": True, "problems": [], "verdict": text, "report": report}


def merge_and_push(
    references: Sequence[str | None],
    weights: Sequence[float | None],
    method: str = DEFAULT_METHOD,
    *,
    repo_name: str | None = None,
    private: bool = False,
    username: str | None = None,
    token: str | bool | None = None,
    limits: Limits = DEFAULT_LIMITS,
    rank: float | None = None,
    density: float = 0.5,
    progress: Progress | None = None,
) -> Merged:
    """Merge the adapters; signed in, push the merge to the visitor's namespace, else offer it as a zip.

    The push is hubmerge's ``MergeResult.push_to_hub``: one commit with the adapter, the model card (the same
    as the CLI's), the report, the recipe and the heatmap. The zip holds the same files.

    Args:
        username: the signed-in visitor (``None``: signed out, the merge becomes a zip).
        repo_name: the output repo's name in the visitor's namespace (empty: derived from the sources).
        private: create the repo private.
        (the others as :func:`analyse`)

    Returns:
        The :class:`Merged` the page shows.

    Raises:
        SpaceError: anything that stops the merge or the push, in words.
    """
    form = read_form(references, weights, method, rank, density)
    step = progress if progress is not None else _no_progress
    name = publish.repo_name(repo_name, username)
    _download(form, token, limits, step)
    step(0.4, f"Merging {len(form.sources)} adapters with {form.method}")
    with _user_errors(limits):
        result = _merge(form, token, limits, report_only=False)
    report = result.report.to_dict()
    _check_measurable(report, form)
    name = name or result.default_repo_name()
    if username is None:
        step(0.8, "Writing the model card, the heatmap and the zip")
        with _user_errors(limits):
            path = publish.pack_zip(result, name)
        status = (
            "### ↓ The merged adapter is ready to download\n"
            "You are not signed in, so nothing was pushed: **sign in with Hugging Face** to publish it to your "
            f"account. The zip holds what a push uploads (adapter, model card, heatmap, report, recipe): unzip it "
            f'and load the folder with `PeftModel.from_pretrained(base_model, "{html.escape(name)}")`.'
        )
        analysis = _analysis(report, repo_id=name, merged=True, name=result.default_repo_name())
        return Merged(*analysis, status, str(path))
    repo_id = f"{username}/{name}"
    step(0.8, f"Pushing to {repo_id}")
    with _user_errors(limits):
        pushed = result.push_to_hub(repo_id, token=token, private=bool(private))
    analysis = _analysis(report, repo_id=repo_id, merged=True, name=result.default_repo_name())
    return Merged(*analysis, publish.push_status(pushed, private), None)


# ---------------------------------------------------------------- helpers


def default_repo_name(report: dict) -> str:
    """The repo name ``MergeResult.default_repo_name`` gives, from a report alone (an analysis has no result)."""
    stem = "-".join(re.sub(r"[^A-Za-z0-9_]+", "-", s["name"]).strip("-") for s in report["sources"])
    stem = re.sub(r"-{2,}", "-", stem)[:80].strip("-")  # the Hub refuses "--" and ".."
    return (stem or "adapters") + "-merged"


def _problems(err: hubmerge.IncompatibleAdaptersError) -> list[str]:
    return [problem.message for problem in err.problems]


def _no_progress(fraction: float, description: str) -> None:
    pass


def _check_measurable(report: dict, form: Form) -> None:
    """Refuse weights so large that the scaled deltas overflow: nothing can be measured or merged from them."""
    if report["similarity"]["interference_ratio"] is None:
        largest = max(form.weights, key=abs)
        raise SpaceError(
            f"The weights are too large to compute with (largest: {largest:g}): the weighted deltas overflow "
            "32-bit floats, so their similarity cannot be measured and the merge would hold infinities. "
            "Use smaller weights."
        )


@contextmanager
def _user_errors(limits: Limits | None) -> Iterator[None]:
    """hubmerge's deliberate errors in the Space's words; anything else is a bug, logged with its traceback.

    Neither holds a token: hubmerge's messages never do, and a traceback shows no local variables.
    """
    try:
        yield
    except SpaceError:
        raise
    except hubmerge.HubmergeError as err:
        raise explain(err, limits_text=limits.describe() if limits else None) from None
    except Exception as err:
        logger.exception("unexpected error in the Space")
        raise SpaceError(
            f"Something went wrong on our side ({type(err).__name__}). Please try again; if it keeps happening, "
            "report it with the adapters you used.",
            title="Error",
        ) from None


def _download(form: Form, token, limits: Limits, step: Progress) -> None:
    """Resolve and download every adapter into the HF cache: the merge that follows reads them from there."""
    step(0.05, f"Downloading {len(form.sources)} adapters from the Hub")
    with _user_errors(limits):
        hubmerge.load_adapters(
            form.sources, token=token, max_adapters=limits.max_adapters, max_download_bytes=limits.max_download_bytes
        )


def _merge(form: Form, token, limits: Limits, *, report_only: bool):
    return hubmerge.merge(
        form.sources,
        weights=form.weights,
        method=form.method,
        rank=form.rank,
        density=form.density,
        token=token,
        report_only=report_only,
        max_adapters=limits.max_adapters,
        max_download_bytes=limits.max_download_bytes,
    )


def _analysis(report: dict, *, repo_id: str, merged: bool, name: str) -> Analysis:
    similarity = report["similarity"]
    return Analysis(
        views.verdict(report, repo_id=repo_id, merged=merged),
        views.warnings_text(report),
        views.heatmap_image(report),
        views.matrix_table(similarity),
        views.per_module_table(similarity),
        name,
    )
