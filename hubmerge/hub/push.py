"""Pushing: whoami, one commit of a merge's files, and the Space deploy's uploads."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub import errors as hf_errors

from ..errors import (
    HubError,
    PushError,
)
from ._failures import (
    _HUB_FAILURES,
    _explain,
    _hub_failure,
    _metadata_timeout,
    _push_error,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    """What a push did.

    Attributes:
        repo_id: the repository pushed to.
        repo_url: its URL.
        commit_url: the commit made, or, when nothing changed, the head commit that already held these files.
        pr_url: the pull request opened (``create_pr``), else ``None``.
        created_repo: the repository did not exist before this push.
        changed: a commit was made (``False``: the repo already held exactly these files).
    """

    repo_id: str
    repo_url: str
    commit_url: str
    pr_url: str | None
    created_repo: bool
    changed: bool


def whoami(*, token: str | bool | None = None) -> str:
    """The user name the token belongs to.

    Raises:
        HubError: not logged in, or the token is rejected.
    """
    try:
        return HfApi().whoami(token=token)["name"]
    except hf_errors.LocalTokenNotFoundError as err:
        raise HubError(
            "not logged in: no Hub token is set, so the user name is unknown", reason="not_logged_in"
        ) from err
    except _HUB_FAILURES as err:
        if isinstance(err, hf_errors.HfHubHTTPError) and err.response is not None and err.response.status_code == 401:
            raise HubError("the Hub rejected the token", reason="token_rejected") from err
        raise _explain(err, "whoami", repo_id="", revision=None, token=token) from err


def check_logged_in(*, token: str | bool | None = None) -> None:
    """Refuse a push that has no token to push with, before any work (no request: the token is not checked here).

    Raises:
        HubError: no token given and none set (``HF_TOKEN``, ``hf auth login``), or ``token=False``.
    """
    if token is False or (not isinstance(token, str) and get_token() is None):
        raise HubError("not logged in: no Hub token is set, and a push needs one", reason="not_logged_in")


def push_files(
    repo_id: str,
    files: dict[str, bytes],
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    create_pr: bool = False,
    commit_message: str,
    commit_description: str | None = None,
) -> PushResult:
    """Create ``repo_id`` if needed and upload ``files`` in one commit.

    Nothing in the repository is deleted; an existing repo gets a new commit
    (or a pull request with ``create_pr``) on top of the head it had when the
    push started. The Hub applies a commit whole or not at all; if the repo was
    created here and the commit then fails, the empty repo is deleted again.

    Args:
        private: ``True`` creates the repo private and refuses an existing
            public one (its visibility is not changed silently); ``None`` keeps
            the Hub's default for the namespace.

    Returns:
        A :class:`PushResult`; ``changed`` is false when the repo already held
        exactly these files (huggingface_hub then makes no commit).

    Raises:
        PushError: the repo or the commit was refused, or the branch moved during the push.
    """
    api = HfApi()
    try:
        existing = _existing_repo(api, repo_id, token)
        if existing is not None and not existing.private and private:
            raise PushError(
                f"{repo_id} exists and is public; a private push does not change an existing repo's visibility",
                reason="public_repo",
                repo_id=repo_id,
            )
        if existing is None:
            api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    except _HUB_FAILURES as err:
        raise _push_error(err, repo_id, "create", token) from err
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
    try:
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message,
            commit_description=commit_description,
            create_pr=create_pr,
            # The commit goes on top of the head seen above: if someone pushed in between, the Hub refuses it
            # (HTTP 412) rather than mixing our files into a state nobody looked at.
            parent_commit=existing.sha if existing is not None else None,
            token=token,
        )
    except BaseException as err:  # Ctrl-C included: a repo created here is removed again
        if existing is None:  # created by this call: leave nothing half-made behind
            try:
                api.delete_repo(repo_id, token=token, missing_ok=True)
            except _HUB_FAILURES:
                logger.warning("could not delete the empty repo %s after the failed push", repo_id)
        failure = _hub_failure(err)
        if failure is None:
            raise
        raise _push_error(failure, repo_id, "commit to", token) from err
    # huggingface_hub skips a commit whose files are all unchanged and answers with the head commit instead.
    changed = existing is None or create_pr or info.oid != existing.sha
    return PushResult(
        repo_id=info.repo_url.repo_id,
        repo_url=str(info.repo_url),
        commit_url=info.commit_url,
        pr_url=info.pr_url,
        created_repo=existing is None,
        changed=changed,
    )


def _existing_repo(api: HfApi, repo_id: str, token):
    """The ``ModelInfo`` of an existing repo we can see (visibility, head of main), ``None`` if it is not there."""
    try:
        return api.repo_info(repo_id, token=token, timeout=_metadata_timeout())
    except hf_errors.RepositoryNotFoundError:
        return None


def upload_repo_files(
    repo_id: str,
    files: dict[str, bytes],
    *,
    repo_type: str,
    token: str | bool | None = None,
    message: str,
    private: bool | None = None,
):
    """Create a model or Space repo if needed and commit ``files`` to it at once (unchanged files: no commit).

    For the Space deploy (:mod:`hubmerge.space_deploy`) and its example adapters; a merge pushes with
    :func:`push_files`, which also guards visibility and the parent commit.

    Returns:
        huggingface_hub's ``CommitInfo``.

    Raises:
        PushError: the repo or the commit was refused.
    """
    api = HfApi()
    sdk = "gradio" if repo_type == "space" else None
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, token=token, space_sdk=sdk)
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()]
        return api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type, token=token)
    except _HUB_FAILURES as err:
        raise _push_error(err, repo_id, f"upload to the {repo_type} repo", token) from err
