"""Retention of merged domain adapters, measured with hubmerge's evaluation (resumable stages).

Three single-domain adapters (math, medicine, finance) are trained for each seed; PEFT draws
A from the seed, so adapters of the *same* seed share their initial A (the "shared"
initialisation) and adapters of *different* seeds do not ("independent"). Every merge is a
weight vector over one adapter per domain: all pairs and the triple at weight 1, and a sweep
of other weights, negative ones included. Because hubmerge's sum is exact, a weight setting is
scored with all its sources active in PEFT at scalings wᵢ·sᵢ (no merge written); the test suite
checks that this equals the merge hubmerge writes.

Per merge and per domain d of a source in it, with token-weighted NLL on held-out test rows
(answer tokens, hubmerge's ``question``/``answer`` template):

    retention_d = (L_base − L_merge) / (L_base − L_source)

Everything is cached outside the repository, keyed by the settings that produced it:
``{cache}/retention/{key}/adapters/{domain}-seed{seed}/`` (PEFT folders) and
``{cache}/retention/{key}/scores/{setting}.json`` (one domain's Σ NLL and tokens for one
weight setting), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from itertools import combinations
from pathlib import Path

from .data import DOMAINS

TRAIN_KEYS = ("base_model_id", "model_dir", "data_dir", "r", "lora_alpha", "target_modules", "learning_rate",
              "epochs", "batch_size", "max_length", "n_train", "bf16")  # fmt: skip
EVAL_KEYS = ("n_test", "eval_max_length")

# The weight sweep, per pair (w_first, w_second) and for the triple; weight 1 for all is the plain sum.
PAIR_WEIGHTS = ((1.0, 1.0), (0.5, 0.5), (1.5, 1.5), (1.0, 0.5), (0.5, 1.0), (1.0, -0.5), (-0.5, 1.0))
TRIPLE_WEIGHTS = ((1.0, 1.0, 1.0), (0.5, 0.5, 0.5), (1.0, 1.0, -0.5))


def key_of(settings: dict, keys) -> str:
    """A short digest of the settings that determine a cached item."""
    chosen = {k: settings.get(k) for k in keys}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def run_dir(cache: Path, settings: dict) -> Path:
    return cache / "retention" / key_of(settings, TRAIN_KEYS)


def adapter_dir(cache: Path, settings: dict, domain: str, seed: int) -> Path:
    return run_dir(cache, settings) / "adapters" / f"{domain}-seed{seed}"


INDEPENDENT_OFFSET = 1000  # domain k of DOMAINS takes seed s + 1000·k in the independent initialisation


def independent_seed(domain: str, seed: int) -> int:
    return seed + INDEPENDENT_OFFSET * DOMAINS.index(domain)


def adapters_of(seeds: list[int]) -> list[tuple[str, int]]:
    """(domain, seed) of every adapter the merges of ``seeds`` use, in training order."""
    found: list[tuple[str, int]] = []
    for seed in seeds:
        for domain in DOMAINS:
            for chosen in (seed, independent_seed(domain, seed)):
                if (domain, chosen) not in found:
                    found.append((domain, chosen))
    return found


def merges(seeds: list[int]) -> list[dict]:
    """Every merge measured: its adapters (domain, seed), weights and initialisation.

    Pairs and the triple take one adapter per domain. Shared: all from seed s (PEFT draws the
    same initial A). Independent: domain k from seed s + 1000·k (as the shipped examples), so
    math is the same adapter in both and the others differ.
    """
    plans = []
    for size, sweep in ((2, PAIR_WEIGHTS), (3, TRIPLE_WEIGHTS)):
        for domains in combinations(DOMAINS, size):
            for seed in seeds:
                assignments = [("shared", [seed] * size), ("independent", [independent_seed(d, seed) for d in domains])]
                for init, chosen in assignments:
                    for weights in sweep:
                        plans.append({
                            "domains": list(domains), "seeds": chosen, "weights": list(weights), "init": init,
                            "replicate": seed,
                        })  # fmt: skip
    return plans


def train_stage(cache: Path, settings: dict, seeds: list[int], trial) -> None:
    """Train the missing single-domain adapters (``trial``: an :class:`~.experiment.Experiment`)."""
    from .train import train_adapter

    for domain, seed in adapters_of(seeds):
        target = adapter_dir(cache, settings, domain, seed)
        if (target / "training.json").exists():
            continue
        tmp = target.with_name(target.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        trial.model = train_adapter(
            trial.model, trial.train_data[domain], tmp, seed=seed, settings=settings, pad_id=trial.pad_id,
            base_model_id=settings["base_model_id"], device=trial.device,
        )  # fmt: skip
        tmp.rename(target)
        info = json.loads((target / "training.json").read_text())
        print(f"{time.strftime('%H:%M:%S')} {domain}-seed{seed}: {info['steps']} steps, "
              f"loss {info['first_loss']:.3f} → {info['final_loss']:.3f}, {info['seconds']} s", flush=True)  # fmt: skip
