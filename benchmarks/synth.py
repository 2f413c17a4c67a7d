"""Synthetic PEFT LoRA adapters shaped like real Llama models, for the benchmarks.

Each adapter is what PEFT's ``save_pretrained`` writes: ``adapter_config.json``
and ``adapter_model.safetensors`` with keys such as
``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight``, on all
seven projections of every layer, r = 16, bfloat16. The values follow PEFT's
initialisation of A (Kaiming-uniform, bound 1/√in) while B is small and random
instead of zero, so every delta is non-zero, as after training. Seeds are
fixed: adapter ``i`` of a shape is the same file on every machine.

Generated adapters live in a cache directory outside the repository (see
``run.py --workdir``) and are reused while their stamp matches.

    python benchmarks/synth.py --shape 1b --count 2 --workdir ~/.cache/hubmerge-bench
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

GENERATOR_VERSION = 1
KEY_PREFIX = "base_model.model.model.layers"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """A Llama-style model shape: what the adapters' factors must match."""

    name: str
    label: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie_word_embeddings: bool
    rank: int = 16
    alpha: int = 32

    @property
    def kv_out(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def base_model(self) -> str:
        return f"hubmerge-bench/llama-{self.name}-shaped"

    def projections(self) -> dict[str, tuple[int, int]]:
        """Projection name → (in_features, out_features)."""
        h, m, kv = self.hidden, self.intermediate, self.kv_out
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, m),
            "up_proj": (h, m),
            "down_proj": (m, h),
        }

    def adapter_bytes(self) -> int:
        """Size of one adapter's tensors in bfloat16."""
        per_layer = sum(self.rank * (i + o) for i, o in self.projections().values())
        return 2 * per_layer * self.layers

    def llama_config(self) -> dict:
        """Keyword arguments of ``transformers.LlamaConfig`` for the matching base model."""
        return {
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": 2048,
        }


SHAPES = {
    "tiny": Shape("tiny", "tiny (hidden 64, 2 layers)", 64, 256, 2, 4, 2, 512, True),
    "1b": Shape("1b", "Llama-3.2-1B", 2048, 8192, 16, 32, 8, 128256, True),
    "8b": Shape("8b", "Llama-3-8B", 4096, 14336, 32, 32, 8, 128256, False),
}


def module_names(shape: Shape) -> list[tuple[str, int, int]]:
    """(PEFT module path below ``model.``, in, out) for every adapted module, in file order."""
    found = []
    for layer in range(shape.layers):
        for proj, (fan_in, fan_out) in shape.projections().items():
            block = "self_attn" if proj in ATTENTION else "mlp"
            found.append((f"{KEY_PREFIX}.{layer}.{block}.{proj}", fan_in, fan_out))
    return found


def adapter_config(shape: Shape) -> dict:
    """An ``adapter_config.json`` as PEFT writes it for a plain LoRA on the seven projections."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": shape.base_model,
        "revision": None,
        "r": shape.rank,
        "lora_alpha": shape.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "target_modules": sorted(ATTENTION + MLP),
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "inference_mode": True,
    }


def seed_for(shape: Shape, index: int) -> int:
    return zlib.crc32(f"hubmerge-bench:{shape.name}:{index}".encode())


def write_adapter(directory: Path, shape: Shape, index: int) -> Path:
    """Write adapter ``index`` of ``shape`` to ``directory`` (deterministic)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed_for(shape, index))
    tensors = {}
    for module, fan_in, fan_out in module_names(shape):
        bound = 1.0 / fan_in**0.5  # PEFT: kaiming_uniform_(a=√5) on A
        a = (torch.rand(shape.rank, fan_in, generator=generator) * 2 - 1) * bound
        b = torch.randn(fan_out, shape.rank, generator=generator) * 0.01  # PEFT starts B at zero; trained B is not
        tensors[f"{module}.lora_A.weight"] = a.to(torch.bfloat16)
        tensors[f"{module}.lora_B.weight"] = b.to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config(shape), indent=2) + "\n")
    return directory


def adapter_dir(workdir: Path, shape: Shape, index: int) -> Path:
    return workdir / "adapters" / shape.name / f"a{index:02d}"


def ensure_adapters(workdir: Path, shape: Shape, count: int) -> tuple[list[Path], int]:
    """The first ``count`` adapters of ``shape`` under ``workdir``, generated where missing or stale.

    Returns:
        The adapter directories, and how many of them had to be generated.
    """
    found, generated = [], 0
    for index in range(count):
        directory = adapter_dir(workdir, shape, index)
        stamp_file = directory / ".bench-stamp"
        stamp = json.dumps({"version": GENERATOR_VERSION, "index": index, **asdict(shape)}, sort_keys=True)
        fresh = (
            stamp_file.is_file()
            and stamp_file.read_text() == stamp
            and (directory / "adapter_model.safetensors").is_file()
            and (directory / "adapter_config.json").is_file()
        )
        if not fresh:
            write_adapter(directory, shape, index)
            stamp_file.write_text(stamp)
            generated += 1
        found.append(directory)
    return found, generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("~/.cache/hubmerge-bench").expanduser())
    args = parser.parse_args(argv)
    paths, generated = ensure_adapters(args.workdir.expanduser(), SHAPES[args.shape], args.count)
    print(json.dumps({"adapters": [str(p) for p in paths], "generated": generated}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
