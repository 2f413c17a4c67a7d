"""The merge options a caller gives, checked before any download: weights and dtypes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .adapter import LoraAdapter
from .errors import InvalidArgumentError
from .notice import Notice
from .report import DTYPE_CHOICES, dtype_name

__all__ = ["check_weights", "inputs_dtype", "parse_dtype"]

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}  # fmt: skip


def check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = list(weights)
    if len(weights) != count:
        raise InvalidArgumentError(
            f"got {len(weights)} weight(s) for {count} adapter(s); give one weight per adapter", reason="weights"
        )
    for value in weights:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgumentError(f"weight {value!r} is not a finite number", reason="weights")
    return [float(w) for w in weights]


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype) and dtype in _DTYPE_NAMES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower()]
    raise InvalidArgumentError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}", reason="dtype")


def inputs_dtype(adapters: Sequence[LoraAdapter], names: Sequence[str]) -> tuple[torch.dtype, list[Notice]]:
    found = {a.dtype for a in adapters}
    chosen = found.pop()
    if not found:
        return chosen, []
    for other in found:
        chosen = torch.promote_types(chosen, other)
    listing = ", ".join(f"{name}: {dtype_name(a.dtype)}" for a, name in zip(adapters, names))
    message = f"the adapters have different dtypes ({listing}); the merge is saved as {dtype_name(chosen)}"
    return chosen, [Notice("mixed_dtypes", message)]
