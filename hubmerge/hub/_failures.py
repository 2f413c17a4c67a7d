"""Hub and transport failures → one HubError line each; the timeouts and checks every request shares."""

from __future__ import annotations

import logging
from typing import Any

from huggingface_hub import constants
from huggingface_hub import errors as hf_errors

from ..errors import (
    GatedRepoAccessError,
    HubError,
    PushError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

logger = logging.getLogger(__name__)

try:  # huggingface_hub 2.x talks HTTP through its own httpx fork
    from httpx2 import ConnectError as _ConnectError
    from httpx2 import TimeoutException as _TimeoutError
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover - older huggingface_hub
    from httpx import ConnectError as _ConnectError  # type: ignore[assignment]
    from httpx import TimeoutException as _TimeoutError  # type: ignore[assignment]
    from httpx import TransportError as _TransportError  # type: ignore[assignment]


def _offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def _token_state(token) -> str:
    """Which token the request carried, in words (never the token itself)."""
    if token is False:
        return "no token was sent"
    if _has_token(token):
        return "a token was sent"
    return "no token is set"


def _has_token(token) -> bool:
    if isinstance(token, str):
        return True
    from huggingface_hub import get_token

    return get_token() is not None


def _explain(err: BaseException, where: str, *, repo_id: str, revision: str | None, token) -> HubError:
    """Turn a huggingface_hub/transport error into a one-line HubError (raise it ``from err``)."""
    url = f"{constants.ENDPOINT}/{repo_id}"
    fields: dict[str, Any] = {"source": where, "repo_id": repo_id or None, "revision": revision}
    if isinstance(err, hf_errors.HfHubHTTPError):
        fields["server_message"] = err.server_message or None
        fields["request_id"] = err.request_id or None
    if isinstance(err, hf_errors.GatedRepoError):
        return GatedRepoAccessError(
            f"{where}: {repo_id} is gated and this account has no access ({_token_state(token)}); "
            f"access is requested at {url}",
            reason="gated",
            **fields,
        )
    if isinstance(err, hf_errors.RepositoryNotFoundError):
        return RepoNotFoundError(
            f"{where}: repository {repo_id} not found, or it is private and there is no access ({_token_state(token)})",
            reason="repo_not_found",
            **fields,
        )
    if isinstance(err, hf_errors.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"{where}: revision {revision!r} not found in {repo_id} (its branches and tags: {url}/tree/main)",
            reason="revision_not_found",
            **fields,
        )
    if isinstance(err, hf_errors.OfflineModeIsEnabled):
        return HubError(
            f"{where}: HF_HUB_OFFLINE=1 is set and {repo_id} is not in the local cache", reason="offline", **fields
        )
    if isinstance(err, hf_errors.HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "?"
        detail = err.server_message or "no details"
        if status == 401 and _token_state(token) == "a token was sent":  # not "try again later": it will not pass
            return HubError(
                f"{where}: the Hub rejected the token ({detail}) while reading {repo_id}",
                reason="token_rejected",
                **fields,
            )
        request = f", request id {err.request_id}" if err.request_id else ""
        return HubError(
            f"{where}: the Hub answered HTTP {status} for {repo_id} ({detail}{request}); try again later",
            reason="http_error",
            **fields,
        )
    if isinstance(err, hf_errors.LocalEntryNotFoundError) and err.__cause__ is not None:
        return _explain(err.__cause__, where, repo_id=repo_id, revision=revision, token=token)
    return HubError(f"{where}: {_transport_failure(err)}", reason="transport", **fields)


def _transport_failure(err: BaseException) -> str:
    """What went wrong on the wire, in words (transport messages hold no headers, so no token)."""
    name, hub = type(err).__name__, constants.ENDPOINT
    cached = "or set HF_HUB_OFFLINE=1 to use what is cached"
    if isinstance(err, (_TimeoutError, TimeoutError)):
        return (
            f"the Hub at {hub} did not answer in time ({name}); try again later, raise HF_HUB_ETAG_TIMEOUT / "
            f"HF_HUB_DOWNLOAD_TIMEOUT (seconds), {cached}"
        )
    if isinstance(err, (_ConnectError, ConnectionRefusedError)):
        return f"cannot reach the Hub at {hub} ({name}); check the connection and HF_ENDPOINT, {cached}"
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else "no details"
    return f"the connection to the Hub at {hub} failed ({name}: {detail}); try again, {cached}"


_HUB_FAILURES = (
    hf_errors.HfHubHTTPError,
    hf_errors.OfflineModeIsEnabled,
    _TransportError,
    ConnectionError,
    TimeoutError,
)


def _metadata_timeout() -> float:
    # huggingface_hub sets no timeout on API calls (model_info, repo_info): a stalled server would hang
    # hubmerge. Its HF_HUB_ETAG_TIMEOUT, the timeout of a download's metadata request, bounds them too.
    return constants.HF_HUB_ETAG_TIMEOUT


def _hub_failure(err: BaseException) -> BaseException | None:
    """The Hub or transport failure behind ``err``, or ``None`` if it is something else (a bug)."""
    # huggingface_hub wraps a failed LFS upload in RuntimeError("Error while uploading '…' to the Hub."),
    # with the HTTP or transport error as its cause.
    if isinstance(err, RuntimeError) and isinstance(err.__cause__, _HUB_FAILURES):
        return err.__cause__
    return err if isinstance(err, _HUB_FAILURES) else None


def _push_error(err: BaseException, repo_id: str, action: str, token) -> HubError:
    status = getattr(getattr(err, "response", None), "status_code", None)
    fields: dict[str, Any] = {"repo_id": repo_id}
    if isinstance(err, hf_errors.HfHubHTTPError):
        fields["server_message"] = err.server_message or None
        fields["request_id"] = err.request_id or None
    if status == 401:  # not authenticated: no token, or one the Hub does not know; a 403 is a token without rights
        state = _token_state(token)
        if state != "a token was sent":
            return PushError(f"cannot {action} {repo_id}: not logged in ({state})", reason="not_logged_in", **fields)
        return PushError(f"cannot {action} {repo_id}: the Hub rejected the token", reason="token_rejected", **fields)
    if status == 403:
        return PushError(
            f"cannot {action} {repo_id}: this token has no write access there", reason="no_write_access", **fields
        )
    if status == 412:
        return PushError(f"cannot {action} {repo_id}: the branch moved during the push", reason="moved", **fields)
    if isinstance(err, hf_errors.HfHubHTTPError):
        detail = err.server_message or "no details"
        request = f", request id {err.request_id}" if err.request_id else ""
        return PushError(
            f"cannot {action} {repo_id}: the Hub answered HTTP {status} ({detail}{request})",
            reason="http_error",
            **fields,
        )
    return PushError(
        f"cannot {action} {repo_id}: the Hub at {constants.ENDPOINT} did not answer ({type(err).__name__})",
        reason="transport",
        **fields,
    )
