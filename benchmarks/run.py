"""Benchmarks: hubmerge against the I/O floor, the PEFT route and dense analysis, in one run.

Every measurement is a whole child process (wall time and its own peak RSS,
see ``measure.py``), repeated and summarised by its median. The results go
to ``RESULTS.md`` (rendered by ``report.py``) and, in full detail, to
``WORKDIR/results.json``. Synthetic adapters and base checkpoints are cached
in WORKDIR, outside the repository.

    python benchmarks/run.py                  # the full run (≈ 45–60 min on 2 cores), writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick --workdir /tmp/b --results /tmp/b/RESULTS.md   # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from measure import Series, machine, mem_available_gb, own_peak_rss_mb, run_child, wait_for_idle
from report import render
from synth import SHAPES, adapter_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
# The PEFT route keeps the whole bfloat16 base in memory; refuse it unless this much is free on top.
MEMORY_MARGIN_GB = 4.0


def base_params(shape) -> int:
    """Parameters of the Llama base model of ``shape`` (embeddings, layers, norms, head)."""
    per_layer = sum(i * o for i, o in shape.projections().values()) + 2 * shape.hidden
    head = 0 if shape.tie_word_embeddings else shape.vocab * shape.hidden
    return shape.vocab * shape.hidden + shape.layers * per_layer + shape.hidden + head


class Bench:
    """One benchmark run: its options, its results so far, and where they are written."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workdir: Path = args.workdir
        self.started = time.monotonic()
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        self.results: dict = {
            "meta": {
                "command": shlex.join(
                    [os.path.relpath(PYTHON, REPO) if PYTHON.startswith(str(REPO)) else PYTHON, *sys.argv]
                ),
                "mode": "quick" if args.quick else "full",
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "repeats": args.repeats,
                "warmup": args.warmup,
                "git": git_state(),
            },
            "data": {},
            "startup": {},
            "e2e": [],
            "peft": [],
            "analysis": [],
            "methods": [],
            "skipped": [],
            "complete": False,
        }

    # -- bookkeeping -------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fits(self, what: str, estimate_s: float) -> bool:
        budget = self.args.budget_min * 60 if self.args.budget_min else None
        if budget is None or self.elapsed() + estimate_s <= budget:
            return True
        self.skip(
            what,
            f"time budget: {self.elapsed() / 60:.0f} min elapsed, about {estimate_s / 60:.0f} min "
            f"more needed, budget {self.args.budget_min:g} min (--budget-min)",
        )
        return False

    def skip(self, what: str, reason: str) -> None:
        self.results["skipped"].append({"what": what, "reason": reason})
        log(f"skipped {what}: {reason}")

    def save(self) -> None:
        self.results["meta"]["elapsed_s"] = self.elapsed()
        self.results["meta"]["orchestrator_peak_rss_mb"] = own_peak_rss_mb()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "results.json").write_text(json.dumps(self.results, indent=1) + "\n")
        self.args.results.parent.mkdir(parents=True, exist_ok=True)
        self.args.results.write_text(render(self.results))

    def series(self, argv: list[str], *, repeats: int, warmup: int = 0, timeout: float = 1800, before=None) -> Series:
        found = Series()
        for index in range(warmup + repeats):
            if before:
                before()
            os.sync()  # no dirty pages of an earlier run left to throttle this one's writes
            run = run_child(argv, env=self.env, timeout=timeout, cwd=REPO)
            if not run.ok:
                log(f"  failed ({run.error()}): {shlex.join(argv)}")
            if index >= warmup or not run.ok:
                found.runs.append(run)
            if not run.ok:
                break
        return found

    def out(self, name: str) -> Path:
        return self.workdir / "out" / name

    # -- the sections ------------------------------------------------------------
    def data(self, shapes: list[str], count: int) -> dict[str, list[Path]]:
        found = {}
        for name in shapes:
            # In a child: generating imports torch, and this process must stay small (see own_peak_rss_mb).
            argv = [
                PYTHON,
                str(HERE / "synth.py"),
                "--shape",
                name,
                "--count",
                str(count),
                "--workdir",
                str(self.workdir),
            ]
            start = time.perf_counter()
            run = run_child(argv, env=self.env, timeout=3600, cwd=REPO)
            if not run.ok:
                raise RuntimeError(f"generating the {name} adapters failed: {run.error()}")
            found[name] = [adapter_dir(self.workdir, SHAPES[name], i) for i in range(count)]
            self.results["data"][name] = {
                "label": SHAPES[name].label,
                "adapter_mb": SHAPES[name].adapter_bytes() / 1e6,
                "files_mb": (found[name][0] / "adapter_model.safetensors").stat().st_size / 1e6,
                "prepare_s": time.perf_counter() - start,
                "generated": run.json_tail().get("generated"),
                "base_params": base_params(SHAPES[name]),
            }
        return found

    def startup(self) -> None:
        reps = max(self.args.repeats, 5) if not self.args.quick else 1
        self.results["startup"] = {
            "hubmerge_help": self.series(
                [PYTHON, "-m", "hubmerge", "--help"], repeats=reps, warmup=self.args.warmup
            ).to_dict(),
            "import_torch": self.series(
                [PYTHON, "-c", "import torch, safetensors.torch"], repeats=reps, warmup=self.args.warmup
            ).to_dict(),
        }

    def e2e(self, shape: str, dirs: list[Path], n: int) -> None:
        inputs = [str(d) for d in dirs[:n]]
        hub_out, floor_out = self.out(f"hubmerge-{shape}-{n}"), self.out(f"floor-{shape}-{n}.safetensors")
        figure_out = self.out(f"hubmerge-figure-{shape}-{n}")
        # The merge without the figure is what the target is about; with it (the default), the heatmap's
        # cost (matplotlib's import and drawing) is measured side by side.
        hub_argv = [PYTHON, "-m", "hubmerge", *inputs, "-o", str(hub_out), "--overwrite", "--no-figure"]
        figure_argv = [PYTHON, "-m", "hubmerge", *inputs, "-o", str(figure_out), "--overwrite"]
        floor_argv = [PYTHON, str(HERE / "floor.py"), *inputs, str(floor_out)]

        def clean():
            shutil.rmtree(hub_out, ignore_errors=True)
            shutil.rmtree(figure_out, ignore_errors=True)
            floor_out.unlink(missing_ok=True)

        floor_out.parent.mkdir(parents=True, exist_ok=True)
        hub, figure, floor = Series(), Series(), Series()
        trio = [(floor_argv, floor), (hub_argv, hub), (figure_argv, figure)]
        for index in range(self.args.warmup + self.args.repeats):  # interleaved, so drift hits all alike
            clean()
            for argv, series in trio[index % 3 :] + trio[: index % 3]:
                os.sync()  # no dirty pages of an earlier run left to throttle this one's writes
                run = run_child(argv, env=self.env, timeout=1800, cwd=REPO)
                if index >= self.args.warmup or not run.ok:
                    series.runs.append(run)
                if not run.ok:
                    log(f"  failed ({run.error()}): {shlex.join(argv)}")
        # What the merge computes that the floor does not, timed alone: every pair's cosine in every module.
        analysis = run_child(
            [PYTHON, str(HERE / "analysis.py"), "--skip-dense", "--skip-api", "--rank-repeats", "3", *inputs],
            env=self.env, timeout=1800, cwd=REPO,
        )  # fmt: skip
        timed = analysis.json_tail() if analysis.ok else {}
        self.results["e2e"].append(
            {
                "shape": shape,
                "n": n,
                "analysis_s": timed.get("rank_space_s"),
                "products_s": timed.get("products_s"),
                "matmul_gflops": timed.get("float32_matmul_gflops"),
                "in_mb": sum((d / "adapter_model.safetensors").stat().st_size for d in dirs[:n]) / 1e6,
                "hubmerge_out_mb": size_mb(hub_out / "adapter_model.safetensors"),
                "floor_out_mb": size_mb(floor_out),
                "hubmerge": hub.to_dict(),
                "hubmerge_figure": figure.to_dict(),
                "floor": floor.to_dict(),
                "sha256_s": sha256_seconds(dirs[:n]),
            }
        )
        log(
            f"  e2e {shape} N={n}: hubmerge {hub.wall()} s / {hub.rss()} MB (with the figure {figure.wall()} s), "
            f"floor {floor.wall()} s / {floor.rss()} MB"
        )
        clean()

    def profile(self, shape: str, dirs: list[Path], n: int) -> None:
        out = self.out(f"profile-{shape}-{n}")
        argv = [PYTHON, str(HERE / "profile_cli.py"), *map(str, dirs[:n]), "-o", str(out), "--overwrite"]
        series = self.series(argv, repeats=1, before=lambda: shutil.rmtree(out, ignore_errors=True))
        self.results.setdefault("profile", []).append({"shape": shape, "n": n, **series.to_dict()})
        shutil.rmtree(out, ignore_errors=True)

    def analysis(self, shape: str, dirs: list[Path], n: int, repeats: int, *, dense: bool = True) -> None:
        argv = [PYTHON, str(HERE / "analysis.py"), *map(str, dirs[:n]), *([] if dense else ["--skip-dense"])]
        series = self.series(argv, repeats=repeats)
        self.results["analysis"].append({"shape": shape, "n": n, **series.to_dict()})
        log(f"  analysis {shape} N={n}: {series.good[0].json_tail() if series.good else 'failed'}")

    def hubmerge_method(
        self, shape: str, dirs: list[Path], method: str, repeats: int, extra=(), *, keep: bool = False
    ) -> Series:
        out = self.out(f"hubmerge-{method}-{shape}")
        argv = [
            PYTHON,
            "-m",
            "hubmerge",
            *map(str, dirs[:2]),
            "--method",
            method,
            *extra,
            "-o",
            str(out),
            "--overwrite",
            "--json",
        ]
        series = self.series(argv, repeats=repeats, warmup=0, before=lambda: shutil.rmtree(out, ignore_errors=True))
        kept = None
        if series.good:
            report = json.loads(series.good[-1].stdout)
            kept = (report.get("kept_energy") or {}).get("overall")
        self.results["methods"].append(
            {
                "shape": shape,
                "n": 2,
                "tool": "hubmerge",
                "method": method,
                "options": list(extra),
                "kept_energy": kept,
                **series.to_dict(),
            }
        )
        log(f"  hubmerge --method {method} {shape}: {series.wall()} s / {series.rss()} MB")
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        return series

    def peft_fits(self, shape: str, what: str) -> bool:
        need = base_params(SHAPES[shape]) * 2 / 1024**3 + MEMORY_MARGIN_GB
        available = mem_available_gb()
        if available < need:
            self.skip(
                what,
                f"needs about {need:.0f} GB free (bf16 base {need - MEMORY_MARGIN_GB:.1f} GB + "
                f"{MEMORY_MARGIN_GB:g} GB); MemAvailable was {available:.1f} GB",
            )
            return False
        return True

    def base_checkpoint(self, shape: str) -> Path:
        directory = self.workdir / f"base-{shape}"
        stamp = directory / ".bench-stamp"
        expected = json.dumps(SHAPES[shape].llama_config(), sort_keys=True)
        if not (stamp.is_file() and stamp.read_text() == expected):
            shutil.rmtree(directory, ignore_errors=True)
            argv = [PYTHON, str(HERE / "peft_route.py"), "--shape", shape, "--save-base", str(directory)]
            run = run_child(argv, env=self.env, timeout=3600, cwd=REPO)
            if not run.ok:
                raise RuntimeError(f"saving the {shape} base failed: {run.error()}")
            stamp.write_text(expected)
            self.results["data"][shape]["save_base_s"] = run.wall_s
        return directory

    def peft(
        self,
        shape: str,
        dirs: list[Path],
        n: int,
        *,
        base: str,
        combination: str = "cat",
        repeats: int,
        extra=(),
        compare_with: Path | None = None,
    ) -> Series:
        out = self.out(f"peft-{combination}-{shape}-{n}")
        argv = [
            PYTHON,
            str(HERE / "peft_route.py"),
            "--shape",
            shape,
            "--base",
            base,
            "--combination",
            combination,
            *extra,
            "-o",
            str(out),
            *map(str, dirs[:n]),
        ]
        series = self.series(argv, repeats=repeats, timeout=3600, before=lambda: shutil.rmtree(out, ignore_errors=True))
        entry = {
            "shape": shape,
            "n": n,
            "base": "config" if base == "config" else "checkpoint",
            "combination": combination,
            "options": list(extra),
            **series.to_dict(),
        }
        if compare_with is not None and series.good:
            # The same merge, made by hubmerge: how far apart are the two results?
            argv = [PYTHON, str(HERE / "compare.py"), str(compare_with), str(out)]
            run = run_child(argv, env=self.env, timeout=1800, cwd=REPO)
            entry["compare"] = run.json_tail() if run.ok else {"error": run.error()}
            log(f"  compared with {compare_with.name}: {entry['compare']}")
        (self.results["peft"] if combination == "cat" else self.results["methods"]).append(
            entry if combination == "cat" else {**entry, "tool": "peft", "method": combination}
        )
        log(f"  peft {combination} {shape} N={n} base={entry['base']}: {series.wall()} s / {series.rss()} MB")
        shutil.rmtree(out, ignore_errors=True)
        return series


def sha256_seconds(dirs: list[Path]) -> float:
    """What a first merge of these folders spends hashing them (one core, the files in the page cache).

    Later merges of unchanged folders take the digests from hubmerge's digest cache, as the timed runs
    after the warm-up do.
    """
    import hashlib

    start = time.perf_counter()
    for directory in dirs:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            with open(directory / name, "rb") as handle:
                hashlib.file_digest(handle, "sha256")
    return time.perf_counter() - start


def size_mb(path: Path) -> float | None:
    return path.stat().st_size / 1e6 if path.is_file() else None


def git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "changed_files": changed}


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: checks the scripts work")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("~/.cache/hubmerge-bench").expanduser(),
        help="cache of generated adapters and base checkpoints, and scratch outputs",
    )
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md", help="where to write the Markdown")
    parser.add_argument("--repeats", type=int, help="runs per measurement (default 3; quick 1)")
    parser.add_argument("--counts", default=None, help="adapter counts N, comma-separated (default 2,5,10; quick 2)")
    parser.add_argument("--shapes", default=None, help="shapes, comma-separated (default 1b,8b; quick tiny)")
    parser.add_argument("--budget-min", type=float, help="skip slow steps ending past this (min; default 60)")
    parser.add_argument(
        "--wait-idle", type=float, help="first wait up to this many seconds for load < 1 (default 300; quick 0)"
    )
    parser.add_argument("--skip-peft", action="store_true", help="leave out the PEFT measurements")
    parser.add_argument(
        "--only",
        choices=["e2e"],
        help="run one section alone (e2e: hubmerge with and without the figure vs the I/O floor)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (1 if quick else 3)
    args.warmup = 0 if quick else 1
    args.counts = [int(c) for c in (args.counts or ("2" if quick else "2,5,10")).split(",")]
    args.shapes = (args.shapes or ("tiny" if quick else "1b,8b")).split(",")
    args.budget_min = args.budget_min if args.budget_min is not None else (None if quick else 60.0)
    args.wait_idle = args.wait_idle if args.wait_idle is not None else (0.0 if quick else 300.0)
    args.workdir = args.workdir.expanduser().resolve()
    args.results = args.results.expanduser().resolve()
    if unknown := [s for s in args.shapes if s not in SHAPES]:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    meta = bench.results["meta"]
    waited, _ = wait_for_idle(args.wait_idle) if args.wait_idle else (0.0, 0.0)
    bench.started = time.monotonic()  # the budget counts from here, not from the wait
    meta.update(waited_for_idle_s=waited, load_before=os.getloadavg(), machine=machine(PYTHON))
    log(f"workdir {args.workdir}; results {args.results}; load {meta['load_before']}")

    log("generating adapters")
    dirs = bench.data(args.shapes, max(args.counts))
    os.sync()  # freshly written adapters must not be flushed to disk during the first measurements
    bench.save()
    # hubmerge measured as installed: a wheel's modules are byte-compiled at install, and with
    # PYTHONDONTWRITEBYTECODE set a checkout's would otherwise be compiled again by every child.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "hubmerge")], check=True, capture_output=True)
    log("start-up")
    bench.startup()
    bench.save()
    log("end to end vs the I/O floor")
    for shape in args.shapes:
        for n in args.counts:
            bench.e2e(shape, dirs[shape], n)
            bench.save()
    if args.only == "e2e":
        return finish(bench, meta)
    log("profiling hubmerge")
    for n in sorted({2, max(args.counts)}):
        bench.profile(args.shapes[-1], dirs[args.shapes[-1]], n)
    bench.save()
    log("analysis: rank space vs dense")
    for index, shape in enumerate(args.shapes):
        bench.analysis(shape, dirs[shape], 2, args.repeats if index == 0 else 1)  # dense 8B: ~100 s a run
        if index == 0 and not args.quick and max(args.counts) >= 5:
            bench.analysis(shape, dirs[shape], 5, 1)
        if max(args.counts) > 2:  # every pair of the most adapters: rank space only (dense would take hours)
            bench.analysis(shape, dirs[shape], max(args.counts), args.repeats, dense=False)
        bench.save()
    log("merge methods in hubmerge")
    for index, shape in enumerate(args.shapes):
        bench.hubmerge_method(shape, dirs[shape], "svd", args.repeats, keep=index == 0)  # compared with PEFT's
        bench.save()
    slow_steps(bench, dirs)
    return finish(bench, meta)


def finish(bench: Bench, meta: dict) -> int:
    meta.update(
        load_after=os.getloadavg(),
        mem_available_after_gb=round(mem_available_gb(), 1),
        finished=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        only=bench.args.only,
    )
    bench.results["complete"] = True
    bench.save()
    log(f"done in {bench.elapsed() / 60:.1f} min: {bench.args.results}")
    return 0


def slow_steps(bench: Bench, dirs: dict[str, list[Path]]) -> None:
    """hubmerge ties and the PEFT route, most important first, the slowest ones within the time budget."""
    args, small = bench.args, bench.args.shapes[0]  # the PEFT comparisons run on the first (smallest) shape
    ties = ("--rank", "16")
    log(f"hubmerge --method ties at {small}")
    small_ties = bench.hubmerge_method(small, dirs[small], "ties", 1, ties)  # dense per module: minutes at 1B
    bench.save()
    checkpoint = None
    if args.skip_peft:
        bench.skip("PEFT measurements", "--skip-peft")
    elif bench.peft_fits(small, f"PEFT route at {small}"):
        log("PEFT route")
        bench.peft(small, dirs[small], 2, base="config", repeats=args.repeats)
        bench.save()
        checkpoint = str(bench.base_checkpoint(small))
        for n in args.counts:
            bench.peft(small, dirs[small], n, base=checkpoint, repeats=args.repeats)
            bench.save()
        for shape in args.shapes[1:]:
            if bench.peft_fits(shape, f"PEFT route at {shape}") and bench.fits(f"PEFT route at {shape}", 300):
                bench.peft(shape, dirs[shape], 2, base="config", repeats=1)
                bench.save()
        if bench.fits(f"PEFT add_weighted_adapter('svd') at {small}", 0 if args.quick else 800):
            ours = bench.out(f"hubmerge-svd-{small}")
            bench.peft(small, dirs[small], 2, base=checkpoint, combination="svd", repeats=1, compare_with=ours)
            bench.save()
    for shape in args.shapes[1:]:
        # Dense methods cost in proportion to the dense elements of the modules.
        scale = dense_elements(SHAPES[shape]) / dense_elements(SHAPES[small])
        estimate = (small_ties.wall() or 60) * scale
        if bench.fits(f"hubmerge --method ties at {shape}", estimate):
            log(f"hubmerge --method ties at {shape} (about {estimate / 60:.0f} min)")
            bench.hubmerge_method(shape, dirs[shape], "ties", 1, ties)
            bench.save()
    if checkpoint is not None:
        svd = [m for m in bench.results["methods"] if m["tool"] == "peft" and m["method"] == "svd"]
        estimate = 0 if args.quick else (svd[0]["wall_s"] if svd and svd[0]["wall_s"] else 800)
        if bench.fits(f"PEFT add_weighted_adapter('ties_svd') at {small}", estimate):
            extra = ("--density", "0.5", "--svd-rank", "16")
            bench.peft(small, dirs[small], 2, base=checkpoint, combination="ties_svd", repeats=1, extra=extra)


def dense_elements(shape) -> int:
    return shape.layers * sum(i * o for i, o in shape.projections().values())


if __name__ == "__main__":
    raise SystemExit(main())
