"""Build the small example base model and adapters shipped in examples/.

Offline and deterministic (CPU, fixed seeds), a few seconds:

    python examples/make_examples.py

It writes:
- examples/tiny-llama/      a tiny Llama (2 layers, hidden 64, vocab 256) built from a config
- examples/adapters/evens/  LoRA r=8 on q/k/v/o, trained briefly to continue sequences of even tokens
- examples/adapters/odds/   LoRA r=4 on q/v + MLP, trained on odd tokens from another seed
- examples/adapters/odds-same-init/  like odds, but with r=8 on q/k/v/o from the *same seed as evens*,
                            to show the shared-initialisation warning

These are stand-ins: real domain adapters replace them once they are trained.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent
BASE_ID = "hubmerge-examples/tiny-llama"


def base_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def train(name: str, *, seed: int, parity: int, config: LoraConfig, steps: int = 40) -> None:
    base = base_model()  # seeds 0 itself, so seed the adapter afterwards
    torch.manual_seed(seed)  # PEFT draws A from this seed; B starts at zero
    model = get_peft_model(base, config)
    data = torch.Generator().manual_seed(1000 + seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, 100, (8, 1), generator=data)
        batch = (parity + 2 * (start + torch.arange(16))) % 256  # arithmetic runs of one parity
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.peft_config["default"].base_model_name_or_path = BASE_ID  # the base has no Hub id of its own
    out = HERE / "adapters" / name
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    print(f"{name}: final loss {loss.item():.3f} -> {out.relative_to(HERE.parent)}")


def main() -> None:
    base_dir = HERE / "tiny-llama"
    shutil.rmtree(base_dir, ignore_errors=True)
    base_model().save_pretrained(base_dir)
    attn = ["q_proj", "k_proj", "v_proj", "o_proj"]
    mlp = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    train("evens", seed=1, parity=0, config=LoraConfig(r=8, lora_alpha=16, target_modules=attn))
    train("odds", seed=2, parity=1, config=LoraConfig(r=4, lora_alpha=8, target_modules=mlp))
    train("odds-same-init", seed=1, parity=1, config=LoraConfig(r=8, lora_alpha=16, target_modules=attn))


if __name__ == "__main__":
    main()
