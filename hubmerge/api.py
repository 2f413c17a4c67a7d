"""The Python API: load → check → merge and analyse, in one streaming pass.

:func:`merge` is what the CLI and the Space call. It loads every source,
checks them all (raising once with every problem), then walks the union of
adapted modules one at a time: each module's factors are read, compared in
rank space and concatenated, then dropped, so the inputs are never all in
memory next to the output.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__
from .adapter import KEY_PREFIX, LoraAdapter, load_adapter
from .compat import Compatibility, check_compatibility, normalize_base_model
from .errors import InvalidArgumentError, LimitExceededError
from .merge import build_config, concat_factors
from .report import Notice
from .result import MergeResult
from .similarity import SimilarityAccumulator, Thresholds, module_gram
from .sources import Source, parse_source

__all__ = ["load_adapters", "merge", "similarity"]

logger = logging.getLogger(__name__)

SourceLike = str | Path | Source | LoraAdapter

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}  # fmt: skip
DTYPE_CHOICES = ("float32", "float16", "bfloat16", "float64")


def load_adapters(
    sources: Sequence[SourceLike],
    *,
    token: str | bool | None = None,
    allow_pickle: bool = False,
    max_adapters: int | None = None,
    max_download_bytes: int | None = None,
) -> list[LoraAdapter]:
    """Parse, fetch (for Hub references) and load every source, giving each a unique name.

    All sources are parsed before anything is downloaded, so a typo in the
    last one fails at once.

    Args:
        sources: directories, ``user/repo[/sub][@rev]`` references, parsed
            :class:`Source` objects or already loaded adapters.
        token: Hub token; default the logged-in one.
        allow_pickle: accept ``adapter_model.bin`` where there is no safetensors file.
        max_adapters: refuse more sources than this.
        max_download_bytes: refuse, before downloading, Hub adapters whose files
            add up to more than this (a mistyped repo id must not fill the disk).

    Returns:
        The adapters, in order.

    Raises:
        SourceError, AdapterError, HubError: a source is malformed, missing, unreachable or unreadable.
        LimitExceededError: more sources or more bytes than allowed.
    """
    if max_adapters is not None and len(sources) > max_adapters:
        raise LimitExceededError(f"{len(sources)} adapters given; at most {max_adapters} can be merged here")
    parsed = [item if isinstance(item, (LoraAdapter, Source)) else parse_source(str(item)) for item in sources]
    budget = max_download_bytes
    adapters = []
    for item in parsed:
        if isinstance(item, LoraAdapter):
            adapters.append(item)
        elif item.is_local:
            adapters.append(load_adapter(item.path, name=item.name, source=item.text, allow_pickle=allow_pickle))
        else:
            from .hub import pull_adapter

            pulled = pull_adapter(item, token=token, allow_pickle=allow_pickle, max_bytes=budget)
            if budget is not None:
                budget -= pulled.downloaded_bytes
            adapter = load_adapter(pulled.path, name=item.name, source=item.text, allow_pickle=allow_pickle)
            adapter.repo_id, adapter.subfolder, adapter.commit_sha = item.repo_id, item.subfolder, pulled.commit_sha
            adapter.license, adapter.datasets = pulled.license, pulled.datasets
            adapters.append(adapter)
    seen: dict[str, int] = {}
    for adapter in adapters:
        count = seen.get(adapter.name, 0)
        seen[adapter.name] = count + 1
        if count:
            adapter.name = f"{adapter.name}-{count + 1}"
    return adapters


def merge(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    allow_base_mismatch: bool = False,
    report_only: bool = False,
    thresholds: Thresholds | None = None,
    token: str | bool | None = None,
    resolve_base_model: bool | None = None,
    max_adapters: int | None = None,
    max_download_bytes: int | None = None,
) -> MergeResult:
    """Merge LoRA adapters exactly (Σ wᵢ·sᵢ·Bᵢ·Aᵢ) and measure their interference.

    Args:
        sources: two or more adapters: directories, :class:`Source` objects or
            loaded :class:`LoraAdapter` objects. One adapter is allowed (it
            rescales it by its weight).
        weights: one weight per source, default 1 each; negative weights subtract.
        dtype: output dtype (``"float32"``, ``"bfloat16"``, …); default the inputs'.
        allow_pickle: accept ``adapter_model.bin`` sources (loaded with ``weights_only=True``).
        allow_base_mismatch: merge adapters that name different base models (a warning instead).
        report_only: compute the report without building the merged tensors.
        thresholds: when to warn; default :class:`Thresholds()`.
        token: Hub token for Hub sources; default the logged-in one.
        resolve_base_model: ask the Hub for the canonical id of the base model
            (so renamed repos compare equal). Default: when a source comes from
            the Hub or the names differ; never with ``HF_HUB_OFFLINE=1``.
        max_adapters, max_download_bytes: limits, see :func:`load_adapters`.

    Returns:
        A :class:`MergeResult`; ``result.save_pretrained(dir)`` writes it.

    Raises:
        SourceError, AdapterError: a source cannot be read.
        IncompatibleAdaptersError: the adapters cannot be summed exactly (every problem listed).
        InvalidArgumentError: bad weights or dtype.

    Example:
        >>> result = merge(["examples/adapters/math", "examples/adapters/medicine"], weights=[1.0, 0.5])
        >>> result.report["similarity"]["rms_cosine"][0][1]
        0.0123
        >>> result.save_pretrained("merged")
    """
    coefficients_w = _check_weights(weights, len(sources))  # bad options fail before any download
    out_dtype, dtype_notes = _parse_dtype(dtype), []
    adapters = load_adapters(
        sources,
        token=token,
        allow_pickle=allow_pickle,
        max_adapters=max_adapters,
        max_download_bytes=max_download_bytes,
    )
    if out_dtype is None:
        out_dtype, dtype_notes = _inputs_dtype(adapters)
    canonical = _canonical_base_models(adapters, resolve_base_model, token)
    compat = check_compatibility(adapters, allow_base_mismatch=allow_base_mismatch, canonical=canonical)

    names = [a.name for a in adapters]
    accumulator = SimilarityAccumulator(names, thresholds or Thresholds())
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for key, owners in compat.coverage.items():
        factors = [adapters[i].factors(key) if i in owners else None for i in range(len(adapters))]
        coefficients = [w * a.scale(key) if key in a.modules else 0.0 for w, a in zip(coefficients_w, adapters)]
        accumulator.add(key, module_gram(factors, coefficients))
        if report_only:
            continue
        a, b = concat_factors([factors[i] for i in owners], [coefficients[i] for i in owners], dtype=out_dtype)
        kind = adapters[owners[0]].modules[key].kind
        a_name, b_name = (
            ("lora_embedding_A", "lora_embedding_B") if kind == "embedding" else ("lora_A.weight", "lora_B.weight")
        )
        tensors[f"{KEY_PREFIX}{key}.{a_name}"] = a
        tensors[f"{KEY_PREFIX}{key}.{b_name}"] = b
        ranks[key] = a.shape[0]
    if not report_only:
        for group, owners in (("saved_modules", compat.saved_modules), ("base_layers", compat.base_layers)):
            for key, owner in owners.items():
                for name in getattr(adapters[owner], group)[key]:
                    tensors[name] = adapters[owner].tensor(name)

    similarity_summary, similarity_notes = accumulator.summary()
    tasks = {a.config.task_type for a in adapters}
    config = build_config(
        ranks,
        base_model_name_or_path=compat.base_model,
        revision=compat.revision,
        task_type=tasks.pop() if len(tasks) == 1 else None,
        fan_in_fan_out=adapters[0].config.fan_in_fan_out,
        modules_to_save=list(compat.saved_modules),
    )
    report = _build_report(
        adapters, coefficients_w, compat, similarity_summary,
        [*compat.warnings, *dtype_notes, *similarity_notes],
        output=None if report_only else _output_summary(ranks, out_dtype),
        canonical=canonical,
    )  # fmt: skip
    for note in report["warnings"]:
        logger.warning(note["message"])
    recipe = _build_recipe(adapters, coefficients_w, out_dtype, allow_base_mismatch, allow_pickle)
    return MergeResult(config=config, tensors=tensors, report=report, recipe=recipe, adapters=adapters)


def similarity(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = None,
    allow_pickle: bool = False,
    allow_base_mismatch: bool = False,
    thresholds: Thresholds | None = None,
) -> dict:
    """The interference analysis alone: ``merge(..., report_only=True).report["similarity"]``.

    Returns:
        The similarity section of the report: ``rms_cosine``, ``mean_cosine``,
        ``norm_weighted_cosine``, ``a_overlap`` (N×N lists), ``shared_modules``,
        ``interference_ratio`` and ``per_module``.
    """
    result = merge(
        sources,
        weights=weights,
        allow_pickle=allow_pickle,
        allow_base_mismatch=allow_base_mismatch,
        report_only=True,
        thresholds=thresholds,
    )
    return result.report["similarity"]


def _check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = list(weights)
    if len(weights) != count:
        raise InvalidArgumentError(f"got {len(weights)} weight(s) for {count} adapter(s); give one weight per adapter")
    for value in weights:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgumentError(f"weight {value!r} is not a finite number")
    return [float(w) for w in weights]


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype) and dtype in _DTYPE_NAMES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower()]
    raise InvalidArgumentError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")


def _inputs_dtype(adapters: list[LoraAdapter]) -> tuple[torch.dtype, list[Notice]]:
    found = {a.dtype for a in adapters}
    chosen = found.pop()
    if not found:
        return chosen, []
    for other in found:
        chosen = torch.promote_types(chosen, other)
    listing = ", ".join(f"{a.name}: {_dtype_name(a.dtype)}" for a in adapters)
    message = f"the adapters have different dtypes ({listing}); the merge is saved as {_dtype_name(chosen)}"
    return chosen, [Notice("mixed_dtypes", message)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _output_summary(ranks: dict[str, int], dtype: torch.dtype) -> dict:
    values = sorted(ranks.values()) or [0]
    return {
        "num_modules": len(ranks),
        "rank": max(set(values), key=values.count),
        "rank_min": values[0],
        "rank_max": values[-1],
        "dtype": _dtype_name(dtype),
    }


def _canonical_base_models(adapters, resolve: bool | None, token) -> dict[str, str]:
    names = {a.config.base_model_name_or_path for a in adapters if a.config.base_model_name_or_path}
    if resolve is None:
        from_hub = any(a.repo_id for a in adapters)
        resolve = from_hub or len({normalize_base_model(n) for n in names}) > 1
    if not resolve:
        return {}
    from .hub import canonical_repo_id

    found = {}
    for name in sorted(names):
        if Path(name).expanduser().is_dir():
            continue  # a local base model: nothing to ask the Hub
        canonical = canonical_repo_id(name, token=token)
        if canonical is not None:
            found[name] = canonical
    return found


def _pinned(adapter: LoraAdapter) -> str:
    if adapter.repo_id is None:
        return adapter.source
    where = adapter.repo_id + (f"/{adapter.subfolder}" if adapter.subfolder else "")
    return f"{where}@{adapter.commit_sha}" if adapter.commit_sha else where


def _build_recipe(adapters, weights, dtype, allow_base_mismatch: bool, allow_pickle: bool) -> dict:
    pinned = [_pinned(a) for a in adapters]
    words = ["hubmerge", *pinned, f"--weights={','.join(_weight_text(w) for w in weights)}"]
    words += [f"--dtype={_dtype_name(dtype)}"]
    words += ["--allow-base-mismatch"] * allow_base_mismatch + ["--allow-pickle"] * allow_pickle
    return {
        "hubmerge_version": __version__,
        "method": "sum",
        "sources": [
            {
                "source": text,
                "repo_id": a.repo_id,
                "subfolder": a.subfolder,
                "revision": a.commit_sha,
                "weight": w,
            }
            for text, a, w in zip(pinned, adapters, weights)
        ],
        "dtype": _dtype_name(dtype),
        "allow_base_mismatch": allow_base_mismatch,
        "allow_pickle": allow_pickle,
        "command": shlex.join(words),
    }


def _weight_text(weight: float) -> str:
    return str(int(weight)) if weight == int(weight) else repr(weight)


def _build_report(adapters, weights, compat: Compatibility, sim: dict, notes, *, output, canonical) -> dict:
    sources = []
    for adapter, weight in zip(adapters, weights):
        ranks = [spec.rank for spec in adapter.modules.values()] or [0]
        sources.append(
            {
                "name": adapter.name,
                "source": adapter.source,
                "repo_id": adapter.repo_id,
                "subfolder": adapter.subfolder,
                "commit_sha": adapter.commit_sha,
                "license": adapter.license,
                "datasets": adapter.datasets,
                "weight": weight,
                "r": adapter.config.r,
                "lora_alpha": adapter.config.lora_alpha,
                "use_rslora": adapter.config.use_rslora,
                "rank_pattern": adapter.config.rank_pattern,
                "alpha_pattern": adapter.config.alpha_pattern,
                "rank_min": min(ranks),
                "rank_max": max(ranks),
                "num_modules": len(adapter.modules),
                "dtype": _dtype_name(adapter.dtype),
                "task_type": adapter.config.task_type,
                "base_model": adapter.config.base_model_name_or_path,
                "target_modules": adapter.config.target_modules,
            }
        )
    names = [a.name for a in adapters]
    only = {name: sum(1 for owners in compat.coverage.values() if owners == [i]) for i, name in enumerate(names)}
    return {
        "hubmerge_version": __version__,
        "method": "sum",
        "exact": True,
        "base_model": {
            "name": compat.base_model,
            "revision": compat.revision,
            "canonical": canonical.get(compat.base_model) if compat.base_model else None,
            "resolved": bool(compat.base_model and compat.base_model in canonical),
            "note": (
                "resolved on the Hub: aliases of one repo compare equal"
                if compat.base_model and compat.base_model in canonical
                else "not resolved against the Hub (offline, local, or not asked): compared by name, "
                "case-insensitively for Hub ids"
            ),
        },
        "sources": sources,
        "modules": {
            "union": len(compat.coverage),
            "shared_by_all": sum(1 for owners in compat.coverage.values() if len(owners) == len(adapters)),
            "only_in": only,
            "coverage": {key: [names[i] for i in owners] for key, owners in compat.coverage.items()},
        },
        "modules_to_save": [{"module": key, "from": names[i]} for key, i in compat.saved_modules.items()],
        "similarity": sim,
        "warnings": [note.to_dict() for note in notes],
        "output": output,
    }
