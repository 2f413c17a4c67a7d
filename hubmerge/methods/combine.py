"""How each registered method merges one module.

The registry (:mod:`hubmerge.methods`) refers to these functions directly. Reading
the registry (``--help``, argument errors, the Space's dropdown) must not import
torch, so this module imports it, and the kernels, only inside the functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from . import MethodParams
    from .lowrank import LowRank

__all__ = [
    "ModuleInput",
    "dare_linear",
    "dare_ties",
    "exact_sum",
    "magnitude_prune",
    "svd_truncation",
    "ties",
]


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
        import torch

        return torch.float64 if any(a.dtype == torch.float64 for a, _ in self.factors) else torch.float32

    def dense_deltas(self) -> list[torch.Tensor]:
        """ΔWᵢ = sᵢ·Bᵢ·Aᵢ, out×in, unweighted (the weights enter each method its own way)."""
        work = self.work_dtype
        return [s * (b.to(work) @ a.to(work)) for (a, b), s in zip(self.factors, self.scales)]

    def generator(self, seed: int) -> torch.Generator:
        import torch

        # Derived from the seed and the module key, so a module's drops do not
        # depend on which other modules are merged or in what order.
        digest = hashlib.sha256(f"{seed}:{self.key}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _concat(module: ModuleInput) -> tuple[torch.Tensor, torch.Tensor]:
    from .exact import concat_factors

    if module.concat is not None:
        return module.concat
    coefficients = [w * s for w, s in zip(module.weights, module.scales)]
    return concat_factors(module.factors, coefficients, dtype=module.work_dtype)


def exact_sum(module: ModuleInput, params: MethodParams) -> LowRank:
    """Σ wᵢ·sᵢ·Bᵢ·Aᵢ by rank concatenation: exact."""
    import torch

    from .exact import concat_factors
    from .lowrank import LowRank

    out = module.out_dtype
    if out is None:
        a, b = _concat(module)
    elif module.concat is not None and not (out == torch.float64 and module.concat[0].dtype != torch.float64):
        # The analysis already scaled the A's in the work dtype, which is what concat_factors would do on
        # its way to ``out``: rounding that copy gives the same values, without scaling the inputs again.
        a = module.concat[0].to(out, copy=True)  # a copy: the analysis' buffer is reused for the next module
        if all(b.dtype == out for _, b in module.factors):
            b = torch.cat([b for _, b in module.factors], dim=1)
        else:
            b = module.concat[1].to(out, copy=True)
    else:  # straight from the inputs into the output dtype: no round trip through float32
        coefficients = [w * s for w, s in zip(module.weights, module.scales)]
        a, b = concat_factors(module.factors, coefficients, dtype=out)
    return LowRank(a, b, energy=0.0, kept=1.0)


def svd_truncation(module: ModuleInput, params: MethodParams) -> LowRank:
    """The exact sum, truncated to ``rank`` by the QR of its stacked factors."""
    from .lowrank import truncate

    a, b = _concat(module)
    rank = params.rank or max(a.shape[0] for a, _ in module.factors)
    return truncate(a, b, rank)


def _dense_rank(module: ModuleInput, params: MethodParams) -> int:
    return params.rank or sum(a.shape[0] for a, _ in module.factors)


def ties(module: ModuleInput, params: MethodParams) -> LowRank:
    """TIES on the dense deltas, then SVD to ``rank``."""
    from .dense import disjoint_merge, magnitude_trim
    from .lowrank import dense_to_lowrank

    trimmed = [magnitude_trim(d, params.density) for d in module.dense_deltas()]
    return dense_to_lowrank(disjoint_merge(trimmed, module.weights, params.majority_sign), _dense_rank(module, params))


def dare_linear(module: ModuleInput, params: MethodParams) -> LowRank:
    """DARE drops and rescales, weighted sum, then SVD."""
    from .dense import dare, weighted_sum
    from .lowrank import dense_to_lowrank

    generator = module.generator(params.seed)
    dropped = [dare(d, params.density, generator) for d in module.dense_deltas()]
    return dense_to_lowrank(weighted_sum(dropped, module.weights), _dense_rank(module, params))


def dare_ties(module: ModuleInput, params: MethodParams) -> LowRank:
    """DARE drops and rescales, TIES merge, then SVD."""
    from .dense import dare, disjoint_merge
    from .lowrank import dense_to_lowrank

    generator = module.generator(params.seed)
    dropped = [dare(d, params.density, generator) for d in module.dense_deltas()]
    return dense_to_lowrank(disjoint_merge(dropped, module.weights, params.majority_sign), _dense_rank(module, params))


def magnitude_prune(module: ModuleInput, params: MethodParams) -> LowRank:
    """Magnitude trim, weighted sum, then SVD."""
    from .dense import magnitude_trim, weighted_sum
    from .lowrank import dense_to_lowrank

    trimmed = [magnitude_trim(d, params.density) for d in module.dense_deltas()]
    return dense_to_lowrank(weighted_sum(trimmed, module.weights), _dense_rank(module, params))
