"""Reading an adapter's weights file: a safetensors header without the tensors, tensors by name, or a pickle.

Nothing here interprets the names (that is :mod:`hubmerge.adapter`'s index); a file that
cannot be parsed raises :class:`~hubmerge.errors.AdapterFormatError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .errors import AdapterFormatError

__all__ = ["TensorReader", "check_regular_file", "read_pickle", "read_safetensors_header"]


class TensorReader:
    """Reads tensors by name from a safetensors file (lazily) or an unpickled dict."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor] | None = None):
        self._path = path
        self._tensors = tensors
        self._handle: Any = None  # opened on first read: parsing the header once, not per tensor

    def get(self, name: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[name]
        try:
            if self._handle is None:
                self._handle = safe_open(str(self._path), framework="pt")
            return self._handle.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise AdapterFormatError(f"{self._path}: cannot read tensor {name!r}: {err}") from None


def check_regular_file(path: Path, where: str) -> None:
    # A directory, FIFO or device under an adapter file's name would fail oddly or block a read forever.
    if not path.is_file():
        raise AdapterFormatError(
            f"{where}: {path.name} is not a regular file; replace it with the adapter's file", source=where
        )


def read_safetensors_header(path: Path, where: str) -> tuple[list[str], dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            shapes, dtypes = {}, {}
            for key in names:
                piece = handle.get_slice(key)
                shapes[key] = tuple(piece.get_shape())
                dtypes[key] = _DTYPES.get(piece.get_dtype())
                if dtypes[key] is None:
                    raise AdapterFormatError(
                        f"{where}: {path.name} key {key!r} has dtype {piece.get_dtype()}, which hubmerge does not "
                        f"read (LoRA factors are F32, F16, BF16 or F64); convert the adapter to one of those"
                    )
    except (SafetensorError, OSError, RuntimeError) as err:
        raise AdapterFormatError(
            f"{where}: {path.name} is not a readable safetensors file ({err})", source=where
        ) from err
    return names, shapes, dtypes


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_pickle(path: Path, where: str) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad pickle; all mean "unreadable"
        raise AdapterFormatError(
            f"{where}: {path.name} cannot be loaded safely ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise AdapterFormatError(f"{where}: {path.name} does not hold a flat dict of name → tensor", source=where)
    return data
