"""Resolving and downloading: adapters (config and weights only), base models and their configs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import errors as hf_errors

from ..adapter import PICKLE_NAME, SAFETENSORS_NAME
from ..config import CONFIG_NAME, describe_full_model
from ..errors import (
    AdapterNotFoundError,
    HubError,
    LimitExceededError,
    RepoNotFoundError,
    UnsafeAdapterError,
)
from ..provenance import HubOrigin
from ..sources import Source
from ._failures import (
    _HUB_FAILURES,
    _explain,
    _metadata_timeout,
    _offline,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PulledAdapter:
    """A Hub adapter in the local HF cache, pinned to the commit it came from."""

    path: Path
    origin: HubOrigin


def _hub_repo(source: Source) -> str:
    if source.repo_id is None:
        raise ValueError(f"{source.text!r} is a local source, not a Hub one")  # a caller's bug
    return source.repo_id


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
                raise _not_cached(where, repo_id, revision) from err
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


def _check_adapter_files(files: set[str], source: Source, sha: str | None, allow_pickle: bool) -> None:
    prefix = f"{source.subfolder}/" if source.subfolder else ""
    at = f"{source.repo_id}@{(sha or 'head')[:7]}"
    if f"{prefix}{CONFIG_NAME}" not in files:
        found = sorted(name[: -len(CONFIG_NAME)].rstrip("/") or "." for name in files if name.endswith(CONFIG_NAME))
        place = f"subfolder {source.subfolder!r}" if source.subfolder else "the repo root"
        here = [name[len(prefix) :] for name in files if name.startswith(prefix) and "/" not in name[len(prefix) :]]
        model = describe_full_model(here)
        if found:
            first = found[0]
            message = f"no {CONFIG_NAME} in {place} of {at}; adapters are in: {', '.join(found)}" + (
                f" (e.g. {source.repo_id}/{first})" if first != "." else f" (use {source.repo_id})"
            )
        elif model is not None:
            message = f"{place} of {at} {model}" if source.subfolder else f"{at} {model}"
        elif source.subfolder:
            message = f"no {CONFIG_NAME} in {place} of {at}, nor anywhere else in it: it holds no PEFT adapter"
        else:
            message = f"no {CONFIG_NAME} anywhere in {at}: it holds no PEFT adapter"
        raise AdapterNotFoundError(
            f"{source.text}: {message}",
            reason="full_model" if model is not None and not found else "no_adapter",
            source=source.text,
            repo_id=source.repo_id,
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


def _not_cached(where: str, repo_id: str, revision: str | None, *, what: str = "") -> HubError:
    """Offline, and ``what`` (a file of) the repo is not in the local cache."""
    at = f"{repo_id}{'@' + revision if revision else ''}"
    return HubError(
        f"{where}: HF_HUB_OFFLINE=1 is set and {what}{at} is not in the local cache",
        reason="offline",
        source=where,
        repo_id=repo_id,
        revision=revision,
    )


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
    except hf_errors.LocalEntryNotFoundError as err:  # an EntryNotFoundError too: not "the repo has none"
        if _offline():
            raise _not_cached(where, repo_id, revision, what="the config.json of ") from err
        raise _explain(err, where, repo_id=repo_id, revision=revision, token=token) from err
    except hf_errors.EntryNotFoundError:
        raise HubError(
            f"{where}: the repo has no config.json", reason="no_base_config", source=where, repo_id=repo_id
        ) from None
    except hf_errors.HFValidationError:  # a path that is not there (the adapter was trained from a local folder)
        raise RepoNotFoundError(
            f"{where}: {repo_id!r} is neither a local directory nor a valid Hub repo id",
            reason="not_a_repo_id",
            source=where,
        ) from None
    except _HUB_FAILURES as err:
        raise _explain(err, where, repo_id=repo_id, revision=revision, token=token) from err


def dataset_commit(dataset_id: str, *, token: str | bool | None = None) -> str | None:
    """The commit a Hub dataset's default branch points at, to pin what is read and report it.

    Returns:
        The commit sha, or ``None`` when the Hub cannot be asked (offline, unreachable, no such
        dataset): the ``datasets`` package then reads its cache or says what is wrong.
    """
    if _offline():
        return None
    try:
        return HfApi().dataset_info(dataset_id, token=token, timeout=_metadata_timeout()).sha
    except (*_HUB_FAILURES, hf_errors.HFValidationError, ValueError) as err:
        logger.info("could not resolve dataset %r on the Hub: %s", dataset_id, type(err).__name__)
        return None
