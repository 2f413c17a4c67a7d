"""The three QA domains as token sequences: loading, subsampling, formatting, truncation.

Each pair becomes ``"Question: {question}\\nAnswer: {answer}<eos>"``. Training and
the main perplexity use every token of it (causal language modelling, as the
paper fine-tunes GPT-2); the answer-only perplexity is reported beside it.
Sequences longer than ``max_length`` lose the *start of the question* (for
finance: the start of the table), never the answer; how many were cut is
recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

DOMAINS = ("math", "medicine", "finance")
FILES = {"math": "math_qa.jsonl", "medicine": "medicine_qa.jsonl", "finance": "finance_qa.jsonl"}
# Licences of the data each adapter saw (../shared/data/README.md), for the model cards.
DATASETS = {
    "math": {"name": "GSM8K (openai/grade-school-math)", "licence": "mit", "hub": "openai/gsm8k"},
    "medicine": {"name": "MedQuAD (abachaa/MedQuAD), 5,000-pair subset", "licence": "cc-by-4.0", "hub": None},
    "finance": {
        "name": "TAT-QA (NExTplusplus/TAT-QA), dev + gold test",
        "licence": "cc-by-4.0",
        "hub": "next-tat/TAT-QA",
    },
}


@dataclass
class Example:
    ids: list[int]
    answer_start: int  # index of the first answer token in ids
    truncated: bool


def _order_key(salt: str, row_id: str) -> int:
    return int(hashlib.sha256(f"{salt}:{row_id}".encode()).hexdigest(), 16)


def load_rows(data_dir: Path, domain: str, split: str, limit: int | None) -> list[dict]:
    """The first ``limit`` rows of a split in a fixed pseudo-random order (the same for every seed)."""
    rows = [
        json.loads(line) for line in (data_dir / FILES[domain]).read_text(encoding="utf-8").split("\n") if line.strip()
    ]
    rows = sorted((r for r in rows if r["split"] == split), key=lambda r: _order_key("hubmerge-paper", r["id"]))
    return rows[:limit] if limit else rows


def encode(row: dict, tokenizer, max_length: int) -> Example:
    prompt = tokenizer(f"Question: {row['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
    answer = tokenizer(f" {row['answer']}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer = answer[: max_length - 16]  # an answer alone longer than the window (none in these sets) is cut at its end
    room = max_length - len(answer)
    truncated = len(prompt) > room
    prompt = prompt[-room:] if truncated else prompt
    return Example(prompt + answer, len(prompt), truncated)


def load_domain(
    data_dir: Path, domain: str, split: str, tokenizer, max_length: int, limit: int | None
) -> list[Example]:
    return [encode(row, tokenizer, max_length) for row in load_rows(data_dir, domain, split, limit)]


def write_quick_data(folder: Path, rows_per_split: tuple[int, int] = (24, 8)) -> Path:
    """A handful of synthetic rows per domain in the real files' layout, for the quick mode and its test."""
    folder.mkdir(parents=True, exist_ok=True)
    makers = {
        "math": lambda i: (f"What is {i} plus {2 * i + 1}?", f"{i} + {2 * i + 1} = {3 * i + 1}. #### {3 * i + 1}"),
        "medicine": lambda i: (
            f"What are the symptoms of disease {i}?",
            f"Disease {i} causes fever and pain in {i} days.",
        ),
        "finance": lambda i: (
            f"Table:\nyear | revenue\n2019 | {100 + i}\n2020 | {120 + i}\n\nQuestion: What was the change in revenue?",
            f"{120 + i} - {100 + i} = 20",
        ),
    }
    n_train, n_test = rows_per_split
    for domain, make in makers.items():
        lines = []
        for i in range(n_train + n_test):
            question, answer = make(i)
            split = "train" if i < n_train else "test"
            lines.append(json.dumps({"id": f"{domain}-{i}", "question": question, "answer": answer, "split": split}))
        (folder / FILES[domain]).write_text("\n".join(lines) + "\n")
    return folder
