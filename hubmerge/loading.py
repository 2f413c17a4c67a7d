"""Sources in, loaded adapters out: parse every reference, resolve the Hub ones, download, read.

All sources are parsed, and every Hub source resolved to a commit with its
file sizes, before the first byte is downloaded: a typo in the last source,
or a set too large for the download limit, fails before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .adapter import LoraAdapter, load_adapter
from .compat import normalize_base_model
from .config import CONFIG_NAME, describe_full_model
from .errors import AdapterNotFoundError, InvalidArgumentError, LimitExceededError
from .limits import DEFAULT_MAX_ADAPTERS, DEFAULT_MAX_DOWNLOAD_BYTES
from .notice import Notice
from .sources import Source, parse_source

__all__ = ["SourceLike", "check_not_full_model", "display_names", "load_adapters", "resolve_base_models"]

SourceLike = str | Path | Source | LoraAdapter


def load_adapters(
    sources: Sequence[SourceLike],
    *,
    token: str | bool | None = None,
    allow_pickle: bool = False,
    max_adapters: int | None = DEFAULT_MAX_ADAPTERS,
    max_download_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> list[LoraAdapter]:
    """Parse, fetch (for Hub references) and load every source.

    Args:
        sources: directories, ``user/repo[/sub][@rev]`` references, parsed
            :class:`Source` objects or already loaded adapters (returned as they are).
        token: Hub token; default the logged-in one.
        allow_pickle: accept ``adapter_model.bin`` where there is no safetensors file.
        max_adapters: refuse more sources than this (default 64; ``None``: no limit).
        max_download_bytes: refuse, before downloading, Hub adapters whose files
            add up to more than this, by the sizes the Hub reports (default 20 GB;
            ``None``: no limit). A mistyped repo id must not fill the disk.

    Returns:
        The adapters, in order. Names may repeat: :func:`display_names` makes them unique.

    Raises:
        SourceError, AdapterError, HubError: a source is malformed, missing, unreachable or unreadable.
        LimitExceededError: more sources or more bytes than allowed.

    Example:
        >>> [a.name for a in load_adapters(["examples/adapters/math", "examples/adapters/math"])]
        ['math', 'math']
    """
    if not sources:
        raise InvalidArgumentError("no adapters given: pass one or more sources", reason="no_sources")
    if max_adapters is not None and len(sources) > max_adapters:
        raise LimitExceededError(
            f"{len(sources)} adapters given; at most {max_adapters} can be merged here", limit="max_adapters"
        )
    parsed = [item if isinstance(item, (LoraAdapter, Source)) else parse_source(str(item)) for item in sources]
    resolved = {}
    if any(isinstance(item, Source) and not item.is_local for item in parsed):
        from .hub import check_download_size, resolve_adapter

        for index, item in enumerate(parsed):
            if isinstance(item, Source) and not item.is_local:
                resolved[index] = resolve_adapter(item, token=token, allow_pickle=allow_pickle)
        check_download_size(list(resolved.values()), max_download_bytes)
    adapters = []
    for index, item in enumerate(parsed):
        if isinstance(item, LoraAdapter):
            adapters.append(item)
        elif item.is_local:
            assert item.path is not None
            check_not_full_model(item.path, item.text)
            adapters.append(load_adapter(item.path, name=item.name, source=item.text, allow_pickle=allow_pickle))
        else:
            from .hub import fetch_adapter

            pulled = fetch_adapter(resolved[index], token=token)
            adapters.append(
                load_adapter(
                    pulled.path, name=item.name, source=item.text, allow_pickle=allow_pickle, hub_origin=pulled.origin
                )
            )
    return adapters


def check_not_full_model(path: str | Path, where: str) -> None:
    """Refuse a local folder that holds a full model instead of an adapter, saying so.

    :func:`~hubmerge.adapter.load_adapter` would only say that ``adapter_config.json`` is missing; a folder with
    ``config.json`` or model weights is more likely a model given where an adapter was meant.

    Raises:
        AdapterNotFoundError: no ``adapter_config.json``, and the folder looks like a full model.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir() or (directory / CONFIG_NAME).exists():
        return
    try:
        names = [entry.name for entry in directory.iterdir()]
    except OSError:  # unreadable: load_adapter says what is wrong
        return
    model = describe_full_model(names)
    if model is not None:
        raise AdapterNotFoundError(f"{where}: {model}", reason="full_model", source=where)


def display_names(names: Sequence[str]) -> list[str]:
    """Unique display names, in order: the first ``a`` stays ``a``, later ones become ``a-2``, ``a-3``…

    Example:
        >>> display_names(["math", "math", "math-2"])
        ['math', 'math-2', 'math-2-2']
    """
    taken: set[str] = set()
    unique = []
    for base in names:
        name, count = base, 1
        while name in taken:
            count += 1
            name = f"{base}-{count}"
        taken.add(name)
        unique.append(name)
    return unique


def resolve_base_models(
    adapters: Sequence[LoraAdapter], resolve: bool | None, token, labels: Sequence[str] | None = None
) -> tuple[dict[str, str], dict[str, str], list[Notice]]:
    """Where the Hub was asked: base model name → the model whose weights it holds (canonical id,
    quantized mirrors followed to their root), name → its model_type, and a notice per quantized
    mirror saying who trained on it (by ``labels``, the merge's display names; default the sources)."""
    labels = list(labels) if labels is not None else [a.source for a in adapters]
    names = {a.config.base_model_name_or_path for a in adapters if a.config.base_model_name_or_path}
    if resolve is None:
        from_hub = any(a.hub_origin is not None for a in adapters)
        resolve = from_hub or len({normalize_base_model(n) for n in names}) > 1
    if not resolve:
        return {}, {}, []
    from .hub import resolve_base_model

    found: dict[str, str] = {}
    model_types: dict[str, str] = {}
    notes: list[Notice] = []
    for name in sorted(names):
        if Path(name).expanduser().is_dir():
            continue  # a local base model: nothing to ask the Hub
        info = resolve_base_model(name, token=token)
        if info is None:
            continue
        found[name] = info.root
        if info.model_type:
            model_types[name] = info.model_type
        if info.quantized_from:
            users = ", ".join(label for a, label in zip(adapters, labels) if a.config.base_model_name_or_path == name)
            notes.append(
                Notice(
                    "quantized_base",
                    f"{users}: trained on {info.repo_id!r}, a quantized mirror "
                    f"({info.quantization or 'quantization_config'}) of {info.root!r}; compared as {info.root!r}, "
                    "so its delta was learnt against the quantized weights",
                )
            )
    return found, model_types, notes
