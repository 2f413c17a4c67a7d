"""The exact sum, by rank concatenation.

For one module with factors (Aᵢ, Bᵢ) and coefficients cᵢ = wᵢ·sᵢ::

    Σ cᵢ·Bᵢ·Aᵢ = [B₁ B₂ … Bₙ] · [c₁A₁; c₂A₂; …; cₙAₙ]

so the merged module has rank R = Σ rᵢ and scale 1 (lora_alpha = r = R,
no rsLoRA; the config is :func:`hubmerge.config.build_config`). Nothing here
touches files or the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["concat_factors", "pad_rank"]


def concat_factors(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor]],
    coefficients: Sequence[float],
    *,
    dtype: torch.dtype,
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the A's (with cᵢ folded in) and concatenate the B's.

    Args:
        factors: ``(A, B)`` per contributing adapter, A: rᵢ×in, B: out×rᵢ.
        coefficients: cᵢ = wᵢ·sᵢ per adapter.
        dtype: dtype of the result. The scaling is done in float32 (float64
            if the inputs are float64) before the single rounding to ``dtype``.
        scratch: a 1-D ``dtype`` tensor of at least R·(in + out) elements to build the
            result in (it is overwritten and the result is a view of it), when the
            result is a temporary: reusing one buffer for every module keeps the
            heap from fragmenting between the results that are kept.

    Returns:
        ``(A, B)`` with ``B @ A == Σ cᵢ Bᵢ Aᵢ`` (up to that rounding).

    Example:
        >>> a, b = concat_factors([(A1, B1), (A2, B2)], [2.0, -0.5], dtype=torch.float32)
        >>> torch.allclose(b @ a, 2 * B1 @ A1 - 0.5 * B2 @ A2)
        True
    """
    dtypes = {t.dtype for pair in factors for t in pair}
    if dtypes == {dtype}:
        # One dtype throughout: scale in place of the copy. torch computes a bf16/fp16
        # product in float32 and rounds it once, so the values equal the path below.
        a = torch.cat([a * c for (a, _), c in zip(factors, coefficients)], dim=0)
        return a, torch.cat([b for _, b in factors], dim=1)
    # float64 when asked for or given: scaling in float32 first would overflow or round what float64 holds.
    work = torch.float64 if torch.float64 in dtypes or dtype == torch.float64 else torch.float32
    # Preallocated: each factor is converted and scaled in place, no per-factor temporaries.
    ranks = [a.shape[0] for a, _ in factors]
    total, d_in, d_out = sum(ranks), factors[0][0].shape[1], factors[0][1].shape[0]
    if scratch is not None and work == dtype and scratch.dtype == dtype and scratch.numel() >= total * (d_in + d_out):
        a_out = scratch[: total * d_in].view(total, d_in)
        b_out = scratch[total * d_in : total * (d_in + d_out)].view(d_out, total)
    else:
        a_out, b_out = torch.empty(total, d_in, dtype=work), torch.empty(d_out, total, dtype=work)
    start = 0
    for ((a, b), c), r in zip(zip(factors, coefficients), ranks):
        a_out[start : start + r].copy_(a).mul_(c)
        b_out[:, start : start + r].copy_(b)
        start += r
    return a_out.to(dtype), b_out.to(dtype)


def pad_rank(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow (A, B) to ``rank`` with zero rows of A and zero columns of B: B·A is unchanged."""
    extra = rank - a.shape[0]
    if extra <= 0:
        return a, b
    return (
        torch.cat([a, a.new_zeros(extra, a.shape[1])], dim=0),
        torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1),
    )
