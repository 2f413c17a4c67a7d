"""Where a merge goes: the target repo before a push, what the push did after it, or the zip when signed out.

No Gradio here. The push itself is hubmerge's ``MergeResult.push_to_hub`` (one commit); this module says
beforehand whether the target exists and will get a commit (:func:`push_target`), afterwards what happened
(:func:`push_status`), and packs the signed-out download with the same files a push uploads (:func:`pack_zip`).
"""

from __future__ import annotations

import html
import logging
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from messages import SpaceError

import hubmerge

__all__ = ["DOWNLOAD_TTL_S", "pack_zip", "push_status", "push_target", "repo_name"]

logger = logging.getLogger("hubmerge.space")

DOWNLOAD_TTL_S = 3600  # zips of signed-out merges are removed after an hour


def push_target(typed: str | None, default_name: str | None, username: str | None, token) -> str:
    """Before the push: where Merge & push will go, and whether that repo exists and will get a commit.

    Args:
        typed: the repo name the visitor typed (empty: ``default_name``).
        default_name: the name derived from the sources by the last analysis, if any.
        username: the signed-in visitor, or ``None``.
        token: hubmerge's ``token=`` for this request.

    Returns:
        Markdown, one line (empty when there is nothing to say yet).
    """
    if username is None:
        return "Signed out: **Merge & push** gives you the merged adapter as a zip."
    try:
        name = repo_name(typed, username) or default_name
    except SpaceError as err:
        return f"⚠ {html.escape(err.message)}"
    if not name:
        return "The output repo is named after the adapters unless you type a name."
    repo_id = f"{username}/{name}"
    exists = _exists(repo_id, token)
    if exists is None:
        return f"Could not check whether **{html.escape(repo_id)}** exists; Merge & push will say what it did."
    if not exists:
        return f"**{html.escape(repo_id)}** does not exist yet: Merge & push creates it, with one commit."
    return (
        f"**{html.escape(repo_id)}** already exists: Merge & push adds one commit to it (nothing in it is "
        "deleted; files of the same name are replaced). Type another name to create a new repo instead."
    )


def repo_name(typed: str | None, username: str | None) -> str | None:
    """The repo name typed (``None``: derive it), checked as a repo in the visitor's namespace."""
    name = (typed or "").strip()
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


def _exists(repo_id: str, token) -> bool | None:
    """Whether ``repo_id`` exists for this visitor (``None``: the Hub could not be asked)."""
    try:
        HfApi().model_info(repo_id, token=token)
    except RepositoryNotFoundError:
        return False
    except (HfHubHTTPError, OSError, ValueError):
        logger.warning("could not look %s up before pushing", repo_id)
        return None
    return True


def push_status(pushed: hubmerge.PushResult, private: bool) -> str:
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


def pack_zip(result: hubmerge.MergeResult, name: str) -> Path:
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
