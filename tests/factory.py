"""Tiny real models built from configs, and real PEFT adapters trained on nothing.

The adapters use ``init_lora_weights=False`` so both A and B are random and
every delta is non-zero, which is what the exactness tests need.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

LLAMA_ID = "test-org/tiny-llama"
GPT2_ID = "test-org/tiny-gpt2"
VOCAB = 96


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,  # the hand-made reference adds a head delta without touching wte
    )
    return GPT2LMHeadModel(config).eval()


BASES = {"llama": (tiny_llama, LLAMA_ID), "gpt2": (tiny_gpt2, GPT2_ID)}


def make_adapter(directory: Path, *, base: str = "llama", seed: int = 1, **lora_kwargs) -> Path:
    """Save a real PEFT LoRA adapter with random A and B to ``directory``."""
    factory, base_id = BASES[base]
    lora_kwargs.setdefault("r", 4)
    lora_kwargs.setdefault("lora_alpha", 8)
    lora_kwargs.setdefault("target_modules", ["q_proj", "v_proj"] if base == "llama" else ["c_attn"])
    lora_kwargs.setdefault("init_lora_weights", False)
    if base == "gpt2":
        lora_kwargs.setdefault("fan_in_fan_out", True)
    base_model = factory()  # seeds 0 itself, so seed the adapter afterwards
    torch.manual_seed(seed)
    model = get_peft_model(base_model, LoraConfig(**lora_kwargs))
    model.peft_config["default"].base_model_name_or_path = base_id
    model.save_pretrained(directory)
    return directory


def input_ids() -> torch.Tensor:
    return torch.arange(3, 3 + 2 * 12).remainder(VOCAB).reshape(2, 12)


@torch.no_grad()
def peft_logits(base: str, adapter_dir: Path) -> torch.Tensor:
    """Logits of the base model with ``adapter_dir`` loaded by PEFT."""
    model = PeftModel.from_pretrained(BASES[base][0](), str(adapter_dir)).eval()
    return model(input_ids()).logits


@torch.no_grad()
def dense_deltas(base: str, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Base-weight name → the dense delta PEFT itself computes for that adapter.

    Uses PEFT's own ``get_delta_weight`` (scale, fan_in_fan_out and embedding
    transposition included): an implementation independent of hubmerge's.
    Full modules saved by ``modules_to_save`` come back as ``(name, weight)``
    replacements under the key ``"replace:<param name>"``.
    """
    model = PeftModel.from_pretrained(BASES[base][0](), str(adapter_dir))
    deltas = {}
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and "default" in (*module.lora_A, *module.lora_embedding_A):
            deltas[f"{name}.weight"] = module.get_delta_weight("default").detach().clone()
        if hasattr(module, "modules_to_save") and "default" in getattr(module, "modules_to_save", {}):
            for pname, param in module.modules_to_save["default"].named_parameters():
                deltas[f"replace:{name}.{pname}"] = param.detach().clone()
    return deltas


@torch.no_grad()
def reference_logits(base: str, adapters: list[tuple[Path, float]]) -> torch.Tensor:
    """Logits of the base model with Σ wᵢ·ΔWᵢ added to its weights by hand."""
    model = BASES[base][0]()
    params = dict(model.named_parameters())
    for directory, weight in adapters:
        for name, delta in dense_deltas(base, directory).items():
            if name.startswith("replace:"):
                params[name.removeprefix("replace:")].copy_(delta)
            else:
                params[name].add_(weight * delta)
    return model(input_ids()).logits
