"""Benchmark of the evaluation: hubmerge's route against a fresh PeftModel per adapter.

Both routes score the same examples (the base, each source alone, and their
sum) on each domain, each route in its own child process (wall time and peak
RSS from ``measure.py``):

- hubmerge: ``hubmerge A B C --eval-data … --base-model DIR -o OUT``, end to end
  (merge included): the base loaded once, adapters attached side by side and
  switched, batched, logits only where a token is scored;
- naive: for each row, load the base again, wrap it in ``PeftModel.from_pretrained``,
  and score one example at a time with full logits.

The two routes' losses must agree (they score the same tokens); the report says
by how much. Results go to ``EVALUATION.md`` (written by this command, never by
hand) and ``WORKDIR/evaluation.json``.

    python benchmarks/evaluation.py            # SmolLM2-135M, the shipped adapters, N = 32 (minutes on 2 cores)
    python benchmarks/evaluation.py --quick --workdir /tmp/e --results /tmp/e/EVALUATION.md   # tiny, seconds
    python benchmarks/evaluation.py --render   # the page again from the last run's evaluation.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import threading
import time
from pathlib import Path

from measure import machine, run_child, wait_for_idle

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
DOMAINS = {"math": "math_qa.jsonl", "medicine": "medicine_qa.jsonl", "finance": "finance_qa.jsonl"}
GOAL_SPEEDUP, GOAL_SECONDS, GOAL_SAMPLES = 2.0, 240.0, 32


def _setup_full(workdir: Path, data_dir: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from experiments.paper.model import prepare_model  # the dequantised SmolLM2 GGUF, cached outside the repo

    base = prepare_model()
    adapters = {name: REPO / "examples" / "adapters" / name for name in DOMAINS}
    data = {name: data_dir / file for name, file in DOMAINS.items()}
    missing = [str(p) for p in data.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"missing data files: {', '.join(missing)} (see --data-dir)")
    return {"base": base, "adapters": adapters, "data": data, "model": "SmolLM2-135M-Instruct (dequantised Q4_1 GGUF)"}


def _setup_quick(workdir: Path) -> dict:
    """A tiny random Llama with a character tokenizer, random adapters made by PEFT, synthetic rows."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    base = workdir / "tiny-base"
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    if not (base / "config.json").exists():
        vocab = {t: i for i, t in enumerate(["<eos>", "<pad>", "<unk>", *chars])}
        core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        PreTrainedTokenizerFast(
            tokenizer_object=core, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
        ).save_pretrained(base)
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        )  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(base)
    adapters, data = {}, {}
    for seed, name in enumerate(DOMAINS, start=1):
        adapters[name] = workdir / "adapters" / name
        if not (adapters[name] / "adapter_config.json").exists():
            torch.manual_seed(seed)
            lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            model = get_peft_model(LlamaForCausalLM.from_pretrained(base), lora)
            model.peft_config["default"].base_model_name_or_path = str(base)
            model.save_pretrained(adapters[name])
        rows = [
            {"question": f"{name} question {i}?", "answer": f"answer {i * seed} for {name}.", "split": "test"}
            for i in range(12)
        ]
        data[name] = workdir / f"{name}.jsonl"
        data[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"base": base, "adapters": adapters, "data": data, "model": "tiny random Llama (quick mode)"}


class LoadSampler:
    """The 1-minute load average, sampled every few seconds while a route runs (the machine may be shared)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.samples = every_s, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        return {"mean": round(sum(self.samples) / len(self.samples), 2), "max": round(max(self.samples), 2)}


def shown(text: str) -> str:
    """``text`` without this machine's folders: the repository as ``.``, its parent as ``..``, home as ``~``."""
    for folder, label in ((REPO, "."), (REPO.parent, ".."), (Path.home(), "~")):
        text = text.replace(str(folder) + os.sep, label + "/").replace(str(folder), label)
    return text


def naive_child(spec_path: Path) -> None:
    """The naive route: a fresh base and PeftModel per row, one example at a time, full logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubmerge.evaluation.data import read_eval_data, tokenise

    spec = json.loads(spec_path.read_text())
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    examples = {
        name: tokenise(read_eval_data(name, path), tokenizer, samples=spec["samples"], max_length=spec["max_length"])[
            "examples"
        ]
        for name, path in spec["data"].items()
    }
    losses: dict = {}
    for row, adapter in spec["rows"].items():
        model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32).eval()
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapter).eval()
        with torch.no_grad():
            for name, items in examples.items():
                total, count = 0.0, 0
                for example in items:
                    ids = torch.tensor([example.ids])
                    logits = model(input_ids=ids).logits[0]
                    targets = ids[0, example.start :]
                    total += float(
                        torch.nn.functional.cross_entropy(
                            logits[example.start - 1 : -1].float(), targets, reduction="sum"
                        )
                    )
                    count += len(targets)
                losses.setdefault(name, {})[row] = total / count
        del model
    tokens = sum(sum(e.predicted for e in items) for items in examples.values())
    print(json.dumps({"losses": losses, "tokens": tokens, "seconds": time.perf_counter() - started}))


def compute_floor(setup: dict, samples: int, max_length: int, rows: int) -> dict:
    """The least time an exact evaluation of these rows can take on this machine: its matrix products alone.

    Counts the token positions each route runs (hubmerge: its own batch plan, padding and shared
    prefixes included, on CPU; the naive route: every example's tokens once per row), two FLOPs per
    weight of the model's linear layers per position, and the output layer's two FLOPs per weight
    for each position whose logits are computed (hubmerge: scored tokens only; naive: every position).
    Attention, norms, activations, LoRA side paths and loading are left out, so real runs are slower.
    The rate is the best of several float32 products of the model's own MLP shape, timed here.
    """
    import time as clock

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from hubmerge.cli_parser import build_parser
    from hubmerge.evaluation.data import read_eval_data, tokenise
    from hubmerge.evaluation.scoring import pass_cost, plan

    config = AutoConfig.from_pretrained(setup["base"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    head_weights = head.weight.numel()
    tokenizer = AutoTokenizer.from_pretrained(setup["base"])
    batch_size = build_parser().get_default("eval_batch_size")  # what the measured command ran with
    ours = naive = scored = 0
    for name, path in setup["data"].items():
        examples = tokenise(read_eval_data(name, path), tokenizer, samples=samples, max_length=max_length)["examples"]
        for batch in plan(examples, batch_size, share=True, per_pass=pass_cost(torch.device("cpu"))):
            longest = max(len(e.ids) for e in batch.examples)
            ours += batch.shared + len(batch.examples) * (longest - batch.shared)
        naive += sum(len(e.ids) for e in examples)
        scored += sum(e.predicted for e in examples)
    hidden = getattr(config, "hidden_size", 512)
    inner = getattr(config, "intermediate_size", 4 * hidden)
    x, w = torch.randn(2048, hidden), torch.randn(inner, hidden)
    best = float("inf")
    for _ in range(7):
        started = clock.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, clock.perf_counter() - started)
    rate = 2 * x.shape[0] * hidden * inner / best
    flops_ours = rows * (2 * body * ours + 2 * head_weights * scored)
    flops_naive = rows * (2 * body + 2 * head_weights) * naive
    return {
        "gflops_per_s": rate / 1e9,
        "positions": {"hubmerge": ours, "naive": naive, "scored": scored},
        "linear_weights": {"body": body, "output": head_weights},
        "hubmerge_s": flops_ours / rate,
        "naive_s": flops_naive / rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model and synthetic rows (seconds)")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "hubmerge-bench" / "evaluation")
    parser.add_argument("--results", type=Path, default=HERE / "EVALUATION.md")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--wait-idle", type=float, default=0.0, help="wait up to S seconds for a quiet machine")
    parser.add_argument("--render", action="store_true", help="rewrite --results from WORKDIR/evaluation.json only")
    parser.add_argument("--naive-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_child:
        naive_child(args.naive_child)
        return
    if args.render:  # the page of the last run, without measuring again
        args.results.write_text(render(json.loads((args.workdir / "evaluation.json").read_text())))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    setup = _setup_quick(args.workdir) if args.quick else _setup_full(args.workdir, args.data_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    adapters = [str(p) for p in setup["adapters"].values()]
    merged = args.workdir / "merged"
    built = run_child([PYTHON, "-m", "hubmerge", *adapters, "-o", str(merged), "--overwrite"], env=env)
    if not built.ok:
        raise SystemExit(f"the merge failed: {built.error()}")
    waited, load = wait_for_idle(args.wait_idle)
    out = args.workdir / "evaluated"
    command = [PYTHON, "-m", "hubmerge", *adapters, "-o", str(out), "--overwrite", "--device", "cpu"]
    command += ["--base-model", str(setup["base"]), "--eval-samples", str(args.samples)]
    command += ["--eval-max-length", str(args.max_length)]
    for name, path in setup["data"].items():
        command += ["--eval-data", f"{name}={path}"]
    with LoadSampler() as ours_load:
        ours = run_child(command, env=env)
    if not ours.ok:
        raise SystemExit(f"the hubmerge route failed: {ours.error()}")
    evaluation = json.loads((out / "hubmerge_report.json").read_text())["evaluation"]
    # kept before the naive route starts: on a loaded machine it can take hours, and may be stopped
    partial = {"wall_s": ours.wall_s, "peak_rss_mb": ours.peak_rss_mb, "eval_s": evaluation["seconds"]}
    partial |= {"load": ours_load.summary(), "samples": args.samples, "printed": shown(ours.stdout)}
    (args.workdir / "evaluation.hubmerge.json").write_text(json.dumps(partial, indent=2))
    spec = args.workdir / "naive.json"
    rows = {"base": None, **{n: str(p) for n, p in setup["adapters"].items()}, "merged": str(merged)}
    spec.write_text(
        json.dumps(
            {
                "base": str(setup["base"]),
                "rows": rows,
                "data": {n: str(p) for n, p in setup["data"].items()},
                "samples": args.samples,
                "max_length": args.max_length,
            }
        )
    )
    with LoadSampler() as naive_load:
        naive = run_child([PYTHON, str(Path(__file__).resolve()), "--naive-child", str(spec)], env=env)
    if not naive.ok:
        raise SystemExit(f"the naive route failed: {naive.error()}")
    naive_out = naive.json_tail()
    diff = 0.0
    for name, domain in evaluation["domains"].items():
        ours_losses = {"base": domain["loss"]["base"], "merged": domain["loss"]["merged"], **domain["loss"]["sources"]}
        for row, value in ours_losses.items():
            diff = max(diff, abs(value - naive_out["losses"][name][row]))
    tokens = sum(d["tokens"] for d in evaluation["domains"].values())
    floor = compute_floor(setup, args.samples, args.max_length, len(rows))
    results = {
        "meta": {
            "command": shlex.join(["python", "benchmarks/evaluation.py", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick,
            "model": setup["model"],
            "machine": machine(PYTHON),
            "waited_for_idle_s": round(waited, 1),
            "load_average_at_start": round(load, 2),
            "samples": args.samples,
            "max_length": args.max_length,
        },
        "rows": len(rows),
        "domains": len(setup["data"]),
        "tokens_per_row": tokens,
        "hubmerge": {
            "wall_s": ours.wall_s,
            "peak_rss_mb": ours.peak_rss_mb,
            "eval_s": evaluation["seconds"],
            "load": ours_load.summary(),
        },
        "naive": {
            "wall_s": naive.wall_s,
            "peak_rss_mb": naive.peak_rss_mb,
            "eval_s": naive_out["seconds"],
            "load": naive_load.summary(),
        },
        "max_loss_difference": diff,
        "floor": floor,
        "printed": shown(ours.stdout),
        "hubmerge_command": shown(shlex.join(["hubmerge", *command[3:]])),
    }
    (args.workdir / "evaluation.json").write_text(json.dumps(results, indent=2))
    args.results.write_text(render(results))
    print(json.dumps({k: results[k] for k in ("hubmerge", "naive", "max_loss_difference")}))


def _load(route: dict) -> str:
    load = route.get("load")
    return f"{load['mean']:.1f} / {load['max']:.1f}" if load else "not recorded"


def _contention(results: dict) -> str:
    cores = results["meta"]["machine"].get("cores") or 1
    loads = [r["load"]["mean"] for r in (results["hubmerge"], results["naive"]) if r.get("load")]
    if not loads or max(loads) <= cores:
        return f"the load average stayed at or under the {cores} cores: the times are those of a quiet machine"
    return (
        f"the load average ran above the {cores} cores (other work shared them), so the absolute times are "
        "longer than on a quiet machine, and the ratio between the routes depends on how the load moved"
    )


def _secs(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _floor_lines(results: dict) -> list[str]:
    floor = results.get("floor")
    if not floor:
        return []
    ours, naive = results["hubmerge"]["wall_s"], results["naive"]["wall_s"]
    positions = floor["positions"]
    reach = naive / floor["hubmerge_s"]
    return [
        "## The compute floor: what an exact evaluation cannot go under here",
        "",
        f"Matrix products alone, at this machine's measured float32 rate ({floor['gflops_per_s']:.0f} GFLOP/s, "
        "the model's MLP shape), with attention, norms, activations, LoRA side paths and loading left out "
        "(`compute_floor` in `benchmarks/evaluation.py`):",
        "",
        "| route | token positions per row | of which through the output layer | floor (s) | measured (s) | "
        "measured / floor |",
        "|---|---|---|---|---|---|",
        f"| hubmerge | {positions['hubmerge']} | {positions['scored']} (scored tokens) | "
        f"{_secs(floor['hubmerge_s'])} | {_secs(ours)} | {ours / floor['hubmerge_s']:.2f} |",
        f"| naive | {positions['naive']} | {positions['naive']} (every position) | {_secs(floor['naive_s'])} | "
        f"{_secs(naive)} | {naive / floor['naive_s']:.2f} |",
        "",
        f"- an exact evaluation of these rows that did nothing but hubmerge's matrix products at full speed "
        f"would take {_secs(floor['hubmerge_s'])} s; the naive route's {_secs(naive)} s is {reach:.2f}× that. "
        f"{GOAL_SPEEDUP:g}× means finishing in {_secs(naive / GOAL_SPEEDUP)} s, "
        f"{naive / GOAL_SPEEDUP / floor['hubmerge_s']:.2f}× the floor, with attention, norms, activations, "
        f"process start, loading and the merge all inside that margin; hubmerge's whole process took "
        f"{ours / floor['hubmerge_s']:.2f}× the floor",
        "- hubmerge runs fewer positions than the naive route (shared prefixes run once) and the output layer "
        "on scored tokens only; what is left is the model's own forward pass, once per row and domain",
        "",
    ]


def render(results: dict) -> str:
    meta, ours, naive = results["meta"], results["hubmerge"], results["naive"]
    speedup = naive["wall_s"] / ours["wall_s"]
    scored = results["rows"] * results["tokens_per_row"]
    m = meta["machine"]
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    lines = [
        "# Evaluation benchmark",
        "",
        f"Written by `{meta['command']}` on {meta['date']}; do not edit by hand.",
        "",
        "## Machine and run",
        "",
        f"- {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gb')} GB RAM; load average "
        f"{meta['load_average_at_start']} when the measured runs started (the machine is shared)",
        f"- model: {meta['model']}; {results['rows']} rows (base, {results['rows'] - 2} sources, their sum) × "
        f"{results['domains']} domains, N = {meta['samples']} examples per domain, at most {meta['max_length']} "
        f"tokens each: {results['tokens_per_row']} scored tokens per row",
        "",
        "## Evaluation: hubmerge against a fresh PeftModel per adapter",
        "",
        "| route | wall time (s) | of which evaluating, model loads included (s) | scored tokens / s | "
        "peak RSS (MB) | load average during the run (mean / max) |",
        "|---|---|---|---|---|---|",
        f"| hubmerge (merge + evaluation, one process) | {ours['wall_s']:.1f} | {ours['eval_s']:.1f} | "
        f"{scored / ours['wall_s']:.0f} | {ours['peak_rss_mb']:.0f} | {_load(ours)} |",
        f"| naive (fresh base + PeftModel per row, batch 1) | {naive['wall_s']:.1f} | {naive['eval_s']:.1f} | "
        f"{scored / naive['wall_s']:.0f} | {naive['peak_rss_mb']:.0f} | {_load(naive)} |",
        "",
        f"- speed-up, whole processes: **{speedup:.2f}×** (goal ≥ {GOAL_SPEEDUP:g}×: {met(speedup >= GOAL_SPEEDUP)})",
        f"- hubmerge's total: **{ours['wall_s']:.0f} s** (goal ≤ {GOAL_SECONDS:.0f} s at N = {GOAL_SAMPLES}: "
        + (
            met(ours["wall_s"] <= GOAL_SECONDS)
            if meta["samples"] == GOAL_SAMPLES
            else f"not measured, this run is N = {meta['samples']}"
        )
        + ")",
        f"- {_contention(results)}",
        f"- the two routes' losses differ by at most {results['max_loss_difference']:.2e} nats per token "
        "(same tokens; batching and padding change the float rounding only)",
        "",
        *_floor_lines(results),
        "## What hubmerge printed",
        "",
        f"`{results['hubmerge_command']}`",
        "",
        "```text",
        results["printed"].rstrip(),
        "```",
        "",
        "## How this was measured",
        "",
        "Each route is one child process; wall time includes the interpreter start and every import, peak RSS is "
        "that process's own (`measure.py`). Tokens per second count every row's scored tokens over the whole "
        "process. The naive route reads and tokenises the data with hubmerge's own reader, so both score the "
        "same tokens.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
