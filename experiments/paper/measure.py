"""The measurement stage of the retention experiment: losses of weight settings with hubmerge's evaluation.

The base is loaded once (:func:`hubmerge.evaluation.model.load_base_model`) and every trained
adapter is attached to it (:class:`hubmerge.evaluation.model.Evaluator`). A weight setting
{adapter: w} is scored with those adapters active at PEFT scalings w·s: for a sum this is
exactly the adapter hubmerge writes (Σ wᵢ·sᵢ·Bᵢ·Aᵢ), so nothing is merged or reloaded.
Each (setting, domain) score is cached as JSON; a rerun skips what is there.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .data import DOMAINS, FILES
from .retention import EVAL_KEYS, TRAIN_KEYS, adapter_dir, adapters_of, key_of, merges, run_dir

ORDER_TIERS = 10  # merges are measured sweep position first, so a cut-short run has every combination at w = 1


def adapter_name(domain: str, seed: int) -> str:
    return f"{domain}-seed{seed}"


def setting_id(weights: dict[str, float]) -> str:
    """A stable file name for a weight setting: ``finance-seed0@1+math-seed0@-0.5``; ``base`` when empty."""
    return "+".join(f"{name}@{weights[name]:g}" for name in sorted(weights)) or "base"


def scores_dir(cache: Path, settings: dict) -> Path:
    return run_dir(cache, settings) / "scores" / key_of(settings, TRAIN_KEYS + EVAL_KEYS)


def plan_settings(seeds: list[int]) -> list[tuple[dict[str, float], list[str]]]:
    """(weights, domains to score) in measuring order: the base, each adapter alone, then the merges."""
    todo: list[tuple[dict[str, float], list[str]]] = [({}, list(DOMAINS))]
    todo += [({adapter_name(d, s): 1.0}, [d]) for d, s in adapters_of(seeds)]
    plans = merges(seeds)
    # sweep position (all weights 1 first), then initialisation, then seed: a run cut short stays balanced
    positions: dict[tuple, int] = {}
    keyed = []
    for plan in plans:
        group = (tuple(plan["domains"]), tuple(plan["seeds"]), plan["init"])
        position = positions.get(group, 0)
        positions[group] = position + 1
        keyed.append(((position, plan["init"] != "shared", plan["seeds"][0]), plan))
    seen = {setting_id(w) for w, _ in todo}
    for _, plan in sorted(keyed, key=lambda item: item[0]):
        weights = {adapter_name(d, s): w for d, s, w in zip(plan["domains"], plan["seeds"], plan["weights"])}
        if setting_id(weights) not in seen:
            seen.add(setting_id(weights))
            # a subtracted adapter is not meant to keep its skill: its domain is not scored
            todo.append((weights, [d for d, w in zip(plan["domains"], plan["weights"]) if w > 0]))
    return todo


@contextmanager
def scaled(evaluator, weights: dict[str, float], names: dict[str, str]):
    """Activate the adapters of ``weights`` with PEFT scalings multiplied by their weights; restore after."""
    from peft.tuners.lora import LoraLayer

    saved = []
    for module in evaluator.model.modules():
        if isinstance(module, LoraLayer):
            for adapter, weight in weights.items():
                name = names[adapter]
                if name in module.scaling:
                    saved.append((module, name, module.scaling[name]))
                    module.scaling[name] = module.scaling[name] * weight
    try:
        yield [names[a] for a in weights]
    finally:
        for module, name, value in saved:
            module.scaling[name] = value


def measure_stage(cache: Path, settings: dict, seeds: list[int], *, deadline: float | None = None) -> int:
    """Score every planned (setting, domain) not cached yet; stop at ``deadline`` (time.time()). Returns #new."""
    from hubmerge.adapter import load_adapter
    from hubmerge.evaluation.data import read_eval_data, tokenise
    from hubmerge.evaluation.model import Evaluator, load_base_model

    from .train import autocast

    folder = scores_dir(cache, settings)
    # only what the trained adapters allow: measuring can run while later adapters still train
    ready = [(d, s) for d, s in adapters_of(seeds) if (adapter_dir(cache, settings, d, s) / "training.json").exists()]
    available = {adapter_name(d, s) for d, s in ready}
    todo = [(w, d) for w, domains in plan_settings(seeds) for d in domains
            if set(w) <= available and not _cached(folder, w, d)]  # fmt: skip
    if not todo:
        return 0
    base = load_base_model(settings["model_dir"], device="cpu")
    adapters = [load_adapter(adapter_dir(cache, settings, d, s), name=adapter_name(d, s)) for d, s in ready]
    evaluator = Evaluator(base, adapters, batch_size=settings["eval_batch_size"])
    names = dict(zip((a.name for a in adapters), evaluator.sources))
    examples = {}
    for d in DOMAINS:
        data = read_eval_data(d, Path(settings["data_dir"]) / FILES[d], split="test")
        examples[d] = tokenise(data, base.tokenizer, samples=settings["n_test"], max_length=settings["eval_max_length"])
    done = 0
    try:
        for weights, domain in todo:
            if deadline is not None and time.time() > deadline:
                break
            path = folder / domain / f"{setting_id(weights)}.json"
            if path.exists() or not _claim(path):  # another measuring process has it, or had it
                continue
            started = time.perf_counter()
            items = examples[domain]["examples"]
            # bf16 matmuls where the settings train in bf16 (3x faster on CPU); float32 otherwise
            with autocast(evaluator.device, settings["bf16"]):
                if weights:
                    with scaled(evaluator, weights, names) as active:
                        nll, tokens = evaluator.score(active, items, label=domain)
                else:
                    nll, tokens = evaluator.score(None, items, label=domain)
            record = {"weights": weights, "domain": domain, "nll": nll, "tokens": tokens,
                      "examples": len(items), "truncated": examples[domain]["truncated"],
                      "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
            tmp = path.with_suffix(".part")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            tmp.rename(path)
            path.with_suffix(".lock").unlink(missing_ok=True)
            done += 1
            print(f"{time.strftime('%H:%M:%S')} [{done}/{len(todo)}] {domain} {setting_id(weights)}: "
                  f"loss {nll / tokens:.4f} ({record['seconds']} s)", flush=True)  # fmt: skip
    finally:
        evaluator.close()
    return done


def _claim(path: Path) -> bool:
    """Take the score at ``path`` for this process (a lock file holding its pid); False if a live one holds it.

    Several measuring processes can then share one plan: each skips what another is scoring.
    """
    lock = path.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            with open(lock, "x") as handle:
                handle.write(str(os.getpid()))
            return True
        except FileExistsError:
            try:
                owner = int(lock.read_text() or 0)
                os.kill(owner, 0)  # raises when that process is gone
                return False
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)  # left by a process that was stopped: take it over
            except (FileNotFoundError, PermissionError):
                return False
    return False


def _cached(folder: Path, weights: dict[str, float], domain: str) -> bool:
    return (folder / domain / f"{setting_id(weights)}.json").exists()


def load_scores(cache: Path, settings: dict) -> dict[tuple[str, str], dict]:
    """(setting id, domain) → the cached record."""
    folder = scores_dir(cache, settings)
    found = {}
    for path in sorted(folder.glob("*/*.json")):
        record = json.loads(path.read_text())
        found[(setting_id(record["weights"]), record["domain"])] = record
    return found
