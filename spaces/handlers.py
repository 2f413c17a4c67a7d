"""What the Space's buttons do, as plain functions: no Gradio component in here.

The page (``app.py``) collects the form and the visitor's credential and calls these; the tests call them
directly. Each one validates the form (:func:`read_form`), calls hubmerge's public API, and returns what the
page shows, or raises :class:`messages.SpaceError` with one line for the visitor.

- :func:`analyse`: ``hubmerge.merge(..., report_only=True)``; read-only, so it is also the public API endpoint.
- :func:`merge_and_push`: ``hubmerge.merge``, then ``MergeResult.push_to_hub`` (signed in) or a zip holding
  the same files a push uploads (signed out).
- :func:`push_target`: says, before the push, whether the target repo exists and will get a commit.

Progress goes to a ``progress(fraction, description)`` callable, step by step: download, merge, push.
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import views
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from messages import REFERENCE_HINT, SpaceError, explain, space_words
from PIL import Image

import hubmerge

logger = logging.getLogger("hubmerge.space")

__all__ = [
    "Analysis",
    "DEFAULT_METHOD",
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

# The merge methods offered, name -> one line in the page's words, from hubmerge's method registry (the CLI's
# --help and the model card read the same entries).
MERGE_METHODS: dict[str, str] = {name: space_words(m.description) for name, m in hubmerge.METHODS.items()}
DEFAULT_METHOD = "sum"
DOWNLOAD_TTL_S = 3600  # zips of signed-out merges are removed after an hour

Progress = Callable[[float, str], None]


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
        with _user_errors(None):
            source = hubmerge.parse_source(text)
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


def analyse(
    references: Sequence[str | None],
    weights: Sequence[float | None],
    method: str = DEFAULT_METHOD,
    *,
    token: str | bool | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen
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
    adapters: list[str], weights: list[float] | None = None, method: str = DEFAULT_METHOD, *, limits: Limits = Limits()
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
    limits: Limits = Limits(),  # noqa: B008 - frozen
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
    name = _repo_name(repo_name, username)
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
            path = _zip(result, name)
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
    return Merged(*analysis, _push_status(pushed, private), None)


def push_target(repo_name: str | None, default_name: str | None, username: str | None, token) -> str:
    """Before the push: where Merge & push will go, and whether that repo exists and will get a commit.

    Args:
        repo_name: what the visitor typed (empty: ``default_name``).
        default_name: the name derived from the sources by the last analysis, if any.
        username: the signed-in visitor, or ``None``.
        token: hubmerge's ``token=`` for this request.

    Returns:
        Markdown, one line (empty when there is nothing to say yet).
    """
    if username is None:
        return "Signed out: **Merge & push** gives you the merged adapter as a zip."
    try:
        name = _repo_name(repo_name, username) or default_name
    except SpaceError as err:
        return f"⚠ {html.escape(err.message)}"
    if not name:
        return "The output repo is named after the adapters unless you type a name."
    repo_id = f"{username}/{name}"
    head = _head(repo_id, token)
    if head is None:
        return f"**{html.escape(repo_id)}** does not exist yet: Merge & push creates it, with one commit."
    return (
        f"**{html.escape(repo_id)}** already exists: Merge & push adds one commit to it (nothing in it is "
        "deleted; files of the same name are replaced). Type another name to create a new repo instead."
    )


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


def _repo_name(repo_name: str | None, username: str | None) -> str | None:
    """The repo name typed (``None``: derive it), checked as a repo in the visitor's namespace."""
    name = (repo_name or "").strip()
    if not name:
        return None
    namespace, _, rest = name.rpartition("/")
    if username is not None and namespace and namespace != username:
        raise SpaceError(
            f"This Space pushes to your own account: give a repo name without '{namespace}/' "
            f"(it becomes {username}/{rest})."
        )
    try:
        validate_repo_id(f"{username or 'user'}/{rest}")
    except HFValidationError as err:
        raise SpaceError(f"{rest!r} is not a valid repo name: {err}") from None
    return rest


def _head(repo_id: str, token) -> str | None:
    """The commit ``repo_id``'s main branch points to, or ``None`` where it does not exist (or cannot be seen)."""
    try:
        return HfApi().model_info(repo_id, token=token).sha
    except RepositoryNotFoundError:
        return None
    except (HfHubHTTPError, OSError, ValueError):
        logger.warning("could not look %s up before pushing", repo_id)
        return None


def _push_status(pushed: hubmerge.PushResult, private: bool) -> str:
    """After the push: what happened to the repo, in words, with the links that are true."""
    repo = f"[{html.escape(pushed.repo_id)}]({pushed.repo_url})"
    files = "the adapter, its model card, the report, the recipe and the heatmap"
    if pushed.created_repo:
        what = f"New {'private' if private else 'public'} repository {repo}, with one commit holding {files}"
        return f"### ✓ Pushed to {repo}\n{what} · [view the commit]({pushed.commit_url})"
    if not pushed.changed:
        return (
            f"### ✓ {repo} already holds this merge\n"
            "The repository existed and its files are identical to this merge, so no commit was made; "
            f"it is unchanged at [its head commit]({pushed.commit_url})."
        )
    return (
        f"### ✓ Pushed to {repo}\n"
        f"The repository existed: one commit was added, holding {files} (nothing was deleted) · "
        f"[view the commit]({pushed.commit_url})"
    )


def _downloads_root() -> Path:
    root = Path(tempfile.gettempdir()) / "hubmerge-space-downloads"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def _zip(result: hubmerge.MergeResult, name: str) -> Path:
    """``<name>.zip`` holding a ``<name>/`` folder with what a push uploads, in a fresh per-request directory."""
    root = _downloads_root()
    for old in root.iterdir():  # Gradio serves its own copy of each file; ours are only needed briefly
        if time.time() - old.stat().st_mtime > DOWNLOAD_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    files = result.files(repo_id=name)
    folder = Path(tempfile.mkdtemp(prefix="merge-", dir=root))
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for filename, data in files.items():
            archive.writestr(f"{name}/{filename}", data)
    return path
