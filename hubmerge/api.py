"""The Python API: load → check → merge and analyse, in one streaming pass.

:func:`merge` is what the CLI and the Space call. It loads every source,
checks them all (raising once with every problem), then walks the union of
adapted modules one at a time (:func:`_merge_module`): each module's factors
are read, compared in rank space and concatenated, then dropped, so the inputs
are never all in memory next to the output. The caller's objects are never
changed: display names and weights belong to the merge.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import torch
from huggingface_hub.utils import tqdm

from .adapter import KEY_PREFIX, LoraAdapter
from .compat import Compatibility, check_compatibility
from .config import build_config
from .conv import layer_name, unflatten
from .errors import IncompatibleAdaptersError, InvalidArgumentError, Problem
from .experts import output_notice, place_parameters
from .interference import ModuleGram, SimilarityAccumulator, Thresholds, concat_gram, round_float
from .limits import DEFAULT_MAX_ADAPTERS, DEFAULT_MAX_DOWNLOAD_BYTES
from .loading import SourceLike, display_names, load_adapters, resolve_base_models
from .methods import MergeMethod, MethodParams, get_method
from .methods.combine import ModuleInput
from .methods.exact import concat_factors, pad_rank
from .methods.fit import ModuleFit, apply_fit, parse_fit, summarize_fits
from .notice import Notice
from .options import check_weights, inputs_dtype, parse_dtype
from .peft_releases import loading_release, plain_target_names
from .provenance import same_files
from .recipe import Recipe
from .report import (
    KeptEnergy,
    MergeReport,
    MethodSummary,
    OutputSummary,
    dtype_name,
)
from .result import MergeResult
from .serving import serving_facts, serving_section
from .summary import build_report, recipe_source

if TYPE_CHECKING:
    from .evaluation.runner import EvalDataLike  # the evaluation (and its imports) only when asked for

__all__ = ["load_adapters", "merge", "similarity"]

logger = logging.getLogger(__name__)


# A type checker reads only these: each takes every keyword merge() takes, the last a report_only held in a variable.
@overload
def merge(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = ...,
    method: str = ...,
    rank: int | None = ...,
    density: float = ...,
    majority_sign: str = ...,
    seed: int = ...,
    dtype: str | torch.dtype | None = ...,
    allow_pickle: bool = ...,
    allow_base_mismatch: bool = ...,
    report_only: Literal[False] = ...,
    thresholds: Thresholds | None = ...,
    token: str | bool | None = ...,
    resolve_base_model: bool | None = ...,
    max_adapters: int | None = ...,
    max_download_bytes: int | None = ...,
    max_rank: int | None = ...,
    fit: str | None = ...,
    eval_data: EvalDataLike | None = ...,
    base_model: str | Path | None = ...,
    eval_samples: int = ...,
    eval_max_length: int = ...,
    eval_split: str = ...,
    eval_batch_size: int = ...,
    device: str = ...,
    tune_weights: bool = ...,
    tune_samples: int | None = ...,
    tune_steps: int | None = ...,
) -> MergeResult: ...


@overload
def merge(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = ...,
    method: str = ...,
    rank: int | None = ...,
    density: float = ...,
    majority_sign: str = ...,
    seed: int = ...,
    dtype: str | torch.dtype | None = ...,
    allow_pickle: bool = ...,
    allow_base_mismatch: bool = ...,
    report_only: Literal[True],
    thresholds: Thresholds | None = ...,
    token: str | bool | None = ...,
    resolve_base_model: bool | None = ...,
    max_adapters: int | None = ...,
    max_download_bytes: int | None = ...,
    max_rank: int | None = ...,
    fit: str | None = ...,
    eval_data: EvalDataLike | None = ...,
    base_model: str | Path | None = ...,
    eval_samples: int = ...,
    eval_max_length: int = ...,
    eval_split: str = ...,
    eval_batch_size: int = ...,
    device: str = ...,
    tune_weights: bool = ...,
    tune_samples: int | None = ...,
    tune_steps: int | None = ...,
) -> MergeReport: ...


@overload
def merge(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = ...,
    method: str = ...,
    rank: int | None = ...,
    density: float = ...,
    majority_sign: str = ...,
    seed: int = ...,
    dtype: str | torch.dtype | None = ...,
    allow_pickle: bool = ...,
    allow_base_mismatch: bool = ...,
    report_only: bool = ...,
    thresholds: Thresholds | None = ...,
    token: str | bool | None = ...,
    resolve_base_model: bool | None = ...,
    max_adapters: int | None = ...,
    max_download_bytes: int | None = ...,
    max_rank: int | None = ...,
    fit: str | None = ...,
    eval_data: EvalDataLike | None = ...,
    base_model: str | Path | None = ...,
    eval_samples: int = ...,
    eval_max_length: int = ...,
    eval_split: str = ...,
    eval_batch_size: int = ...,
    device: str = ...,
    tune_weights: bool = ...,
    tune_samples: int | None = ...,
    tune_steps: int | None = ...,
) -> MergeResult | MergeReport: ...


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
    eval_data: EvalDataLike | None = None,
    base_model: str | Path | None = None,
    eval_samples: int = 32,
    eval_max_length: int = 512,
    eval_split: str = "test",
    eval_batch_size: int = 8,
    device: str = "auto",
    tune_weights: bool = False,
    tune_samples: int | None = None,
    tune_steps: int | None = None,
    max_rank: int | None = None,
    fit: str | None = None,
) -> MergeResult | MergeReport:
    """Merge LoRA adapters exactly (Σ wᵢ·sᵢ·Bᵢ·Aᵢ) and measure their interference.

    Args:
        sources: the adapters: directories, ``user/repo[/sub][@rev]`` references,
            :class:`Source` objects or loaded :class:`LoraAdapter` objects (left unchanged).
            One adapter is allowed (it rescales it by its weight).
        weights: one weight per source, default 1 each; negative weights subtract.
        method: a name from :data:`hubmerge.METHODS` (default ``"sum"``, exact).
        rank, density, majority_sign, seed: the method's parameters (see
            :class:`hubmerge.methods.MethodParams`); ignored by methods that don't use them.
        dtype: output dtype (``"float32"``, ``"bfloat16"``, …); default the inputs'.
        allow_pickle: accept ``adapter_model.bin`` sources (loaded with ``weights_only=True``).
        allow_base_mismatch: merge adapters that name different base models (a warning instead).
        report_only: only analyse: return the :class:`MergeReport`, build no tensors.
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
        max_rank: cap every module's rank at this; a module whose true rank fits stays
            exact (refactored at its true rank when that is below its stacked rank), one
            above is truncated by SVD and its kept energy reported.
        fit: ``"vllm"`` or ``"vllm=MAX"``: cap at MAX (default 16, a legal vLLM
            ``--max-lora-rank``) and name the smallest legal ``--max-lora-rank`` that holds
            the result; see :mod:`hubmerge.methods.fit`.

    Returns:
        A :class:`MergeResult` (``result.save_pretrained(dir)`` writes it), or with
        ``report_only`` the :class:`MergeReport` alone. With ``eval_data``, ``report.evaluation``
        holds the measurements.

    Raises:
        SourceError, AdapterError, HubError: a source cannot be read or fetched.
        IncompatibleAdaptersError: the adapters cannot be summed exactly (every problem listed).
        InvalidArgumentError: bad weights, dtype or method parameters, or weights the dtype cannot hold.

    Example:
        >>> result = merge(["examples/adapters/math", "examples/adapters/medicine"], weights=[1.0, 0.5])
        >>> result.report.similarity.rms_cosine[0][1]
        0.004547
        >>> folder = result.save_pretrained("merged")
    """
    if eval_data is not None or tune_weights:
        if eval_data is None:
            raise InvalidArgumentError("tune_weights needs eval_data: the weights are tuned on it")
        from .evaluation.runner import merge_with_evaluation

        options = dict(
            weights=weights, method=method, rank=rank, density=density, majority_sign=majority_sign, seed=seed,
            dtype=dtype, allow_pickle=allow_pickle, allow_base_mismatch=allow_base_mismatch, report_only=report_only,
            thresholds=thresholds, token=token, resolve_base_model=resolve_base_model, max_adapters=max_adapters,
            max_download_bytes=max_download_bytes, max_rank=max_rank, fit=fit,
        )  # fmt: skip
        return merge_with_evaluation(
            merge, sources, eval_data=eval_data, merge_options=options, base_model=base_model, samples=eval_samples,
            max_length=eval_max_length, split=eval_split, device=device, batch_size=eval_batch_size, tune=tune_weights,
            tune_samples=tune_samples, tune_steps=tune_steps,
        )  # fmt: skip
    # Bad options fail before any download.
    chosen = get_method(method)
    params = MethodParams(rank=rank, density=density, majority_sign=majority_sign, seed=seed).validate()
    target = parse_fit(fit, max_rank)
    user_weights = check_weights(weights, len(sources))
    coefficients = [w * chosen.weight_scale(len(sources)) for w in user_weights]
    out_dtype = parse_dtype(dtype)
    adapters = load_adapters(
        sources,
        token=token,
        allow_pickle=allow_pickle,
        max_adapters=max_adapters,
        max_download_bytes=max_download_bytes,
    )
    for adapter in adapters:
        adapter.hash_files()  # local sources' digests (for the recipe and card), beside the merge
    names = display_names([a.name for a in adapters])
    dtype_notes: list[Notice] = []
    if out_dtype is None:
        out_dtype, dtype_notes = inputs_dtype(adapters, names)
    canonical, model_types, base_notes = resolve_base_models(adapters, resolve_base_model, token, names)
    compat = check_compatibility(
        adapters,
        allow_base_mismatch=allow_base_mismatch,
        canonical=canonical,
        model_types=model_types,
        scan_factors=False,
        names=names,
    )

    accumulator = SimilarityAccumulator(names, thresholds or Thresholds(), weights=coefficients)
    modules: dict[str, _MergedModule] = {}
    broken: list[Problem] = []  # NaN/Inf found during the pass: refused before anything is written
    scratch = _scratch_buffer(adapters, compat)
    cap = target.max_rank if target else None
    items = tqdm(compat.coverage.items(), desc="merging modules", unit="module", total=len(compat.coverage))
    for key, owners in items:
        stats, merged = _merge_module(
            adapters, key, owners, coefficients, chosen, params, out_dtype, scratch,
            compat=compat, report_only=report_only, cap=cap,
        )  # fmt: skip
        if isinstance(stats, list):
            broken.extend(stats)
            continue
        accumulator.add(key, stats)
        if merged is not None:
            modules[key] = merged
    if broken:
        raise IncompatibleAdaptersError(broken)
    origins = [a.origin for a in adapters]
    same = [
        (i, j) for i in range(len(origins)) for j in range(i + 1, len(origins)) if same_files(origins[i], origins[j])
    ]
    similarity_report, similarity_notes = accumulator.summary(same_files=same)
    zero = [
        Notice("zero_weight", f"{name} has weight 0: it adds nothing to the merge, and its cosines are undefined")
        for name, weight in zip(names, user_weights)
        if weight == 0
    ]
    used = {name: getattr(params, name) for name in chosen.parameters}
    exact = chosen.exact or (chosen.exact_if_untruncated and all(m.method_kept == 1.0 for m in modules.values()))
    fits = {key: m.fit for key, m in modules.items() if m.fit is not None}
    exact = exact and not any(f.truncated for f in fits.values())
    if report_only:
        # Nothing was built: only a method that is always exact, with no rank cap, is known to be.
        exact = chosen.exact and cap is None
    ranks = {key: m.a.shape[0] for key, m in modules.items()}
    parameters = sorted({m.parameter for m in modules.values() if m.parameter is not None})
    report = build_report(
        adapters, names, coefficients, compat, canonical, similarity_report,
        [*compat.warnings, *base_notes, *dtype_notes, *zero, *similarity_notes, *output_notice(parameters)],
        method=MethodSummary(
            name=chosen.name, description=chosen.description, paper=chosen.paper, exact=exact, parameters=used
        ),
        exact=exact,
        output=None if report_only else OutputSummary.of(ranks, out_dtype),
        kept_energy=None if (chosen.exact and not fits) or report_only else _kept_energy(modules),
    )  # fmt: skip
    for note in report.warnings:
        logger.warning(note.message)
    if report_only:  # nothing was fitted; the rank in the facts is the stacked one, an upper bound
        facts = serving_facts(
            report, {}, full_weights=[], model_type=_one_model_type(model_types),
            source_configs=[a.config for a in adapters],
        )  # fmt: skip
        return replace(report, serving=serving_section(facts))
    tensors = _output_tensors(adapters, compat, modules)
    tasks = {a.config.task_type for a in adapters}
    module_keys = [key for key, m in modules.items() if m.parameter is None]
    config = build_config(
        module_keys,
        max(ranks.values(), default=1),
        base_model_name_or_path=compat.base_model,
        revision=compat.revision,
        task_type=tasks.pop() if len(tasks) == 1 else None,
        fan_in_fan_out=adapters[0].config.fan_in_fan_out,
        modules_to_save=list(compat.saved_modules),
        target_names=plain_target_names([a.config for a in adapters], module_keys),
        target_parameters=parameters,
    )
    recipe = Recipe(
        sources=tuple(recipe_source(a, w) for a, w in zip(adapters, user_weights)),
        method=chosen.name,
        method_parameters=used,
        dtype=dtype_name(out_dtype),
        needs_allow_pickle=allow_pickle,
        needs_allow_base_mismatch=allow_base_mismatch,
        max_rank=max_rank,
        fit=fit,
    )
    layers = {layer_name(m.kernel) for m in modules.values() if m.kernel is not None}
    if report.output is not None:
        report = replace(report, output=replace(report.output, min_peft=loading_release(config, layers)))
    facts = serving_facts(
        report, config, full_weights=list(compat.base_layers), model_type=_one_model_type(model_types)
    )
    rank_fit = summarize_fits(fits, target, max(ranks.values(), default=1))
    report = replace(report, serving=serving_section(facts, rank_fit=rank_fit))
    return MergeResult(config=config, tensors=tensors, report=report, recipe=recipe)


def _one_model_type(model_types: Mapping[str, str]) -> str | None:
    """The base's ``model_type`` where the Hub told one (the modules an engine applies depend on it)."""
    types = set(model_types.values())
    return types.pop() if len(types) == 1 else None


def similarity(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = None,
    allow_pickle: bool = False,
    allow_base_mismatch: bool = False,
    thresholds: Thresholds | None = None,
    token: str | bool | None = None,
) -> MergeReport:
    """The interference analysis alone: ``merge(..., report_only=True)``.

    Returns:
        The :class:`MergeReport` without output; ``report.similarity`` holds ``rms_cosine``,
        ``mean_cosine``, ``norm_weighted_cosine``, ``a_overlap`` (N×N), ``shared_modules``,
        ``interference_ratio`` and ``per_module``.
    """
    return merge(
        sources,
        weights=weights,
        allow_pickle=allow_pickle,
        allow_base_mismatch=allow_base_mismatch,
        report_only=True,
        thresholds=thresholds,
        token=token,
    )


@dataclass(frozen=True)
class _MergedModule:
    a: torch.Tensor
    b: torch.Tensor
    kind: str
    energy: float  # ‖ΔW‖² of the method's dense result (truncating methods, or any under a rank cap)
    kept: float  # the share of it the stored factors keep
    method_kept: float = 1.0  # the share the method itself kept, before any rank cap
    fit: ModuleFit | None = None  # how the rank cap fitted this module
    parameter: str | None = None  # a parameter LoRA (hubmerge.experts): its key, and which expert
    expert: int | None = None
    kernel: tuple[int, ...] | None = None  # a convolution LoRA: lora_A's shape after the rank


def _merge_module(
    adapters: Sequence[LoraAdapter],
    key: str,
    owners: list[int],
    coefficients: Sequence[float],
    method: MergeMethod,
    params: MethodParams,
    out_dtype: torch.dtype,
    scratch: torch.Tensor,
    *,
    compat: Compatibility,
    report_only: bool,
    cap: int | None = None,
) -> tuple[ModuleGram | list[Problem], _MergedModule | None]:
    """One module: read its factors, compare them in rank space, combine them with the method.

    ``compat`` reads each owner's factors under the merge's key (an adapter saved against an older
    checkpoint layout names the module differently, or holds it as per-expert LoRAs).

    Returns the module's statistics (or, for NaN/Inf inputs, the problems) and its merged factors.
    """
    factors = [compat.factors(adapters[i], i, key) for i in owners]
    scales = [compat.scale(adapters[i], i, key) for i in owners]
    weights = [coefficients[i] for i in owners]
    ranks = [a.shape[0] for a, _ in factors]
    # One concatenation serves the analysis and the exact sum (float32, or float64 inputs' float64).
    work = torch.float64 if any(a.dtype == torch.float64 for a, _ in factors) else torch.float32
    scaled = [w * s for w, s in zip(weights, scales)]
    a_all, b_all = concat_factors(factors, scaled, dtype=work, scratch=scratch if work == torch.float32 else None)
    stats = concat_gram(a_all, b_all, ranks, owners, len(adapters))
    if not torch.isfinite(stats.gram).all():  # a NaN/Inf anywhere in a factor reaches its Gram diagonal
        problems = [
            Problem(text, code="nonfinite", source=adapters[i].source, module=key)
            for i in owners
            for text in compat.nonfinite(adapters[i], i, key)
        ]
        if problems:
            return problems, None
        # Finite inputs: the weights push the products past float32. float64 holds them.
        work = torch.float64
        a_all, b_all = concat_factors(factors, scaled, dtype=work)
        stats = concat_gram(a_all, b_all, ranks, owners, len(adapters))
        if not torch.isfinite(stats.gram).all():
            raise InvalidArgumentError(
                f"module {key!r}: the weights ({', '.join(f'{w:g}' for w in weights)}) scale its deltas past "
                "the range of float64",
                reason="weight_overflow",
                module=key,
            )
    if work == torch.float32 and _underflowed(stats, owners, factors, scaled):
        # A tiny weight (1e-30) squares past float32's smallest number: the delta would read as zero, its cosines
        # as undefined. float64 holds those squares.
        work = torch.float64
        a_all, b_all = concat_factors(factors, scaled, dtype=work)
        stats = concat_gram(a_all, b_all, ranks, owners, len(adapters))
    if report_only:
        return stats, None
    module = ModuleInput(key, factors, weights, scales, concat=(a_all, b_all), out_dtype=out_dtype)
    combined = method.combine(module, params)
    method_kept, fitted = combined.kept, None
    if cap is not None:  # the exact methods' stacked factors are the float32 concatenation
        combined, fitted = apply_fit(combined, cap, stacked=(a_all, b_all) if method.exact else None)
    a, b = combined.a.to(out_dtype).contiguous(), combined.b.to(out_dtype).contiguous()
    # A finite Gram bounds every entry (its diagonal sums their squares), so only a dtype narrower than the
    # work dtype can overflow here: float16, or anything but float64 after a float64 pass. (isfinite over every
    # factor of every module would cost more than the sum itself.)
    narrower = out_dtype == torch.float16 or (work == torch.float64 and out_dtype != torch.float64)
    if narrower and not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InvalidArgumentError(
            f"module {key!r}: after scaling by the weights its factors overflow {dtype_name(out_dtype)}",
            reason="dtype_overflow",
            module=key,
        )
    spec = compat.spec(adapters[owners[0]], owners[0], key)
    return stats, _MergedModule(
        a, b, spec.kind, combined.energy, combined.kept, method_kept, fitted, spec.parameter, spec.expert, spec.kernel
    )


def _underflowed(
    stats: ModuleGram, owners: list[int], factors: Sequence[tuple[torch.Tensor, torch.Tensor]], scaled: list[float]
) -> bool:
    """Whether a delta's squared norm fell below float32's normal range although neither its coefficient nor its
    factors are zero (a zero B, an untrained adapter, is a zero delta in any precision)."""
    diagonal = stats.gram.diagonal()
    if len(owners) < len(diagonal):
        diagonal = diagonal[owners]
    low = diagonal < torch.finfo(torch.float32).tiny
    if not bool(low.any()):  # the one check a module pays
        return False
    return any(
        flag and c != 0 and bool(a.any()) and bool(b.any()) for flag, (a, b), c in zip(low.tolist(), factors, scaled)
    )


def _output_tensors(
    adapters: Sequence[LoraAdapter], compat: Compatibility, modules: dict[str, _MergedModule]
) -> dict[str, torch.Tensor]:
    """PEFT's tensor names → the merged factors (one stored rank: see build_config) and carried-over weights."""
    stored_rank = max((m.a.shape[0] for m in modules.values()), default=1)
    tensors: dict[str, torch.Tensor] = {}
    parameters: dict[str, dict] = {}  # parameter key → expert → (A, B): PEFT's layout is built from all of them
    for key, merged in modules.items():
        if merged.parameter is not None:
            parameters.setdefault(merged.parameter, {})[merged.expert] = (merged.a, merged.b)
            continue
        a_name, b_name = (
            ("lora_embedding_A", "lora_embedding_B")
            if merged.kind == "embedding"
            else ("lora_A.weight", "lora_B.weight")
        )
        a, b = pad_rank(merged.a, merged.b, stored_rank)
        if merged.kernel is not None:
            a, b = unflatten(a, b, merged.kernel)
        tensors[f"{KEY_PREFIX}{key}.{a_name}"], tensors[f"{KEY_PREFIX}{key}.{b_name}"] = a, b
    tensors.update(
        place_parameters(parameters, compat.parameter_depths, stored_rank, KEY_PREFIX, compat.parameter_experts)
    )
    for owners in (compat.saved_modules, compat.base_layers):
        group = "saved_modules" if owners is compat.saved_modules else "base_layers"
        for key, owner in owners.items():
            own = compat.own_key(owner, key)
            for name in getattr(adapters[owner], group)[own]:
                # Written under the merge's layout: the rest of the name follows the module key.
                rest = name[len(KEY_PREFIX) + len(own) :]
                if group == "base_layers":
                    # A full embedding sits under the LoRA wrapper when the merge adapts that module (another
                    # adapter may have), beside it otherwise: PEFT loads `X.weight` into a wrapped X nowhere.
                    rest = ".base_layer.weight" if key in modules else ".weight"
                tensors[KEY_PREFIX + key + rest] = adapters[owner].tensor(name)
    return tensors


def _kept_energy(modules: dict[str, _MergedModule]) -> KeptEnergy:
    total = sum(m.energy for m in modules.values())
    overall = sum(m.energy * m.kept for m in modules.values()) / total if total > 0 else 1.0
    return KeptEnergy(overall=round_float(overall), per_module={key: round_float(m.kept) for key, m in modules.items()})


def _scratch_buffer(adapters: Sequence[LoraAdapter], compat: Compatibility) -> torch.Tensor:
    """One float32 buffer, sized for the largest module, that every module's analysis copy reuses."""
    largest = 0
    for key, owners in compat.coverage.items():
        spec = compat.spec(adapters[owners[0]], owners[0], key)
        rank = sum(compat.spec(adapters[i], i, key).rank for i in owners)
        largest = max(largest, rank * (spec.in_features + spec.out_features))
    return torch.empty(largest, dtype=torch.float32)
