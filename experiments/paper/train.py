"""LoRA fine-tuning of one adapter, and the perplexity of a model on token sequences."""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from .data import Example


def batches(examples: list[Example], batch_size: int, pad_id: int, device: torch.device, order=None):
    """Right-padded (input_ids, attention_mask, answer_mask) batches; ``order`` permutes the examples."""
    order = range(len(examples)) if order is None else order
    order = list(order)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        answer = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, example in enumerate(chunk):
            ids[row, : len(example.ids)] = torch.tensor(example.ids)
            mask[row, : len(example.ids)] = 1
            answer[row, example.answer_start : len(example.ids)] = True
        yield ids.to(device), mask.to(device), answer.to(device)


def autocast(device: torch.device, enabled: bool = True):
    # bf16 matmuls (3x faster than float32 on an AVX512-BF16 CPU); the weights and the loss stay float32.
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def train_adapter(
    model: torch.nn.Module,
    examples: list[Example],
    out_dir: Path,
    *,
    seed: int,
    settings: dict,
    pad_id: int,
    base_model_id: str,
    device: torch.device,
) -> torch.nn.Module:
    """Train one LoRA adapter on ``examples`` and save it (bf16) to ``out_dir``; return the clean base model.

    ``seed`` fixes both PEFT's random A initialisation (B starts at zero) and
    the order of the examples.
    """
    torch.manual_seed(seed)
    config = LoraConfig(
        r=settings["r"],
        lora_alpha=settings["lora_alpha"],
        lora_dropout=0.0,
        target_modules=settings["target_modules"],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings["learning_rate"], weight_decay=0.0)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    order = order * settings["epochs"]
    steps = math.ceil(len(order) / settings["batch_size"])
    warmup = max(1, steps // 20)
    # Linear warm-up over 5% of the steps, then linear decay to zero.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    peft_model.train()
    losses, started = [], time.perf_counter()
    for ids, mask, _ in batches(examples, settings["batch_size"], pad_id, device, order):
        labels = ids.masked_fill(mask == 0, -100)
        with autocast(device, settings["bf16"]):
            loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - started
    peft_model.eval()
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.bfloat16)
    peft_model.peft_config["default"].base_model_name_or_path = base_model_id
    peft_model.save_pretrained(out_dir)
    tail = losses[-max(1, len(losses) // 10) :]
    info = {
        "seed": seed,
        "examples": len(examples),
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "seconds": round(seconds, 1),
        "device": str(device),
    }
    (out_dir / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    return peft_model.unload()


@torch.no_grad()
def score(
    model: torch.nn.Module, examples: list[Example], *, batch_size: int, pad_id: int, device, bf16: bool = True
) -> dict:
    """Summed token negative log-likelihoods (nats) and token counts, over all tokens and answer tokens only."""
    model.eval()
    total = {"nll": 0.0, "tokens": 0, "answer_nll": 0.0, "answer_tokens": 0}
    for ids, mask, answer in batches(examples, batch_size, pad_id, device):
        with autocast(device, bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )  # predicts token t+1 from tokens ≤ t
        seen = mask[:, 1:].bool()
        answered = answer[:, 1:] & seen
        total["nll"] += float(nll[seen].sum())
        total["tokens"] += int(seen.sum())
        total["answer_nll"] += float(nll[answered].sum())
        total["answer_tokens"] += int(answered.sum())
    return total
