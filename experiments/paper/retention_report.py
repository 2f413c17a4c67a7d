"""Retention points, their data-free signals, the statistics, the plot and the page section.

A point is one source of one merge: its retention on its own domain's held-out rows. The
points are far from independent: every seed repeats the same four domain combinations, the
triple shares adapters with the pairs, and the sweep re-weights the same adapters. The
uncertainty is therefore a *cluster* bootstrap: whole merge groups (one set of adapters, all
its weight settings) are resampled, never single points. A second view removes "which domains"
entirely: retention and signal are centred within each (combination, source domain, weights)
cell, so that only what differs across seeds and initialisations is left to explain.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .measure import adapter_name, load_scores, setting_id
from .retention import adapter_dir, merges, run_dir
from .signals import SIGNALS, merge_signals

BOOTSTRAP = 2000


def points(cache: Path, settings: dict, seeds: list[int]) -> list[dict]:
    """One row per (merge, source) whose losses are all measured, with its retention and signals."""
    scores = load_scores(cache, settings)
    signal_dir = run_dir(cache, settings) / "signals"
    rows = []
    for plan in merges(seeds):
        names = [adapter_name(d, s) for d, s in zip(plan["domains"], plan["seeds"])]
        weights = dict(zip(names, plan["weights"]))
        setting = setting_id(weights)
        signal = None
        for k, (domain, name) in enumerate(zip(plan["domains"], names)):
            if plan["weights"][k] <= 0:  # a subtracted adapter is not meant to keep its skill
                continue
            keys = [("base", domain), (setting_id({name: 1.0}), domain), (setting, domain)]
            if any(key not in scores for key in keys):
                continue
            base, alone, merged = (scores[key]["nll"] / scores[key]["tokens"] for key in keys)
            if signal is None:
                signal = _signals(signal_dir, setting, cache, settings, plan, names)
            rows.append({
                "setting": setting, "domains": "+".join(plan["domains"]), "init": plan["init"],
                "seeds": plan["seeds"], "replicate": plan["replicate"], "weights": plan["weights"],
                "source": domain, "weight": plan["weights"][k],
                "plain": all(w == 1 for w in plan["weights"]),
                "group": "+".join(names), "base": base, "alone": alone, "merged": merged,
                "retention": (base - merged) / (base - alone) if base != alone else math.nan,
                **signal["sources"][k],
            })  # fmt: skip
    return rows


def _signals(folder: Path, setting: str, cache: Path, settings: dict, plan: dict, names: list[str]) -> dict:
    path = folder / f"{setting}.json"
    if path.exists():
        return json.loads(path.read_text())
    paths = [adapter_dir(cache, settings, d, s) for d, s in zip(plan["domains"], plan["seeds"])]
    found = merge_signals(paths, plan["weights"])
    found = {"interference_ratio": found["interference_ratio"], "sources": found["sources"], "adapters": names}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=1) + "\n")
    return found


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    return pearson(ranks(x), ranks(y))


def centred(rows: list[dict], key: str) -> list[float]:
    """``key`` minus its mean within the row's (combination, source domain, weights) cell."""
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["domains"], r["source"], tuple(r["weights"])), []).append(r[key])
    means = {cell: sum(v) / len(v) for cell, v in cells.items()}
    return [r[key] - means[(r["domains"], r["source"], tuple(r["weights"]))] for r in rows]


def association(rows: list[dict], signal: str, *, within: bool = False, seed: int = 0, draws: int = BOOTSTRAP) -> dict:
    """Spearman ρ and Pearson r of retention on ``signal``, with 95% cluster-bootstrap intervals over merge groups."""
    import numpy as np

    usable = [r for r in rows if math.isfinite(r["retention"]) and r.get(signal) is not None]
    if within:
        x, y = np.array(centred(usable, signal)), np.array(centred(usable, "retention"))
    else:
        x, y = np.array([r[signal] for r in usable], float), np.array([r["retention"] for r in usable], float)
    # Centring stays fixed across resamples: the cells are a property of the design, not of the draw.
    keys = sorted({r["group"] for r in usable})
    members = [np.array([i for i, r in enumerate(usable) if r["group"] == k]) for k in keys]
    rho, r_value = (spearman(list(x), list(y)), pearson(list(x), list(y))) if len(usable) >= 3 else (math.nan,) * 2
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(draws if len(keys) >= 3 else 0):
        index = np.concatenate([members[k] for k in rng.integers(0, len(keys), len(keys))])
        xs, ys = x[index], y[index]
        if xs.std() > 0 and ys.std() > 0:
            found.append((_corr(_average_ranks(xs), _average_ranks(ys)), _corr(xs, ys)))
    return {
        "signal": signal, "n": len(usable), "groups": len(keys), "spearman": rho, "pearson": r_value,
        "spearman_ci": _interval([d[0] for d in found]), "pearson_ci": _interval([d[1] for d in found]),
    }  # fmt: skip


def _corr(x, y) -> float:
    import numpy as np

    return float(np.corrcoef(x, y)[0, 1])


def _average_ranks(values):
    import numpy as np

    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    # ties share their mean rank
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):
        sums = np.bincount(inverse, weights=ranked)
        counts = np.bincount(inverse)
        ranked = (sums / counts)[inverse]
    return ranked


def _interval(values: list[float]) -> list[float] | None:
    if len(values) < 20:
        return None
    values = sorted(values)
    return [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]]


def analyses(rows: list[dict], *, draws: int = BOOTSTRAP) -> dict:
    """Every signal against retention: plain sums and all settings, raw and within cells."""
    views = {"plain sums (all weights 1)": [r for r in rows if r["plain"]], "all weight settings": rows}
    out = {}
    for view, chosen in views.items():
        # the source's own weight is no signal of interference: the baseline a signal has to beat
        names = (*SIGNALS, "weight") if view == "all weight settings" else SIGNALS
        out[view] = {
            "raw": [association(chosen, s, draws=draws) for s in names],
            "within": [association(chosen, s, within=True, draws=draws) for s in names],
        }
    return out


MIN_GROUPS = 8  # fewer merge groups than this: a bootstrap interval says little, nothing is called supported


def supported(entry: dict) -> bool:
    """A relation the runs show: at least ``MIN_GROUPS`` merge groups and a 95% interval of ρ that excludes 0."""
    ci = entry.get("spearman_ci")
    return entry.get("groups", 0) >= MIN_GROUPS and bool(ci) and (ci[0] > 0 or ci[1] < 0)


def verdict(entry: dict) -> str:
    if entry.get("groups", 0) < MIN_GROUPS:
        return f"cannot tell ({entry.get('groups', 0)} groups)"
    return "yes" if supported(entry) else "no"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    lines = math.ceil(len(SIGNALS) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3.2 * lines), dpi=100, squeeze=False)
    colours = {"shared": "tab:orange", "independent": "tab:blue"}
    for ax, signal in zip(axes.flat, SIGNALS):
        for init, colour in colours.items():
            for plain, marker in ((True, "o"), (False, "x")):
                chosen = [r for r in rows if r["init"] == init and r["plain"] == plain and r.get(signal) is not None]
                ax.scatter([r[signal] for r in chosen], [r["retention"] for r in chosen], s=14, c=colour,
                           marker=marker, alpha=0.75, label=f"{init}, {'w = 1' if plain else 'sweep'}")  # fmt: skip
        ax.set_xlabel(signal.replace("_", " "))
        ax.set_ylabel("retention")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.axhline(0.0, color="grey", lw=0.5)
    for ax in list(axes.flat)[len(SIGNALS) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Retention of each source on its own domain vs data-free signals of its merge")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _ci(entry: dict, key: str) -> str:
    ci = entry[f"{key}_ci"]
    value = entry[key]
    if not math.isfinite(value):
        return "—"
    return f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{value:+.2f}"


def section(rows: list[dict], stats: dict, *, planned: int, plot_name: str, seeds: list[int], draws: int,
            settings: dict) -> str:  # fmt: skip
    """The retention section of the results page (Markdown)."""
    from .retention import PAIR_WEIGHTS, TRIPLE_WEIGHTS

    parts = ["## Retention of merged adapters, measured\n"]
    measured = len(rows)
    plain = [r for r in rows if r["plain"]]
    sweep = ", ".join(f"({', '.join(f'{w:g}' for w in ws)})" for ws in PAIR_WEIGHTS)
    triple = ", ".join(f"({', '.join(f'{w:g}' for w in ws)})" for ws in TRIPLE_WEIGHTS)
    precision = "bf16 autocast (float32 weights and loss)" if settings["bf16"] else "float32"
    parts.append(
        "**Retention** of a source in a merge = (L_base − L_merge) / (L_base − L_source) on its own domain's "
        "held-out test rows: 1, the merge keeps all the source gained over the base; 0, none; < 0, worse than the "
        "base. L is hubmerge's evaluation loss (token-weighted NLL of the answer tokens, "
        f"`Question: …\\nAnswer:` template) on the first {settings['n_test']} test rows of each domain, at most "
        f"{settings['eval_max_length']} tokens, {precision}. The single-domain adapters are trained with the "
        "settings above "
        f"(r = {settings['r']}, α = {settings['lora_alpha']}, {settings['n_train']} training pairs, "
        f"{settings['epochs']} epoch).\n\n"
        f"**Merges** of one adapter per domain: the three pairs and the triple, each in two initialisations "
        f"— *shared*: all from seed s (PEFT draws the same initial A); *independent*: math from s, medicine "
        f"from s + 1000, finance from s + 2000 — for seed(s) s = {', '.join(map(str, seeds))}. Weights: pairs "
        f"{sweep}; the triple {triple}. A subtracted source (w < 0) is no point: only what the merge is meant "
        "to keep is scored. Each weight setting is scored with all its sources active in PEFT at scalings wᵢ·sᵢ, "
        "which is exactly the adapter hubmerge writes (`tests/test_paper.py` checks it against the written "
        f"merge loaded by PEFT). {measured} of {planned} planned (merge, source) points are measured, "
        f"{len(plain)} of them plain sums (all weights 1).\n"
    )
    if not rows:
        return "\n".join(parts + ["No points measured yet."])
    parts.append(_summary_table(rows))
    parts.append(paired_init(rows))
    parts.append(f"![Retention vs signals]({plot_name})\n")
    for view, entry in stats.items():
        n_groups = entry["raw"][0]["groups"]
        parts.append(f"### Which signals predict retention: {view}\n")
        parts.append(
            f"Spearman ρ and Pearson r with 95% cluster-bootstrap intervals ({draws} resamples of the "
            f"{n_groups} merge groups). *Within cells*: retention and signal centred within each (combination, "
            "source domain, weights) cell, so only the differences across seeds and initialisations remain.\n"
        )
        header = "| signal | n | ρ | r | ρ within cells | r within cells | supported |\n|---|---|---|---|---|---|---|"
        lines = [header]
        for raw, within in zip(entry["raw"], entry["within"]):
            said = verdict(raw)
            if supported(within):
                said += " (also within cells)" if supported(raw) else "; within cells: yes"
            lines.append(f"| {raw['signal']} | {raw['n']} | {_ci(raw, 'spearman')} | {_ci(raw, 'pearson')} | "
                         f"{_ci(within, 'spearman')} | {_ci(within, 'pearson')} | {said} |")  # fmt: skip
        parts.append("\n".join(lines) + "\n")
    parts.append(
        f"*Supported*: at least {MIN_GROUPS} merge groups and a 95% interval of ρ that excludes 0; with fewer groups "
        "the bootstrap has too few distinct resamples to mean much, and the table says *cannot tell*. How much "
        "even a supported relation is worth: there are four domain combinations "
        f"(three pairs and the triple) and {len(seeds)} seed(s); a bootstrap over merge groups cannot create "
        "combinations that were not run, so a relation carried by *which domains* are merged is not a relation "
        "with the signal — the within-cells columns are the test of that.\n"
    )
    return "\n".join(parts)


def _summary_table(rows: list[dict]) -> str:
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        if r["plain"]:
            cells.setdefault((r["domains"], r["source"], r["init"]), []).append(r["retention"])
    lines = ["| merge (weights 1) | source | init | retention (mean ± sd over seeds) | n |", "|---|---|---|---|---|"]
    for (domains, source, init), values in sorted(cells.items()):
        sd = _sd(values)
        lines.append(
            f"| `{domains}` | {source} | {init} | {sum(values) / len(values):.2f} ± {sd:.2f} | {len(values)} |"
        )
    return "\n".join(lines) + "\n"


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def calibration(rows: list[dict], stats: dict, *, retention_floor: float = 0.5) -> dict:
    """hubmerge's thresholds as these runs set them, or why they cannot.

    - ``rms_cosine`` / ``cancel_ratio``: the signal value at which the fitted line of retention
      (plain sums) reaches ``retention_floor`` (``Thresholds.retention``), only when the relation is
      supported (95% interval of ρ excludes 0) in the plain sums, also within cells, and has the
      direction the warning assumes (more cosine, less retention; lower ratio, less retention).
    - ``a_overlap``: the midpoint of the gap between same-seed and different-seed A overlaps.
    """
    from .calibrate import round_down

    plain = [r for r in rows if r["plain"] and math.isfinite(r["retention"])]
    view = stats.get("plain sums (all weights 1)", {})
    found = {}
    for key, signal, sign in (("rms_cosine", "rms_cosine", -1), ("cancel_ratio", "interference_ratio", +1)):
        raw = next((e for e in view.get("raw", []) if e["signal"] == signal), None)
        within = next((e for e in view.get("within", []) if e["signal"] == signal), None)
        if raw is None or within is None or not (supported(raw) and supported(within)) or raw["spearman"] * sign < 0:
            rho = f"ρ = {_ci(raw, 'spearman')}" if raw else "no points"
            found[key] = {"value": None, "why": f"no relation of {signal} with retention that these runs support "
                          f"in the direction the warning assumes (plain sums: {rho}): they cannot calibrate it, "
                          "so the default is a choice"}  # fmt: skip
            continue
        xs, ys = [r[signal] for r in plain], [r["retention"] for r in plain]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        value = mx + (retention_floor - my) / slope
        found[key] = {"value": round_down(value), "why": f"the fitted retention line reaches {retention_floor} at "
                      f"{signal} = {value:.4f} (measured {min(xs):.4f}–{max(xs):.4f})"}  # fmt: skip
    shared = [r["a_overlap"] for r in rows if r["init"] == "shared"]
    independent = [r["a_overlap"] for r in rows if r["init"] == "independent"]
    if shared and independent and min(shared) > max(independent):
        value = (min(shared) + max(independent)) / 2
        why = f"same seed {min(shared):.3f}–{max(shared):.3f}, different seeds "
        why += f"{min(independent):.3f}–{max(independent):.3f}: midpoint {value:.4f}"
        found["a_overlap"] = {"value": round_down(value), "why": why}
    else:
        found["a_overlap"] = {"value": None, "why": "same-seed and different-seed A overlaps are not separated"}
    return found


def paired_init(rows: list[dict]) -> str:
    """Shared against independent initialisation, paired by (combination, source, weights, seed): the cosine's test.

    The two versions of a pair differ in the seeds of their adapters only, and the shared one has
    an RMS cosine about 20x larger; if the cosine drove what a sum loses, the shared one would keep
    clearly less.
    """
    by_cell: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_cell.setdefault((r["domains"], r["source"], tuple(r["weights"]), r["replicate"]), {})[r["init"]] = r
    pairs = [(c["shared"], c["independent"]) for c in by_cell.values() if {"shared", "independent"} <= set(c)]
    if not pairs:
        return ""
    diffs = [a["retention"] - b["retention"] for a, b in pairs]
    plain = [a["retention"] - b["retention"] for a, b in pairs if a["plain"]]
    cos_shared = [a["rms_cosine"] for a, _ in pairs]
    cos_independent = [b["rms_cosine"] for _, b in pairs]
    worse = sum(d < 0 for d in diffs)
    text = (
        f"**Shared against independent initialisation**, paired by combination, source, weights and seed "
        f"({len(pairs)} pairs of points): the RMS cosine is {min(cos_shared):.3f}–{max(cos_shared):.3f} with a "
        f"shared initial A and {min(cos_independent):.4f}–{max(cos_independent):.4f} without, and retention "
        f"(shared − independent) differs by {sum(diffs) / len(diffs):+.3f} on average (range {min(diffs):+.2f} to "
        f"{max(diffs):+.2f}; the shared one keeps less in {worse} of {len(diffs)})"
    )
    if plain:
        text += f"; in the plain sums by {sum(plain) / len(plain):+.3f} (range {min(plain):+.2f} to {max(plain):+.2f})"
    plain_rows = [r for r in rows if r["plain"]]
    low = min(plain_rows, key=lambda r: r["retention"]) if plain_rows else None
    high = max(plain_rows, key=lambda r: r["retention"]) if plain_rows else None
    if low and high:
        text += (
            f". Across the plain sums retention runs from {low['retention']:.2f} ({low['source']} in "
            f"`{low['domains']}`) to {high['retention']:.2f} ({high['source']} in `{high['domains']}`): it follows "
            "which domains are merged, and how many."
        )
    return text + "\n"
