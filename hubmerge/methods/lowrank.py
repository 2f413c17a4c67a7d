"""Low-rank algebra on LoRA factors: exact truncated SVD of B·A without forming it.

For B (out×R) and A (R×in), reduced QR gives B = Q_b R_b and Aᵀ = Q_a R_a, so
B·A = Q_b (R_b R_aᵀ) Q_aᵀ and the SVD of the small R×R core gives the SVD of
B·A: O((out + in)·R²) instead of O(out·in·min(out, in)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LowRank", "core_svd", "dense_to_lowrank", "truncate"]

# Dense matrices with both sides above this use a randomized SVD (torch.svd_lowrank);
# the kept-energy figure is still computed exactly.
EXACT_SVD_LIMIT = 1024


@dataclass
class LowRank:
    """A rank-k factorisation B·A of a module's delta, with the energy it keeps.

    Attributes:
        a: k×in, b: out×k (float32 or float64; the exact sum may come in the output dtype).
        energy: ‖target‖²_F, the squared norm of what was approximated.
        kept: ‖B·A‖²_F / ‖target‖²_F ∈ [0, 1] (1 when nothing was cut).
    """

    a: torch.Tensor
    b: torch.Tensor
    energy: float
    kept: float


def truncate(a: torch.Tensor, b: torch.Tensor, rank: int | None) -> LowRank:
    """Best rank-``rank`` approximation of ``b @ a`` (Eckart–Young), from the factors alone.

    Args:
        a: R×in, b: out×R, in float32 or float64.
        rank: target rank; ``None`` or ≥ the true rank keeps everything.

    Returns:
        A :class:`LowRank` whose ``b @ a`` is the truncated SVD of ``b @ a``;
        the singular values are split evenly (√σ) between the two factors.
    """
    work = a.dtype
    q_b, u, s, vh, q_a = core_svd(a, b)
    energy = float((s.double() ** 2).sum())
    k = s.numel() if rank is None else min(rank, s.numel())
    kept = float((s[:k].double() ** 2).sum()) / energy if energy > 0 else 1.0
    root = s[:k].sqrt()
    new_b = (q_b @ u[:, :k]) * root
    new_a = root[:, None] * (vh[:k] @ q_a.T)
    return LowRank(new_a.to(work).contiguous(), new_b.to(work).contiguous(), energy, kept)


def core_svd(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The SVD of ``b @ a`` from its factors: ``b @ a == (q_b @ u) · diag(s) · (vh @ q_a.T)``.

    Args:
        a: R×in, b: out×R, in float32 or float64.

    Returns:
        ``(q_b, u, s, vh, q_a)``; ``s`` holds the min(R, in, out) singular values in
        descending order, the true singular values of the out×in product.
    """
    q_b, r_b = torch.linalg.qr(b)
    q_a, r_a = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    return q_b, u, s, vh, q_a


def dense_to_lowrank(delta: torch.Tensor, rank: int) -> LowRank:
    """Rank-``rank`` SVD factorisation of a dense out×in matrix.

    Exact (``torch.linalg.svd``) for small matrices; randomized
    (``torch.svd_lowrank``, 4 power iterations) when both sides exceed
    :data:`EXACT_SVD_LIMIT`, which is near-optimal and far cheaper.
    """
    energy = float((delta.double() ** 2).sum())
    k = min(rank, *delta.shape)
    if min(delta.shape) > EXACT_SVD_LIMIT:
        u, s, v = torch.svd_lowrank(delta, q=min(k + 8, min(delta.shape)), niter=4)
        u, s, vh = u[:, :k], s[:k], v[:, :k].T
    else:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        u, s, vh = u[:, :k], s[:k], vh[:k]
    root = s.sqrt()
    b = u * root
    a = root[:, None] * vh
    # U and V have orthonormal columns, so ‖B·A‖² is exactly Σσ² of the kept values.
    kept = float((s.double() ** 2).sum()) / energy if energy > 0 else 1.0
    return LowRank(a.contiguous(), b.contiguous(), energy, min(kept, 1.0))
