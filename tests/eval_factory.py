"""A tiny base model with a character tokenizer, and LoRA adapters trained on it in seconds.

Two synthetic domains that share no content: ``math`` (sums as question/answer
pairs) and ``words`` (sentences from a small lexicon). Each adapter is trained
on its own domain only, a few dozen Adam steps, so that it lowers the loss
there and retention has something to measure. Built once per test process in
a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import functools
import json
import random
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<bos>", "<eos>", "<pad>", "<unk>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
LEXICON = "the a cat dog sees runs over under small big red blue house tree and near".split()


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one token per character
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_base(directory: Path, *, hidden: int = 32, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(SPECIALS) + len(CHARS), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return directory


def math_pair(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{a}+{b}", str(a + b)


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(LEXICON) for _ in range(rng.randint(5, 9))) + "."


def train_adapter(base_dir: Path, texts: list[str], directory: Path, *, seed: int, steps: int = 40) -> Path:
    tokenizer = make_tokenizer()
    model = LlamaForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )  # fmt: skip
    model = get_peft_model(model, config)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimiser.step()
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(directory)
    return directory


@functools.lru_cache(maxsize=1)
def domains() -> dict[str, Path]:
    """Paths: ``base``, adapters ``math`` and ``words``, and data files (see the keys)."""
    root = Path(tempfile.mkdtemp(prefix="hubmerge-eval-tests-"))
    base = make_base(root / "base")
    rng = random.Random(0)
    train_math = ["Question: {}\nAnswer: {}".format(*math_pair(rng)) for _ in range(32)]
    train_words = [sentence(rng) for _ in range(32)]
    paths = {
        "root": root,
        "base": base,
        "math": train_adapter(base, train_math, root / "adapters" / "math", seed=1),
        "words": train_adapter(base, train_words, root / "adapters" / "words", seed=2),
    }
    rows = []
    for i in range(24):
        question, answer = math_pair(rng)
        rows.append({"id": i, "question": question, "answer": answer, "split": "test" if i < 16 else "train"})
    paths["math_qa"] = _jsonl(root / "math_qa.jsonl", rows)
    paths["words_text"] = _jsonl(root / "words.jsonl", [{"text": sentence(rng)} for _ in range(16)])
    pairs = [{"prompt": "say: " + sentence(rng), "completion": " " + sentence(rng)} for _ in range(8)]
    paths["words_pc"] = _jsonl(root / "words_pc.jsonl", pairs)
    paths["words_txt"] = root / "words.txt"
    paths["words_txt"].write_text("\n".join(sentence(rng) for _ in range(6)) + "\n")
    return paths


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@torch.no_grad()
def reference_nll(base_dir: Path, adapter_dir: Path | None, examples: list[tuple[list[int], int]]) -> float:
    """Σ NLL / Σ tokens, by PEFT's forward one example at a time and cross-entropy written out here.

    Each example is ``(ids, start)``: tokens ``ids[start:]`` are scored, each from the ones before it.
    """
    from peft import PeftModel

    model = LlamaForCausalLM.from_pretrained(base_dir).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    total, count = 0.0, 0
    for ids, start in examples:
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        log_probs = logits.log_softmax(dim=-1)
        for position in range(start, len(ids)):
            total -= float(log_probs[position - 1, ids[position]])
            count += 1
    return total / count
