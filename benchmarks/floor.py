"""The I/O floor: read the adapters' tensors with safetensors, concatenate, write. Nothing else.

This is the least any rank-concatenating merge has to do: import torch and
safetensors, read every input byte, write every output byte. No checks, no
scaling, no report. ``run.py`` times it as a whole process next to hubmerge's.

    python benchmarks/floor.py ADAPTER_DIR ADAPTER_DIR... OUTPUT_FILE
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file, save_file


def main(argv: list[str]) -> int:
    *inputs, output = argv
    loaded = [load_file(f"{directory}/adapter_model.safetensors") for directory in inputs]
    merged = {}
    for name in loaded[0]:
        parts = [tensors[name] for tensors in loaded]
        merged[name] = torch.cat(parts, dim=0 if ".lora_A." in name else 1)
    save_file(merged, output, metadata={"format": "pt"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
