"""Convolution LoRA: PEFT's ``lora_A`` is a convolution with the layer's kernel, ``lora_B`` a 1×1 one.

For ``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` PEFT stores ``lora_A.weight`` as ``r × in × k…``
and ``lora_B.weight`` as ``out × r × 1…``, and its delta (``get_delta_weight``) is

    ΔW[o, i, k…] = s · Σ_r B[o, r] · A[r, i, k…]

that is B·A of the factors flattened to ``r × (in·k…)`` and ``out × r``. Rank
concatenation sums it exactly (A stacked along its output channels, B along its input
channels), and the similarity analysis compares the flattened kernels. A grouped
convolution (``groups`` > 1) has a grouped ``lora_B`` (``out × r/groups × 1…``): its
delta is not one B·A, and PEFT cannot merge it either, so it is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["conv_problem", "flat_in_features", "layer_name", "unflatten"]


def conv_problem(a_shape: Sequence[int], b_shape: Sequence[int]) -> str | None:
    """Why a convolution LoRA's factors are not one B·A, or ``None`` when they are (said after the B key)."""
    if any(size != 1 for size in b_shape[2:]):
        return f"has kernel {list(b_shape[2:])}; PEFT's convolution LoRA has a 1×1 lora_B"
    if b_shape[1] != a_shape[0]:
        groups = a_shape[0] // b_shape[1] if b_shape[1] and a_shape[0] % b_shape[1] == 0 else "?"
        return (
            f"is the LoRA of a grouped convolution (lora_B takes {b_shape[1]} of lora_A's {a_shape[0]} channels per "
            f"group, groups={groups}): its delta is not one B·A (PEFT cannot merge it either), so it is not summed"
        )
    return None


def flat_in_features(a_shape: Sequence[int]) -> int:
    """The input width of the flattened ``lora_A`` (in·k…)."""
    return math.prod(a_shape[1:])


def layer_name(kernel: Sequence[int]) -> str:
    """The torch layer a ``lora_A`` shape after the rank (in, k…) belongs to: ``Conv1d`` … ``Conv3d``."""
    return f"Conv{len(kernel) - 1}d"


def unflatten(a: torch.Tensor, b: torch.Tensor, kernel: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened ``(A, B)`` back into PEFT's convolution weights (lora_A with the kernel, lora_B 1×1)."""
    rank = a.shape[0]
    return a.reshape(rank, *kernel), b.reshape(b.shape[0], rank, *[1] * (len(kernel) - 1))
