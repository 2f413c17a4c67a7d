"""Regenerate the adapters saved by old PEFT releases (``tests/old_peft/fixtures/<release>/``).

Each release gets its own virtualenv (uv, the CPU torch wheel, and a transformers of the
release's time: every other dependency is resolved as of the release's date), where tiny
models are built from configs and LoRA adapters with seeded random factors are saved by
that release's own ``save_pretrained``. Nothing is downloaded at test time: the fixtures
are committed.

    .venv/bin/python tests/old_peft/make_fixtures.py                 # every release below
    .venv/bin/python tests/old_peft/make_fixtures.py 0.3.0 0.13.0    # some of them

Virtualenvs go to ``$PEFT_VENVS`` (default ``/work/cache/peft-venvs``); ``uv`` is taken
from the environment running this script. The same file, run by an old virtualenv's
Python with ``worker``, does the saving (it imports nothing from hubmerge).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
VENVS = Path(os.environ.get("PEFT_VENVS", "/work/cache/peft-venvs"))
TORCH = "torch==2.13.0"

# PEFT release → (transformers of its time, the release's upload date). Every other
# dependency is resolved as it was on that date, except torch and its own dependencies.
RELEASES = {
    "0.2.0": ("4.26.1", "2023-03-10"),
    "0.3.0": ("4.28.1", "2023-04-07"),
    "0.4.0": ("4.31.0", "2023-07-19"),
    "0.5.0": ("4.32.1", "2023-08-23"),
    "0.6.0": ("4.35.0", "2023-11-04"),
    "0.7.0": ("4.36.0", "2023-12-12"),
    "0.8.0": ("4.37.2", "2024-02-20"),
    "0.9.0": ("4.38.1", "2024-02-29"),
    "0.10.0": ("4.39.1", "2024-03-22"),
    "0.11.0": ("4.40.2", "2024-05-17"),
    "0.12.0": ("4.43.1", "2024-07-25"),
    "0.13.0": ("4.45.0", "2024-09-26"),
    "0.14.0": ("4.47.0", "2024-12-07"),
    "0.15.0": ("4.49.0", "2025-03-20"),
    "0.16.0": ("4.53.0", "2025-07-04"),
    "0.17.0": ("4.55.0", "2025-08-02"),
}
# Pinned above, or needed newer by torch 2.13 than an old date allows.
_UNPINNED = ("peft", "transformers", "setuptools", "sympy", "mpmath", "networkx", "filelock", "fsspec", "jinja2",
             "markupsafe", "typing-extensions")  # fmt: skip

# Tiny models built from configs; "linear" is Llama where the release's transformers has it, else OPT.
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(
        vocab_size=32, hidden_size=16, ffn_dim=24, num_hidden_layers=1, num_attention_heads=2,
        word_embed_proj_dim=16, max_position_embeddings=32)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=32, tie_word_embeddings=False)),
    # Fused MoE experts (target_parameters, PEFT >= 0.17): only check_loading.py uses it.
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(
        vocab_size=32, hidden_size=16, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, num_local_experts=3, num_experts_per_tok=2, tie_word_embeddings=False)),
}  # fmt: skip
BASE_IDS = {"llama": "test-org/tiny-llama", "opt": "test-org/tiny-opt", "gpt2": "test-org/tiny-gpt2"}


def adapters_for(fields: set[str], has_llama: bool) -> dict[str, dict]:
    """The adapters saved for a release whose LoraConfig has ``fields``."""
    linear = "llama" if has_llama else "opt"
    b = {"r": 3, "lora_alpha": 5, "target_modules": ["q_proj", "k_proj"]}
    if "rank_pattern" in fields:  # plain names: every release's pattern rule matches them the same way
        b.update(rank_pattern={"k_proj": 4}, alpha_pattern={"k_proj": 2})
    if "use_rslora" in fields:
        b["use_rslora"] = True
    # PEFT 0.2 turns a single target module into MergedLinear with enable_lora=[True, False, True].
    conv1d = {"target_modules": ["c_attn"], "fan_in_fan_out": True}
    return {
        "linear-a": {
            "model": linear,
            "seed": 1,
            "lora": {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        },
        "linear-b": {"model": linear, "seed": 2, "lora": b},
        "conv1d-a": {"model": "gpt2", "seed": 3, "lora": {"r": 2, "lora_alpha": 4, **conv1d}},
        "conv1d-b": {"model": "gpt2", "seed": 4, "lora": {"r": 3, "lora_alpha": 6, **conv1d}},
    }


def build_convnet():
    """A plain torch model for convolution LoRA (no transformers): Conv2d 3×3 padded, 3×1 strided and 1×1,
    a Conv1d and a Linear, as ``tests/test_conv.py`` has it; seed 0. Input: :func:`convnet_inputs`."""
    import torch
    from torch import nn

    class TinyConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.tall = nn.Conv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0))
            self.pointwise = nn.Conv2d(8, 6, 1)
            self.temporal = nn.Conv1d(6, 5, 3)
            self.head = nn.Linear(5, 4)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            x = torch.relu(self.pointwise(torch.relu(self.tall(x))))
            x = torch.relu(self.temporal(x.flatten(2)))
            return self.head(x.mean(dim=2))

    torch.manual_seed(0)
    return TinyConvNet().eval()


def convnet_inputs():
    import torch

    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def build_model(kind: str):
    """The tiny base model ``kind`` with seed 0, in whatever transformers is installed."""
    import torch

    if kind == "convnet":
        return build_convnet()
    import transformers

    config_cls, model_cls, kwargs = MODELS[kind]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).eval()
    with torch.no_grad():  # gpt-oss starts its experts at zero; give every weight some size
        for param in model.parameters():
            if param.abs().sum() == 0:
                param.normal_(0, 0.2)
    return model


def worker(release_dir: Path) -> None:
    """Run inside an old virtualenv: save every adapter of this release into ``release_dir``."""
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    fields = set(LoraConfig.__dataclass_fields__)
    specs = adapters_for(fields, hasattr(transformers, "LlamaConfig"))
    manifest = {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                "lora_config_fields": sorted(fields), "adapters": {}}  # fmt: skip
    for name, spec in specs.items():
        lora = dict(spec["lora"], lora_dropout=0.0)
        model = get_peft_model(build_model(spec["model"]), LoraConfig(**lora))
        generator = torch.Generator().manual_seed(spec["seed"])
        with torch.no_grad():  # random A and B, so that every delta is non-zero
            for pname, param in model.named_parameters():
                if "lora_" in pname:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        config = model.peft_config["default"] if isinstance(model.peft_config, dict) else model.peft_config
        config.base_model_name_or_path = BASE_IDS[spec["model"]]
        out = release_dir / name
        # No embedding is adapted; "auto" makes 0.8 look the base model up on the Hub and fail offline.
        accepted = _parameters(model.save_pretrained)
        extra = {"save_embedding_layers": False} if "save_embedding_layers" in accepted else {}
        model.save_pretrained(str(out), **extra)
        (out / "README.md").unlink(missing_ok=True)  # the model card PEFT writes: not read, not needed
        manifest["adapters"][name] = {"model": spec["model"], "model_config": MODELS[spec["model"]][2], **spec}
    (release_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _parameters(function) -> set[str]:
    import inspect

    return set(inspect.signature(function).parameters)


def venv_python(release: str) -> Path:
    """The Python of ``release``'s virtualenv, created if missing."""
    transformers_version, date = RELEASES[release]
    venv = VENVS / release
    python, ready = venv / "bin" / "python", venv / ".hubmerge-ready"
    if ready.exists():
        return python
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "venv", "-q", "--clear", "--python", "python3.11", str(venv)], check=True)
    unpinned = [arg for name in _UNPINNED for arg in ("--exclude-newer-package", f"{name}=2030-01-01")]
    links = ["--find-links", os.environ["PIP_FIND_LINKS"]] if os.environ.get("PIP_FIND_LINKS") else []
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), *links, "--exclude-newer", date, *unpinned,
         TORCH, f"peft=={release}", f"transformers=={transformers_version}", "setuptools<81"],
        check=True,
    )  # fmt: skip
    ready.touch()
    return python


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        worker(Path(argv[1]))
        return 0
    failed = []
    for release in argv or list(RELEASES):
        target = FIXTURES / release
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            # Offline: some releases look the base model up on the Hub while saving.
            # A fixed hash seed: PEFT saves target_modules from a set, so its order follows the hash.
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
            subprocess.run([str(venv_python(release)), __file__, "worker", str(target)], check=True, env=env)
        except subprocess.CalledProcessError as err:
            shutil.rmtree(target)
            failed.append(release)
            print(f"{release}: failed ({err})", file=sys.stderr)
            continue
        print(f"{release}: {sorted(p.name for p in target.iterdir())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
