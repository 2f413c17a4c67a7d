"""The only module that talks to the network: resolve, download, whoami, push.

Everything goes through huggingface_hub, so the HF cache, tokens (``token=``,
``HF_TOKEN``, ``hf auth login``), ``HF_ENDPOINT``, progress bars and
``HF_HUB_OFFLINE=1`` behave as in the rest of the ecosystem. Each Hub failure
becomes one :class:`~hubmerge.errors.HubError` line that names the repo and
says what to do next; tokens never appear in them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub import errors as hf_errors

from .adapter import PICKLE_NAME, SAFETENSORS_NAME
from .config import CONFIG_NAME
from .errors import (
    AdapterNotFoundError,
    GatedRepoAccessError,
    HubError,
    LimitExceededError,
    PushError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnsafeAdapterError,
)
from .provenance import HubOrigin
from .sources import Source

__all__ = [
    "BaseModelInfo",
    "PulledAdapter",
    "PushResult",
    "ResolvedAdapter",
    "check_download_size",
    "fetch_adapter",
    "fetch_base_model",
    "push_files",
    "upload_repo_files",
    "resolve_adapter",
    "resolve_base_model",
    "whoami",
]

logger = logging.getLogger(__name__)

try:  # huggingface_hub 2.x talks HTTP through its own httpx fork
    from httpx2 import ConnectError as _ConnectError
    from httpx2 import TimeoutException as _TimeoutError
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover - older huggingface_hub
    from httpx import ConnectError as _ConnectError  # type: ignore[assignment]
    from httpx import TimeoutException as _TimeoutError  # type: ignore[assignment]
    from httpx import TransportError as _TransportError  # type: ignore[assignment]


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


@dataclass(frozen=True)
class PulledAdapter:
    """A Hub adapter in the local HF cache, pinned to the commit it came from."""

    path: Path
    origin: HubOrigin


def _hub_repo(source: Source) -> str:
    if source.repo_id is None:
        raise ValueError(f"{source.text!r} is a local source, not a Hub one")  # a caller's bug
    return source.repo_id


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


@dataclass(frozen=True)
class ResolvedAdapter:
    """A Hub adapter before its download: where it is, at which commit, and how large its files are."""

    source: Source
    commit_sha: str | None  # None offline: the cache decides
    files: list[str]  # the config first, then the weights file (or, offline, the weights files to try)
    size: int = 0  # bytes to download, from the Hub's metadata (0 offline)
    license: str | None = None
    datasets: list[str] = field(default_factory=list)


def resolve_adapter(source: Source, *, token: str | bool | None = None, allow_pickle: bool = False) -> ResolvedAdapter:
    """Ask the Hub which commit ``source`` names and which adapter files it holds there; download nothing.

    Online, ``model_info`` resolves the revision to a commit sha and tells whether an
    adapter exists at the subfolder, and how large its files are. With
    ``HF_HUB_OFFLINE=1`` nothing is asked: :func:`fetch_adapter` answers from the cache.

    Raises:
        RepoNotFoundError, GatedRepoAccessError, RevisionNotFoundError, HubError:
            the repo, access or revision is the problem.
        AdapterNotFoundError: no adapter at that path of the repo.
        UnsafeAdapterError: only pickle weights and ``allow_pickle`` is false.
    """
    repo_id, revision, where = _hub_repo(source), source.revision, source.text
    prefix = f"{source.subfolder}/" if source.subfolder else ""
    weights = [f"{prefix}{SAFETENSORS_NAME}"] + ([f"{prefix}{PICKLE_NAME}"] if allow_pickle else [])
    config_name = f"{prefix}{CONFIG_NAME}"
    if _offline():
        return ResolvedAdapter(source, None, [config_name, *weights])
    try:
        info = HfApi().model_info(
            repo_id, revision=revision, token=token, files_metadata=True, timeout=_metadata_timeout()
        )
    except _HUB_FAILURES as err:
        raise _explain(err, where, repo_id=repo_id, revision=revision, token=token) from err
    files = {sibling.rfilename for sibling in info.siblings or []}
    _check_adapter_files(files, source, info.sha, allow_pickle)
    weights = [w for w in weights if w in files][:1]
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    license_, datasets = None, []
    if info.card_data is not None:
        license_ = info.card_data.get("license")
        found = info.card_data.get("datasets") or []
        datasets = [found] if isinstance(found, str) else list(found)
    wanted = [config_name, *weights]
    return ResolvedAdapter(source, info.sha, wanted, sum(sizes.get(n, 0) for n in wanted), license_, datasets)


def check_download_size(resolved: list[ResolvedAdapter], max_bytes: int | None) -> None:
    """Refuse, before any download, adapters whose files together exceed ``max_bytes``.

    Raises:
        LimitExceededError: one adapter alone, or all of them together, are too large.
    """
    if max_bytes is None:
        return
    for item in resolved:
        if item.size > max_bytes:
            raise LimitExceededError(
                f"{item.source.text}: the adapter files are {item.size:,} bytes, more than the {max_bytes:,} bytes "
                "allowed",
                limit="max_download_bytes",
            )
    total = sum(item.size for item in resolved)
    if total > max_bytes:
        parts = ", ".join(f"{item.source.text} {item.size:,}" for item in resolved)
        raise LimitExceededError(
            f"the adapter files of the {len(resolved)} Hub sources are {total:,} bytes together ({parts}), more "
            f"than the {max_bytes:,} bytes allowed",
            limit="max_download_bytes",
        )


def fetch_adapter(resolved: ResolvedAdapter, *, token: str | bool | None = None) -> PulledAdapter:
    """Download the files :func:`resolve_adapter` found (or, offline, find them in the HF cache).

    Returns:
        The :class:`PulledAdapter`: local directory, commit sha, and the
        licence and datasets of the repo's card when the Hub could be asked.

    Raises:
        HubError: the download failed, or the revision moved since it was resolved.
        AdapterNotFoundError: the cached snapshot holds no adapter config.
    """
    source = resolved.source
    repo_id, revision, where = _hub_repo(source), source.revision, source.text
    prefix = f"{source.subfolder}/" if source.subfolder else ""
    config_name, *weights = resolved.files
    snapshots = set()
    for filename in (config_name, *weights):
        try:
            path = hf_hub_download(repo_id, filename, revision=revision, token=token, etag_timeout=_metadata_timeout())
        except hf_errors.LocalEntryNotFoundError as err:
            if _offline() and filename != config_name:
                continue  # offline, the cache may hold the safetensors file or, with allow_pickle, the pickle
            if _offline():
                at = f"{repo_id}{'@' + revision if revision else ''}"
                raise HubError(
                    f"{where}: HF_HUB_OFFLINE=1 is set and {at} is not in the local cache",
                    reason="offline",
                    source=where,
                    repo_id=repo_id,
                    revision=revision,
                ) from err
            raise _explain(err, where, repo_id=repo_id, revision=revision, token=token) from err
        except (*_HUB_FAILURES, hf_errors.EntryNotFoundError) as err:
            if isinstance(err, hf_errors.EntryNotFoundError) and filename != config_name:
                continue
            raise _explain(err, where, repo_id=repo_id, revision=revision, token=token) from err
        # hf_hub_download answers <cache>/snapshots/<commit sha>/<filename>
        snapshots.add(Path(path).parents[len(Path(filename).parts) - 1])
    if len(snapshots) != 1 or (resolved.commit_sha is not None and next(iter(snapshots)).name != resolved.commit_sha):
        raise HubError(
            f"{where}: {repo_id}@{revision or 'main'} moved while downloading; try again",
            reason="moved",
            source=where,
            repo_id=repo_id,
            revision=revision,
        )
    snapshot = snapshots.pop()
    commit_sha = snapshot.name
    directory = snapshot / prefix if prefix else snapshot
    if not (directory / CONFIG_NAME).is_file():
        raise AdapterNotFoundError(
            f"{where}: the cached snapshot {commit_sha[:7]} has no {prefix}{CONFIG_NAME}; check the subfolder",
            source=where,
            repo_id=repo_id,
            revision=revision,
        )
    origin = HubOrigin(
        repo_id=repo_id,
        subfolder=source.subfolder,
        revision=revision,
        commit_sha=commit_sha,
        license=resolved.license,
        datasets=tuple(resolved.datasets),
    )
    return PulledAdapter(path=directory, origin=origin)


def _metadata_timeout() -> float:
    # huggingface_hub sets no timeout on API calls (model_info, repo_info): a stalled server would hang
    # hubmerge. Its HF_HUB_ETAG_TIMEOUT, the timeout of a download's metadata request, bounds them too.
    return constants.HF_HUB_ETAG_TIMEOUT


def _check_adapter_files(files: set[str], source: Source, sha: str | None, allow_pickle: bool) -> None:
    prefix = f"{source.subfolder}/" if source.subfolder else ""
    at = f"{source.repo_id}@{(sha or 'head')[:7]}"
    if f"{prefix}{CONFIG_NAME}" not in files:
        found = sorted(name[: -len(CONFIG_NAME)].rstrip("/") or "." for name in files if name.endswith(CONFIG_NAME))
        place = f"subfolder {source.subfolder!r}" if source.subfolder else "the repo root"
        if found:
            first = found[0]
            hint = f"adapters are in: {', '.join(found)}" + (
                f" (e.g. {source.repo_id}/{first})" if first != "." else f" (use {source.repo_id})"
            )
        else:
            hint = "this repository holds no PEFT adapter (no adapter_config.json)"
        raise AdapterNotFoundError(
            f"{source.text}: no {CONFIG_NAME} in {place} of {at}; {hint}", source=source.text, repo_id=source.repo_id
        )
    if f"{prefix}{SAFETENSORS_NAME}" in files:
        return
    if f"{prefix}{PICKLE_NAME}" in files:
        if not allow_pickle:
            raise UnsafeAdapterError(
                f"{source.text}: only {PICKLE_NAME} (a pickle) is present in {at}; unpickling a file can run "
                "arbitrary code, so pickles are read only where they are allowed (allow_pickle)",
                reason="pickle_only",
                source=source.text,
                repo_id=source.repo_id,
            )
        return
    raise AdapterNotFoundError(
        f"{source.text}: {at} has {CONFIG_NAME} but no {SAFETENSORS_NAME}", source=source.text, repo_id=source.repo_id
    )


@dataclass(frozen=True)
class BaseModelInfo:
    """A base model as the Hub knows it: its canonical id and, through quantized mirrors, its root.

    Attributes:
        repo_id: the canonical id of the name that was asked (renamed repos redirect).
        root: the model whose weights it holds: ``repo_id`` itself, or, for a quantized mirror
            (``unsloth/…-bnb-4bit``, ``…-GPTQ``, ``…-AWQ``), the model its card names as
            ``base_model`` with ``base_model_relation: quantized``, followed to the end.
        quantized_from: the mirrors followed on the way, starting with ``repo_id``.
        quantization: the ``quant_method`` of the first mirror's ``quantization_config``, where it has one.
        model_type: the ``model_type`` of its ``config.json``, where the Hub shows one.
    """

    repo_id: str
    root: str
    quantized_from: tuple[str, ...] = ()
    quantization: str | None = None
    model_type: str | None = None


# A chain of quantized mirrors longer than this is not a chain of mirrors.
_MAX_MIRRORS = 4


def resolve_base_model(name: str, *, token: str | bool | None = None) -> BaseModelInfo | None:
    """Resolve a base model name on the Hub, following quantized mirrors to their root.

    Only ``base_model_relation: quantized`` is followed (or no relation with a
    ``quantization_config`` in the mirror's config, which is how the Hub infers
    it): a fine-tune or a merge of a model has other weights, so it stays its own root.

    Returns:
        The :class:`BaseModelInfo`, or ``None`` when the Hub cannot be asked (offline,
        unreachable, not on the Hub).
    """
    if _offline():
        return None
    chain: list[str] = []
    quantization = model_type = None
    current = name
    while True:
        try:
            info = HfApi().model_info(current, token=token, timeout=_metadata_timeout())
        except (*_HUB_FAILURES, hf_errors.HFValidationError, ValueError) as err:
            logger.info("could not resolve base model %r on the Hub: %s", current, type(err).__name__)
            if not chain:
                return None
            # The mirror names a base the Hub does not have: stop at the mirror.
            return BaseModelInfo(chain[0], chain[-1], tuple(chain[:-1]), quantization, model_type)
        chain.append(info.id)
        config = info.config if isinstance(info.config, dict) else {}
        model_type = model_type or (config.get("model_type") if isinstance(config.get("model_type"), str) else None)
        parent, method = _quantized_parent(info)
        if parent is None or parent in chain or len(chain) > _MAX_MIRRORS:
            return BaseModelInfo(chain[0], info.id, tuple(chain[:-1]), quantization, model_type)
        quantization = quantization or method
        current = parent


def _quantized_parent(info) -> tuple[str | None, str | None]:
    """The model a quantized mirror was made from, and its quantization method, from card and config."""
    card = info.card_data.to_dict() if info.card_data is not None else {}
    parents = card.get("base_model")
    parents = [parents] if isinstance(parents, str) else list(parents or [])
    config = info.config if isinstance(info.config, dict) else {}
    quantization = config.get("quantization_config") if isinstance(config.get("quantization_config"), dict) else None
    relation = card.get("base_model_relation")
    if len(parents) != 1 or not isinstance(parents[0], str):
        return None, None
    if relation == "quantized" or (relation is None and quantization is not None):
        return parents[0], (quantization or {}).get("quant_method")
    return None, None


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


def _hub_failure(err: BaseException) -> BaseException | None:
    """The Hub or transport failure behind ``err``, or ``None`` if it is something else (a bug)."""
    # huggingface_hub wraps a failed LFS upload in RuntimeError("Error while uploading '…' to the Hub."),
    # with the HTTP or transport error as its cause.
    if isinstance(err, RuntimeError) and isinstance(err.__cause__, _HUB_FAILURES):
        return err.__cause__
    return err if isinstance(err, _HUB_FAILURES) else None


def _existing_repo(api: HfApi, repo_id: str, token):
    """The ``ModelInfo`` of an existing repo we can see (visibility, head of main), ``None`` if it is not there."""
    try:
        return api.repo_info(repo_id, token=token, timeout=_metadata_timeout())
    except hf_errors.RepositoryNotFoundError:
        return None


def _push_error(err: BaseException, repo_id: str, action: str, token) -> HubError:
    status = getattr(getattr(err, "response", None), "status_code", None)
    fields: dict[str, Any] = {"repo_id": repo_id}
    if isinstance(err, hf_errors.HfHubHTTPError):
        fields["server_message"] = err.server_message or None
        fields["request_id"] = err.request_id or None
    if status in (401, 403):
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


# What a transformers model needs to load: config, weights and tokenizer files (no pickles, no ONNX).
_BASE_MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def fetch_base_model(repo_id: str, *, revision: str | None = None, token: str | bool | None = None) -> tuple[Path, str]:
    """Download a base model's config, safetensors weights and tokenizer (or find them in the HF cache).

    Args:
        repo_id: the model repository.
        revision: branch, tag or commit; default the main branch.
        token: Hub token; default the logged-in one.

    Returns:
        ``(snapshot directory, commit sha)``.

    Raises:
        RepoNotFoundError, GatedRepoAccessError, RevisionNotFoundError: the Hub refused.
        HubError: offline and not cached, or the Hub could not be reached.
    """
    where = f"base model {repo_id}"
    try:
        path = snapshot_download(
            repo_id, revision=revision, token=token, allow_patterns=_BASE_MODEL_FILES, etag_timeout=_metadata_timeout()
        )
    except hf_errors.LocalEntryNotFoundError as err:
        if _offline() or err.__cause__ is None:
            at = f"{repo_id}{'@' + revision if revision else ''}"
            raise HubError(
                f"{where}: HF_HUB_OFFLINE=1 is set (or the Hub is unreachable) and {at} is not in the local cache: "
                "download it once with network access, or give a local model directory as the base model"
            ) from None
        raise _explain(err, where, repo_id=repo_id, revision=revision, token=token) from None
    except (*_HUB_FAILURES, hf_errors.HFValidationError, ValueError) as err:
        if isinstance(err, (hf_errors.HFValidationError, ValueError)) and not isinstance(err, hf_errors.HfHubHTTPError):
            raise RepoNotFoundError(
                f"{where}: {repo_id!r} is neither a local directory nor a valid Hub repo id; check the name"
            ) from None
        raise _explain(err, where, repo_id=repo_id, revision=revision, token=token) from None
    return Path(path), Path(path).name


def fetch_base_config(repo_id: str, *, revision: str | None = None, token: str | bool | None = None) -> Path:
    """Download only ``config.json`` of a base model (what a GGUF conversion needs to know its architecture).

    Returns:
        The local path of the file (in the HF cache).

    Raises:
        HubError: the repo, revision or file cannot be reached (the message says which and what to do).
    """
    where = f"base model {repo_id}"
    try:
        return Path(hf_hub_download(repo_id, "config.json", revision=revision, token=token))
    except hf_errors.EntryNotFoundError:
        raise HubError(f"{where}: the repo has no config.json; pass a local directory that holds it") from None
    except (*_HUB_FAILURES, hf_errors.LocalEntryNotFoundError) as err:
        raise _explain(err, where, repo_id=repo_id, revision=revision, token=token) from None


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
