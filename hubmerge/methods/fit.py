"""A rank that fits a serving engine: the sum's true rank when it fits, a truncated SVD when it does not.

The exact sum has rank Σ rᵢ per module, but its *true* rank can be lower:
adapters that share A (or the same adapter given twice) span fewer
directions than they stack. The QR of the stacked factors and the SVD of the
small core (:func:`hubmerge.methods.lowrank.core_svd`) give the singular
values of B·A without forming it; the numerical rank counts those above
``‖B‖_F·‖A‖_F · max(in, out) · ε`` (the rule of ``torch.linalg.matrix_rank``, with
the factors' norms, a bound on σ_max, in place of σ_max so that terms that cancel
to rounding noise count as zero; ε of the working dtype), so what is dropped is
below the working precision.

- true rank ≤ the cap: the module stays exact; it is refactored at its true
  rank only when that is below its stacked rank.
- true rank > the cap: it is truncated to the cap by SVD (Eckart–Young, the
  best rank-K approximation), and the kept energy ‖B·A‖²/‖ΔW‖² is reported.

vLLM only starts with ``--max-lora-rank`` in :data:`VLLM_MAX_LORA_RANKS`
(default 16) and refuses an adapter whose ``r`` is above it, so
``fit="vllm=MAX"`` caps every module at MAX and names the smallest legal
``--max-lora-rank`` that holds the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lowrank import LowRank, core_svd
from .rank_limit import VLLM_DEFAULT_MAX_LORA_RANK, VLLM_MAX_LORA_RANKS, FitTarget, parse_fit, smallest_vllm_rank

__all__ = [
    "VLLM_DEFAULT_MAX_LORA_RANK",
    "VLLM_MAX_LORA_RANKS",
    "FitTarget",
    "ModuleFit",
    "apply_fit",
    "fit_module",
    "numerical_rank",
    "parse_fit",
    "smallest_vllm_rank",
    "summarize_fits",
]


def numerical_rank(s: torch.Tensor, shape: tuple[int, int], scale: float | None = None) -> int:
    """How many singular values ``s`` (descending) stand above the working precision.

    Args:
        s: the singular values of an out×in matrix, descending.
        shape: ``(out, in)`` of that matrix.
        scale: the size the rounding errors scale with; default ``s[0]``. For a
            product B·A pass ‖B‖_F·‖A‖_F (≥ σ_max): when the terms cancel, ``s[0]`` is
            itself rounding noise and must not set the bar.

    Returns:
        The count of values above ``scale · max(out, in) · ε`` (0 for a zero matrix).
    """
    if s.numel() == 0:
        return 0
    scale = max(float(s[0]), scale or 0.0)
    if scale <= 0:
        return 0
    tolerance = scale * max(shape) * torch.finfo(s.dtype).eps
    return int((s > tolerance).sum())


@dataclass(frozen=True)
class ModuleFit:
    """One module fitted to a cap.

    Attributes:
        result: the factors (the input's own when nothing changed), with the energy kept.
        stacked_rank: the rank the factors came in with.
        true_rank: the numerical rank of their product.
        truncated: the true rank was above the cap, so directions above the
            working precision were cut.
    """

    result: LowRank
    stacked_rank: int
    true_rank: int
    truncated: bool


def fit_module(a: torch.Tensor, b: torch.Tensor, cap: int) -> ModuleFit:
    """Fit ``b @ a`` to at most ``cap`` ranks: exact at its true rank if that fits, else its best rank-``cap`` SVD.

    Args:
        a: R×in and b: out×R, float32 or float64 (the product is never formed).
        cap: the largest rank allowed.

    Returns:
        A :class:`ModuleFit`. Its ``result.kept`` is ‖result‖²/‖b@a‖² and
        ``result.energy`` is ‖b@a‖²; when the stacked rank is already the true rank
        and fits, the factors are returned unchanged (bit for bit).

    Example:
        >>> fit = fit_module(torch.cat([a1, a1]), torch.cat([b1, b2], dim=1), cap=4)  # shared A: rank 4, not 8
        >>> fit.true_rank, fit.truncated
        (4, False)
    """
    q_b, u, s, vh, q_a = core_svd(a, b)
    stacked = a.shape[0]
    true_rank = numerical_rank(s, (b.shape[0], a.shape[1]), scale=float(a.norm()) * float(b.norm()))
    energy = float((s.double() ** 2).sum())
    if true_rank == stacked and stacked <= cap:
        return ModuleFit(LowRank(a, b, energy, 1.0), stacked, true_rank, False)
    k = max(1, min(true_rank, cap))  # an all-zero module keeps one (zero) rank: PEFT needs r ≥ 1
    kept = float((s[:k].double() ** 2).sum()) / energy if energy > 0 else 1.0
    root = s[:k].sqrt()
    new_b = (q_b @ u[:, :k]) * root
    new_a = root[:, None] * (vh[:k] @ q_a.T)
    return ModuleFit(
        LowRank(new_a.to(a.dtype).contiguous(), new_b.to(a.dtype).contiguous(), energy, min(kept, 1.0)),
        stacked,
        true_rank,
        true_rank > cap,
    )


def apply_fit(merged: LowRank, cap: int, *, stacked: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Fit one module's merge result to ``cap``, keeping its kept-energy account.

    Args:
        merged: a method's result for the module.
        cap: the largest rank allowed.
        stacked: the float32/float64 factors ``merged`` was built from, for the exact
            methods (whose ``merged`` may already be rounded to the output dtype); the
            fit works on these, and ``merged`` is returned as it is when nothing changes.

    Returns:
        ``(result, fit)``: the fitted :class:`LowRank` (``energy`` the method's target's,
        ``kept`` the share of it kept after both the method and the cap) and the
        :class:`ModuleFit`.
    """
    a, b = stacked if stacked is not None else (merged.a, merged.b)
    fit = fit_module(a, b, cap)
    energy = merged.energy if merged.energy > 0 else fit.result.energy
    if fit.result.a is a:  # nothing changed: keep the method's own factors, bit for bit
        return LowRank(merged.a, merged.b, energy, merged.kept), fit
    kept = merged.kept * fit.result.kept if merged.energy > 0 else fit.result.kept
    return LowRank(fit.result.a, fit.result.b, energy, kept), fit


def summarize_fits(fits: dict[str, ModuleFit], target: FitTarget | None, stored_rank: int) -> dict | None:
    """The report's ``serving.rank_fit``: the cap, what it did per module, and the vLLM rank to serve with.

    Returns:
        ``None`` without a target; else ``max_rank``, ``engine``, ``engine_max``,
        ``rank`` (the stored rank), ``vllm_max_lora_rank`` (smallest legal ≥ ``rank``),
        ``exact`` (no module truncated), ``modules``, ``reduced`` (refactored at a
        true rank below the stacked one), ``truncated``, ``kept_energy`` (overall share of
        ‖ΔW‖² over the fitted modules) and ``per_module`` (stacked rank, true rank, rank, kept).
    """
    if target is None:
        return None
    total = sum(f.result.energy for f in fits.values())
    kept = sum(f.result.energy * f.result.kept for f in fits.values())
    return {
        "max_rank": target.max_rank,
        "engine": target.engine,
        "engine_max": target.engine_max,
        "rank": stored_rank,
        "vllm_max_lora_rank": smallest_vllm_rank(stored_rank),
        "exact": not any(f.truncated for f in fits.values()),
        "modules": len(fits),
        "reduced": sum(1 for f in fits.values() if not f.truncated and f.true_rank < f.stacked_rank),
        "truncated": sum(1 for f in fits.values() if f.truncated),
        "kept_energy": kept / total if total > 0 else 1.0,
        "per_module": {
            key: {
                "stacked_rank": f.stacked_rank,
                "true_rank": f.true_rank,
                "rank": f.result.a.shape[0],
                "kept": f.result.kept,
            }
            for key, f in fits.items()
        },
    }
