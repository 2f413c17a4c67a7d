"""PEFT 0.2's ``MergedLinear`` (``enable_lora``), converted on read to a plain B·A.

PEFT 0.2 adapted a fused projection such as GPT-2's ``c_attn`` (query, key and value in
one layer) only in the parts that ``enable_lora`` switches on: 0.2's ``get_peft_model``
gives every config with a single target module ``enable_lora = [True, False, True]``.
It stores, for r = the config's ``r``, S = the number of enabled parts and an output of
``out`` features split into ``len(enable_lora)`` equal parts of ``out_p``::

    lora_A.weight   (S·r) × in                 an ordinary Linear
    lora_B.weight   (S·out_p) × (S·r / G) × 1  a Conv1d with kernel 1 and G groups

and computes ``zero_pad(lora_B(lora_A(x))) · α/r``: conv group g maps A's rows
``g·S·r/G …`` to B's output rows ``g·S·out_p/G …``, and ``zero_pad`` scatters those S·out_p
rows into the enabled parts of the output (in order), leaving the others zero. The delta is
therefore the block-structured B·A of rank S·r

    ΔW = α/r · B_full · A,   B_full (out × S·r) = the conv blocks on the enabled rows, zeros elsewhere

which sums exactly like any LoRA (:func:`expand_lora_b`). PEFT 0.2 hard-codes G = 2 in the
layer but merges it into the weight with G = S (``groups=sum(enable_lora)``): the two agree
only where G = S, so other group counts are refused (:func:`merged_linear_problem`).
Releases from 0.3 on have no ``enable_lora`` and cannot load these files at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["expand_lora_b", "merged_linear_problem"]


def merged_linear_problem(
    enable_lora: Sequence[bool], r: int, a_shape: Sequence[int], b_shape: Sequence[int], *, floats: bool = True
) -> str | None:
    """Why the factors of a ``MergedLinear`` cannot be converted exactly, or ``None`` when they can.

    Args:
        enable_lora: the config's ``enable_lora``.
        r: the config's ``r`` (the rank of each enabled part).
        a_shape, b_shape: shapes of ``lora_A.weight`` and of the 3-D ``lora_B.weight``.
        floats: whether both tensors hold floating-point values.
    """
    enabled = sum(bool(e) for e in enable_lora)
    if not floats:
        return f"enable_lora={list(enable_lora)}: the factors are not floating-point tensors"
    if not enabled:
        return f"enable_lora={list(enable_lora)} enables no part of the layer, yet the file holds its factors"
    if len(a_shape) != 2 or len(b_shape) != 3 or b_shape[2] != 1:
        return (
            f"enable_lora={list(enable_lora)}: PEFT 0.2's MergedLinear stores lora_A as (S·r) × in and lora_B as "
            f"a kernel-1 Conv1d weight, not shapes {list(a_shape)} and {list(b_shape)}"
        )
    rows, (out_c, per_group, _) = a_shape[0], b_shape
    if rows != enabled * r:
        return (
            f"enable_lora={list(enable_lora)} enables {enabled} part(s) of rank r={r}, so lora_A should have "
            f"{enabled * r} rows, not {rows}: the config contradicts the tensors"
        )
    if rows % per_group or out_c % enabled:
        return f"enable_lora={list(enable_lora)}: lora_B of shape {list(b_shape)} does not split into groups"
    groups = rows // per_group
    if groups != enabled or out_c % groups:
        return (
            f"enable_lora={list(enable_lora)} enables {enabled} parts but lora_B is convolved in {groups} groups: "
            "PEFT 0.2 applies such a layer with 2 groups and merges it with one group per enabled part, so it "
            "has no single delta to sum"
        )
    return None


def expand_lora_b(b: torch.Tensor, enable_lora: Sequence[bool]) -> torch.Tensor:
    """The ``out × S·r`` B of the plain LoRA equal to a ``MergedLinear``'s factors.

    Args:
        b: the stored ``lora_B.weight`` (S·out_p × r × 1), already checked by
            :func:`merged_linear_problem`.
        enable_lora: the config's ``enable_lora``.

    Returns:
        ``B_full`` with ``B_full @ lora_A`` the layer's delta before scaling.

    Example:
        >>> expand_lora_b(torch.ones(4, 1, 1), [True, False, True]).tolist()
        [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    """
    enabled = [index for index, on in enumerate(enable_lora) if on]
    rows_per_part, rank = b.shape[0] // len(enabled), b.shape[1]
    full = b.new_zeros(rows_per_part * len(enable_lora), rank * len(enabled))
    for group, part in enumerate(enabled):
        full[part * rows_per_part : (part + 1) * rows_per_part, group * rank : (group + 1) * rank] = b[
            group * rows_per_part : (group + 1) * rows_per_part, :, 0
        ]
    return full
