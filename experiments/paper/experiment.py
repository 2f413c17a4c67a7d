"""The experiment: which adapters are trained, which models are evaluated, what is compared.

For each seed s (one replicate):

- single-domain adapters ``math``, ``medicine``, ``finance``, all initialised from seed s
  (the *shared* initialisation: PEFT draws the same A for all three);
- ``medicine-indep`` and ``finance-indep`` from seeds s+1000 and s+2000, so that
  ``math`` / ``medicine-indep`` / ``finance-indep`` are the *independent* initialisation;
- merged-data adapters ``math+medicine``, ``math+finance``, ``medicine+finance`` and
  ``math+medicine+finance``, trained on the union of the domains' training examples for the
  same number of epochs (the same budget per example: a pair takes twice the steps of a single);
- naive sums of the single adapters of each pair and of the triple, made by
  :func:`hubmerge.merge` and loaded with PEFT, in both initialisations.

Every model is scored on each domain's test split; the union is the pooled tokens of the three.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import hubmerge

from .data import DOMAINS, Example, load_domain
from .model import load_base
from .train import score, train_adapter

COMBOS = (("math", "medicine"), ("math", "finance"), ("medicine", "finance"), ("math", "medicine", "finance"))
INDEPENDENT = {"math": "math", "medicine": "medicine-indep", "finance": "finance-indep"}
INDEPENDENT_SEED = {"math": 0, "medicine": 1000, "finance": 2000}


def combo_name(domains) -> str:
    return "+".join(domains)


def adapter_plan(seed: int) -> dict[str, tuple[tuple[str, ...], int]]:
    """Adapter name → (domains it is trained on, its seed)."""
    plan = {d: ((d,), seed) for d in DOMAINS}
    plan.update({INDEPENDENT[d]: ((d,), seed + INDEPENDENT_SEED[d]) for d in DOMAINS if INDEPENDENT[d] != d})
    plan.update({combo_name(c): (c, seed) for c in COMBOS})
    return plan


class Experiment:
    """Holds the base model, tokenised data and folders of one run (``out``)."""

    def __init__(self, out: Path, settings: dict, *, model_dir: Path, tokenizer, data_dir: Path, device):
        self.out, self.settings, self.device = out, settings, device
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        started = time.perf_counter()
        self.model = load_base(model_dir, device)
        self.train_data: dict[str, list[Example]] = {}
        self.test_data: dict[str, list[Example]] = {}
        for d in DOMAINS:
            self.train_data[d] = load_domain(
                data_dir, d, "train", tokenizer, settings["max_length"], settings["n_train"]
            )
            self.test_data[d] = load_domain(data_dir, d, "test", tokenizer, settings["max_length"], settings["n_test"])
        self.data_summary = {
            d: {
                "train": len(self.train_data[d]),
                "test": len(self.test_data[d]),
                "train_truncated": sum(e.truncated for e in self.train_data[d]),
                "test_truncated": sum(e.truncated for e in self.test_data[d]),
                "train_tokens": sum(len(e.ids) for e in self.train_data[d]),
                "test_tokens": sum(len(e.ids) for e in self.test_data[d]),
            }
            for d in DOMAINS
        }
        print(f"loaded model and data in {time.perf_counter() - started:.1f} s: {json.dumps(self.data_summary)}")

    def adapter_dir(self, seed: int, name: str) -> Path:
        return self.out / "adapters" / f"seed{seed}" / name

    def train(self, seed: int) -> None:
        for name, (domains, init_seed) in adapter_plan(seed).items():
            target = self.adapter_dir(seed, name)
            if (target / "training.json").exists():
                continue
            examples = [e for d in domains for e in self.train_data[d]]
            tmp = target.with_name(target.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            self.model = train_adapter(
                self.model, examples, tmp, seed=init_seed, settings=self.settings, pad_id=self.pad_id,
                base_model_id=self.settings["base_model_id"], device=self.device,
            )  # fmt: skip
            tmp.rename(target)
            info = json.loads((target / "training.json").read_text())
            loss = f"loss {info['first_loss']:.3f} → {info['final_loss']:.3f}"
            print(f"seed {seed} {name}: {info['steps']} steps, {loss}, {info['seconds']} s")

    def _score_all(self, model) -> dict:
        size = self.settings["eval_batch_size"]
        return {
            d: score(model, self.test_data[d], batch_size=size, pad_id=self.pad_id, device=self.device,
                     bf16=self.settings["bf16"])
            for d in DOMAINS
        }  # fmt: skip

    def _score_adapter(self, path: Path) -> dict:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(self.model, str(path))
        try:
            return self._score_all(peft_model)
        finally:
            self.model = peft_model.unload()

    def evaluate(self, seed: int) -> dict:
        """Score every model of one seed and measure the cosines; write and return ``results/seed{seed}.json``."""
        started = time.perf_counter()
        base_file = self.out / "results" / "base.json"
        if not base_file.exists():
            base_file.parent.mkdir(parents=True, exist_ok=True)
            base_file.write_text(json.dumps(self._score_all(self.model), indent=1) + "\n")
        result = {"seed": seed, "scores": {"base": json.loads(base_file.read_text())}, "training": {}}
        for name in adapter_plan(seed):
            path = self.adapter_dir(seed, name)
            result["scores"][name] = self._score_adapter(path)
            result["training"][name] = json.loads((path / "training.json").read_text())
        result["combos"] = {}
        for combo in COMBOS:
            for condition, names in (("shared", combo), ("independent", tuple(INDEPENDENT[d] for d in combo))):
                dirs = [self.adapter_dir(seed, n) for n in names]
                merged = hubmerge.merge(dirs)  # the naive sum Σ sᵢBᵢAᵢ, exact
                target = self.out / "sums" / f"seed{seed}" / condition / combo_name(combo)
                merged.save_pretrained(target, overwrite=True)
                sim = merged.report.to_dict()["similarity"]
                result["combos"][f"{condition}:{combo_name(combo)}"] = {
                    "domains": list(combo),
                    "condition": condition,
                    "adapters": list(names),
                    "sum_scores": self._score_adapter(target),
                    "rms_cosine": sim["rms_cosine"],
                    "mean_cosine": sim["mean_cosine"],
                    "a_overlap": sim["a_overlap"],
                    "interference_ratio": sim["interference_ratio"],
                    "per_module_cosine": {k: v["cosine"] for k, v in sim["per_module"].items()},
                    "warnings": sorted({w["code"] for w in merged.report.to_dict()["warnings"]}),
                }
                result["thresholds"] = sim["thresholds"]
        result["eval_seconds"] = round(time.perf_counter() - started, 1)
        path = self.out / "results" / f"seed{seed}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"seed {seed}: evaluated {len(result['scores'])} models and {len(result['combos'])} sums "
              f"in {result['eval_seconds']} s")  # fmt: skip
        return result
