"""Element-wise merges of dense per-module deltas: TIES, DARE, magnitude pruning.

These act on ΔWᵢ = sᵢ·Bᵢ·Aᵢ (out×in) one module at a time, with the same
semantics as PEFT's ``merge_utils``: trim by magnitude or drop at random (and
rescale by 1/density), elect a sign per entry from the unweighted trimmed
deltas, and merge the entries that agree with it. They are applied to the
dense deltas, never to A and B separately, which would add cross terms BᵢAⱼ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["dare", "disjoint_merge", "magnitude_trim", "weighted_sum"]


def magnitude_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density · numel)`` entries of largest magnitude, zero the rest."""
    if density >= 1:
        return delta
    k = int(density * delta.numel())
    flat = delta.reshape(-1)
    mask = torch.zeros_like(flat)
    if k > 0:
        mask[torch.topk(flat.abs(), k=k, largest=True).indices] = 1
    return (flat * mask).reshape(delta.shape)


def dare(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability 1 − density and rescale the survivors by 1/density."""
    if density >= 1:
        return delta
    keep = torch.bernoulli(torch.full_like(delta, density), generator=generator)
    return delta * keep / density


def weighted_sum(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ wᵢ·ΔWᵢ."""
    total = torch.zeros_like(deltas[0])
    for delta, weight in zip(deltas, weights):
        total.add_(delta, alpha=weight)
    return total


def disjoint_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float], majority_sign: str) -> torch.Tensor:
    """TIES' elect-and-merge: per entry, the mean of the weighted values whose sign
    agrees with the elected sign.

    The sign is elected from the unweighted deltas: ``"total"`` takes the sign
    of their sum, ``"frequency"`` the more frequent sign (ties go to +).
    """
    stacked = torch.stack(list(deltas))
    signs = stacked.sign()
    votes = stacked.sum(dim=0) if majority_sign == "total" else signs.sum(dim=0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)
    agree = signs == elected
    weighted = stacked * torch.tensor(weights, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
