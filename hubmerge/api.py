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
from collections.abc import Sequence
from pathlib import Path

import torch

from .adapter import KEY_PREFIX, LoraAdapter, load_adapter
from .compat import check_compatibility, nonfinite_factors, normalize_base_model
from .config import build_config
from .errors import IncompatibleAdaptersError, InvalidArgumentError, LimitExceededError
from .interference import SimilarityAccumulator, Thresholds, concat_gram, round_float
from .limits import DEFAULT_MAX_ADAPTERS, DEFAULT_MAX_DOWNLOAD_BYTES
from .methods import MethodParams, get_method
from .methods.combine import ModuleInput
from .methods.exact import concat_factors, pad_rank
from .notice import Notice
from .report import DTYPE_CHOICES, build_report, dtype_name, output_summary
from .result import MergeResult, build_recipe
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


def load_adapters(
    sources: Sequence[SourceLike],
    *,
    token: str | bool | None = None,
    allow_pickle: bool = False,
    max_adapters: int | None = DEFAULT_MAX_ADAPTERS,
    max_download_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> list[LoraAdapter]:
    """Parse, fetch (for Hub references) and load every source, giving each a unique name.

    All sources are parsed before anything is downloaded, so a typo in the
    last one fails at once.

    Args:
        sources: directories, ``user/repo[/sub][@rev]`` references, parsed
            :class:`Source` objects or already loaded adapters.
        token: Hub token; default the logged-in one.
        allow_pickle: accept ``adapter_model.bin`` where there is no safetensors file.
        max_adapters: refuse more sources than this (default 64; ``None``: no limit).
        max_download_bytes: refuse, before downloading, Hub adapters whose files
            add up to more than this, by the sizes the Hub reports (default 20 GB;
            ``None``: no limit). A mistyped repo id must not fill the disk.

    Returns:
        The adapters, in order.

    Raises:
        SourceError, AdapterError, HubError: a source is malformed, missing, unreachable or unreadable.
        LimitExceededError: more sources or more bytes than allowed.
    """
    if not sources:
        raise InvalidArgumentError("no adapters given: pass one or more sources")
    if max_adapters is not None and len(sources) > max_adapters:
        raise LimitExceededError(
            f"{len(sources)} adapters given; at most {max_adapters} can be merged here", limit="max_adapters"
        )
    parsed = [item if isinstance(item, (LoraAdapter, Source)) else parse_source(str(item)) for item in sources]
    resolved = {}
    if any(isinstance(item, Source) and not item.is_local for item in parsed):
        from .hub import check_download_size, fetch_adapter, resolve_adapter

        # Every Hub source is resolved before anything is downloaded: a typo in the last one, or a
        # repo too large for the limit, fails before the first byte.
        for index, item in enumerate(parsed):
            if isinstance(item, Source) and not item.is_local:
                resolved[index] = resolve_adapter(item, token=token, allow_pickle=allow_pickle)
        check_download_size(list(resolved.values()), max_download_bytes)
    adapters = []
    for index, item in enumerate(parsed):
        if isinstance(item, LoraAdapter):
            adapters.append(item)
        elif item.is_local:
            adapters.append(load_adapter(item.path, name=item.name, source=item.text, allow_pickle=allow_pickle))
        else:
            pulled = fetch_adapter(resolved[index], token=token)
            adapter = load_adapter(pulled.path, name=item.name, source=item.text, allow_pickle=allow_pickle)
            adapter.repo_id, adapter.subfolder, adapter.commit_sha = item.repo_id, item.subfolder, pulled.commit_sha
            adapter.license, adapter.datasets = pulled.license, pulled.datasets
            adapters.append(adapter)
    taken: set[str] = set()
    for adapter in adapters:  # unique display names: a, a-2, a-3… never reusing one
        name, count = adapter.name, 1
        while name in taken:
            count += 1
            name = f"{adapter.name}-{count}"
        adapter.name = name
        taken.add(name)
    return adapters


def merge(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = None,
    method: str = "sum",
    rank: int | None = None,
    density: float = 0.5,
    majority_sign: str = "total",
    seed: int = 0,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    allow_base_mismatch: bool = False,
    report_only: bool = False,
    thresholds: Thresholds | None = None,
    token: str | bool | None = None,
    resolve_base_model: bool | None = None,
    max_adapters: int | None = DEFAULT_MAX_ADAPTERS,
    max_download_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
    eval_data=None,
    base_model: str | Path | None = None,
    eval_samples: int = 32,
    eval_max_length: int = 512,
    eval_split: str = "test",
    eval_batch_size: int = 8,
    device: str = "auto",
    tune_weights: bool = False,
    tune_samples: int | None = None,
    tune_steps: int | None = None,
) -> MergeResult:
    """Merge LoRA adapters exactly (Σ wᵢ·sᵢ·Bᵢ·Aᵢ) and measure their interference.

    Args:
        sources: two or more adapters: directories, :class:`Source` objects or
            loaded :class:`LoraAdapter` objects. One adapter is allowed (it
            rescales it by its weight).
        weights: one weight per source, default 1 each; negative weights subtract.
        method: a name from :data:`hubmerge.METHODS` (default ``"sum"``, exact).
        rank, density, majority_sign, seed: the method's parameters (see
            :class:`hubmerge.methods.MethodParams`); ignored by methods that don't use them.
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
        eval_data: measure the merge on text: ``{NAME: PATH}`` or ``["NAME=PATH", …]``, NAME a
            source's display name (see :func:`hubmerge.evaluate`); needs ``hubmerge[eval]``.
        base_model, eval_samples, eval_max_length, eval_split, eval_batch_size, device: the
            evaluation's base model (default the adapters'), examples per domain, tokens per
            example, split, batch size and device (:func:`hubmerge.evaluate`).
        tune_weights: choose the weights (``weights`` is the start) on the records after the first
            ``eval_samples`` of each split; the numbers reported are on the first ``eval_samples``.
        tune_samples, tune_steps: how many records per domain to tune on (default ``eval_samples``)
            and how many gradient steps (default 20).

    Returns:
        A :class:`MergeResult`; ``result.save_pretrained(dir)`` writes it. With ``eval_data``,
        ``result.report["evaluation"]`` holds the measurements.

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
    if eval_data is not None or tune_weights:
        if eval_data is None:
            raise InvalidArgumentError("tune_weights needs eval_data: the weights are tuned on it")
        from .evaluation.runner import merge_with_evaluation

        options = dict(
            weights=weights, method=method, rank=rank, density=density, majority_sign=majority_sign, seed=seed,
            dtype=dtype, allow_pickle=allow_pickle, allow_base_mismatch=allow_base_mismatch, report_only=report_only,
            thresholds=thresholds, token=token, resolve_base_model=resolve_base_model, max_adapters=max_adapters,
            max_download_bytes=max_download_bytes,
        )  # fmt: skip
        return merge_with_evaluation(
            merge, sources, eval_data=eval_data, merge_options=options, base_model=base_model, samples=eval_samples,
            max_length=eval_max_length, split=eval_split, device=device, batch_size=eval_batch_size, tune=tune_weights,
            tune_samples=tune_samples, tune_steps=tune_steps,
        )  # fmt: skip
    # Bad options fail before any download.
    chosen = get_method(method)
    params = MethodParams(rank=rank, density=density, majority_sign=majority_sign, seed=seed).validate()
    coefficients_w = [w * chosen.weight_scale(len(sources)) for w in _check_weights(weights, len(sources))]
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
    compat = check_compatibility(
        adapters, allow_base_mismatch=allow_base_mismatch, canonical=canonical, scan_factors=False
    )

    names = [a.name for a in adapters]
    accumulator = SimilarityAccumulator(names, thresholds or Thresholds())
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    kept: dict[str, tuple[float, float]] = {}  # module → (energy of the target, share kept)
    names: dict[str, tuple[str, str]] = {}  # module → its (A, B) tensor names
    broken: list[str] = []  # NaN/Inf found during the pass: refused before anything is written
    scratch = _scratch_buffers(adapters, compat.coverage)
    for key, owners in compat.coverage.items():
        factors = [adapters[i].factors(key) for i in owners]
        scales = [adapters[i].scale(key) for i in owners]
        weights_here = [coefficients_w[i] for i in owners]
        # One concatenation serves the analysis and the exact sum (float32, or float64 inputs' float64).
        work = torch.float64 if any(a.dtype == torch.float64 for a, _ in factors) else torch.float32
        a_all, b_all = concat_factors(
            factors, [w * s for w, s in zip(weights_here, scales)], dtype=work, scratch=scratch.get(work)
        )
        stats = concat_gram(a_all, b_all, [a.shape[0] for a, _ in factors], owners, len(adapters))
        if not torch.isfinite(stats.gram).all():  # a NaN/Inf anywhere in a factor reaches its Gram diagonal
            broken.extend(p for i in owners for p in nonfinite_factors(adapters[i], key))
            continue
        accumulator.add(key, stats)
        if report_only:
            continue
        module = ModuleInput(key, factors, weights_here, scales, concat=(a_all, b_all), out_dtype=out_dtype)
        merged = chosen.combine(module, params)
        a, b = merged.a.to(out_dtype).contiguous(), merged.b.to(out_dtype).contiguous()
        kept[key] = (merged.energy, merged.kept)
        kind = adapters[owners[0]].modules[key].kind
        a_name, b_name = (
            ("lora_embedding_A", "lora_embedding_B") if kind == "embedding" else ("lora_A.weight", "lora_B.weight")
        )
        # float16 is the one output dtype whose range is narrower than float32's.
        if out_dtype == torch.float16 and not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise InvalidArgumentError(
                f"module {key!r} overflows {dtype_name(out_dtype)} after scaling by the weights; "
                "use --dtype float32 or bfloat16, or smaller weights"
            )
        names[key] = (f"{KEY_PREFIX}{key}.{a_name}", f"{KEY_PREFIX}{key}.{b_name}")
        tensors[names[key][0]], tensors[names[key][1]] = a, b
        ranks[key] = a.shape[0]
    if broken:
        raise IncompatibleAdaptersError(broken)
    stored_rank = max(ranks.values(), default=1)
    for a_name, b_name in names.values():  # one rank for all modules: see build_config
        tensors[a_name], tensors[b_name] = pad_rank(tensors[a_name], tensors[b_name], stored_rank)
    if not report_only:
        for group, owners in (("saved_modules", compat.saved_modules), ("base_layers", compat.base_layers)):
            for key, owner in owners.items():
                for name in getattr(adapters[owner], group)[key]:
                    tensors[name] = adapters[owner].tensor(name)

    similarity_summary, similarity_notes = accumulator.summary()
    tasks = {a.config.task_type for a in adapters}
    config = build_config(
        list(ranks),
        stored_rank,
        base_model_name_or_path=compat.base_model,
        revision=compat.revision,
        task_type=tasks.pop() if len(tasks) == 1 else None,
        fan_in_fan_out=adapters[0].config.fan_in_fan_out,
        modules_to_save=list(compat.saved_modules),
    )
    used = {name: getattr(params, name) for name in chosen.parameters}
    exact = chosen.exact or (chosen.exact_if_untruncated and all(share == 1.0 for _, share in kept.values()))
    report = build_report(
        adapters, coefficients_w, compat, similarity_summary,
        [*compat.warnings, *dtype_notes, *similarity_notes],
        output=None if report_only else output_summary(ranks, out_dtype),
        canonical=canonical,
        method={**chosen.to_dict(), "exact": exact, "parameters": used},
        exact=exact,
        kept_energy=None if chosen.exact or report_only else _kept_energy(kept),
    )  # fmt: skip
    for note in report["warnings"]:
        logger.warning(note["message"])
    recipe = build_recipe(
        adapters, [w / chosen.weight_scale(len(adapters)) for w in coefficients_w], out_dtype,
        method=chosen.name, params=used, allow_base_mismatch=allow_base_mismatch, allow_pickle=allow_pickle,
    )  # fmt: skip
    return MergeResult(config=config, tensors=tensors, report=report, recipe=recipe, adapters=adapters)


def similarity(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = None,
    allow_pickle: bool = False,
    allow_base_mismatch: bool = False,
    thresholds: Thresholds | None = None,
    token: str | bool | None = None,
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
        token=token,
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
    listing = ", ".join(f"{a.name}: {dtype_name(a.dtype)}" for a in adapters)
    message = f"the adapters have different dtypes ({listing}); the merge is saved as {dtype_name(chosen)}"
    return chosen, [Notice("mixed_dtypes", message)]


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


def _kept_energy(kept: dict[str, tuple[float, float]]) -> dict:
    total = sum(energy for energy, _ in kept.values())
    overall = sum(energy * share for energy, share in kept.values()) / total if total > 0 else 1.0
    return {
        "overall": round_float(overall),
        "per_module": {key: round_float(share) for key, (_, share) in kept.items()},
    }


def _scratch_buffers(adapters: Sequence[LoraAdapter], coverage: dict[str, list[int]]) -> dict:
    """One float32 buffer, sized for the largest module, that every module's analysis copy reuses."""
    largest = 0
    for key, owners in coverage.items():
        spec = adapters[owners[0]].modules[key]
        rank = sum(adapters[i].modules[key].rank for i in owners)
        largest = max(largest, rank * (spec.in_features + spec.out_features))
    return {torch.float32: torch.empty(largest, dtype=torch.float32)}
