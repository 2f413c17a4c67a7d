"""How each registered method merges one module: the torch side of the registry.

Kept apart from :mod:`hubmerge.methods` so that reading the registry (``--help``,
argument errors, the Space's dropdown) does not import torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from . import MethodParams
from .dense import dare, disjoint_merge, magnitude_trim, weighted_sum
from .exact import concat_factors
from .lowrank import LowRank, dense_to_lowrank, truncate

__all__ = ["ModuleInput"]


@dataclass
class ModuleInput:
    """One module's inputs: the factors of the adapters that adapt it, their weights and scales."""

    key: str
    factors: list[tuple[torch.Tensor, torch.Tensor]]
    weights: list[float]
    scales: list[float]
    concat: tuple[torch.Tensor, torch.Tensor] | None = None  # [wᵢsᵢAᵢ], [Bᵢ], when already built
    out_dtype: torch.dtype | None = None  # the result's dtype, where a method can build it directly

    @property
    def work_dtype(self) -> torch.dtype:
        return torch.float64 if any(a.dtype == torch.float64 for a, _ in self.factors) else torch.float32

    def dense_deltas(self) -> list[torch.Tensor]:
        """ΔWᵢ = sᵢ·Bᵢ·Aᵢ, out×in, unweighted (the weights enter each method its own way)."""
        work = self.work_dtype
        return [s * (b.to(work) @ a.to(work)) for (a, b), s in zip(self.factors, self.scales)]

    def generator(self, seed: int) -> torch.Generator:
        # Derived from the seed and the module key, so a module's drops do not
        # depend on which other modules are merged or in what order.
        digest = hashlib.sha256(f"{seed}:{self.key}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _concat(module: ModuleInput) -> tuple[torch.Tensor, torch.Tensor]:
    if module.concat is not None:
        return module.concat
    coefficients = [w * s for w, s in zip(module.weights, module.scales)]
    return concat_factors(module.factors, coefficients, dtype=module.work_dtype)


def _sum(module: ModuleInput, params: MethodParams) -> LowRank:
    if module.out_dtype is None:
        a, b = _concat(module)
    else:  # straight from the inputs into the output dtype: no round trip through float32
        coefficients = [w * s for w, s in zip(module.weights, module.scales)]
        a, b = concat_factors(module.factors, coefficients, dtype=module.out_dtype)
    return LowRank(a, b, energy=0.0, kept=1.0)


def _svd(module: ModuleInput, params: MethodParams) -> LowRank:
    a, b = _concat(module)
    rank = params.rank or max(a.shape[0] for a, _ in module.factors)
    return truncate(a, b, rank)


def _dense_rank(module: ModuleInput, params: MethodParams) -> int:
    return params.rank or sum(a.shape[0] for a, _ in module.factors)


def _ties(module: ModuleInput, params: MethodParams) -> LowRank:
    trimmed = [magnitude_trim(d, params.density) for d in module.dense_deltas()]
    return dense_to_lowrank(disjoint_merge(trimmed, module.weights, params.majority_sign), _dense_rank(module, params))


def _dare_linear(module: ModuleInput, params: MethodParams) -> LowRank:
    generator = module.generator(params.seed)
    dropped = [dare(d, params.density, generator) for d in module.dense_deltas()]
    return dense_to_lowrank(weighted_sum(dropped, module.weights), _dense_rank(module, params))


def _dare_ties(module: ModuleInput, params: MethodParams) -> LowRank:
    generator = module.generator(params.seed)
    dropped = [dare(d, params.density, generator) for d in module.dense_deltas()]
    return dense_to_lowrank(disjoint_merge(dropped, module.weights, params.majority_sign), _dense_rank(module, params))


def _magnitude_prune(module: ModuleInput, params: MethodParams) -> LowRank:
    trimmed = [magnitude_trim(d, params.density) for d in module.dense_deltas()]
    return dense_to_lowrank(weighted_sum(trimmed, module.weights), _dense_rank(module, params))


COMBINE = {
    "sum": _sum,
    "svd": _svd,
    "ties": _ties,
    "dare_linear": _dare_linear,
    "dare_ties": _dare_ties,
    "magnitude_prune": _magnitude_prune,
}
