"""hubmerge's warning thresholds, calibrated from the experiment's points.

- ``rms_cosine``: the cosine at which the fitted line of the perplexity change (naive
  sum vs the merged-data adapter, in %) reaches ``TOLERANCE``. Only when the relation is
  there: a positive slope with permutation p ≤ ``MAX_P``; otherwise the data cannot set it.
- ``a_overlap``: the midpoint of the gap between the A overlaps of adapters trained from
  the same seed and from different seeds, when the two groups do not overlap at all.

The values are rounded down to two significant digits, so a warning errs towards firing.
``tests/test_paper.py`` checks that :class:`hubmerge.Thresholds` uses what the committed
results give.
"""

from __future__ import annotations

import math

# The paper's pairs: +4.5% (math+finance) still counted as "works", +27.6% (finance+medicine) did not.
# A sum that loses more than 10% perplexity against fine-tuning on the merged data is worth a warning.
TOLERANCE = 10.0
MAX_P = 0.1


def round_down(value: float, digits: int = 2) -> float:
    if value <= 0:
        return value
    step = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return round(math.floor(value / step + 1e-9) * step, 10)


def rms_cosine(rows: list[dict], stats: dict) -> dict:
    """Threshold on the RMS cosine from the fitted line of ``change`` against it (``stats``: report.correlation)."""
    a, b = stats["fit"]
    xs = [r["rms_cosine"] for r in rows]
    if stats["n"] < 3 or not b > 0 or not stats["p"] <= MAX_P:
        return {
            "value": None,
            "why": f"no usable relation (n = {stats['n']}, slope {b:+.2f}, p = {stats['p']:.3g} > {MAX_P} "
            "or slope ≤ 0): these runs cannot calibrate it",
        }
    value = (TOLERANCE - a) / b
    where = "inside" if min(xs) <= value <= max(xs) else "outside (an extrapolation)"
    return {
        "value": round_down(value),
        "why": f"the fitted line change ≈ {a:+.2f} {b:+.2f}·cos reaches +{TOLERANCE:g}% at cos = {value:.4f}, "
        f"{where} the measured range {min(xs):.4f}–{max(xs):.4f}",
    }


def a_overlap(rows: list[dict]) -> dict:
    """Threshold on the A overlap that separates same-seed from different-seed adapters."""
    shared = [r["a_overlap"] for r in rows if r["condition"] == "shared"]
    independent = [r["a_overlap"] for r in rows if r["condition"] == "independent"]
    if not shared or not independent or min(shared) <= max(independent):
        return {"value": None, "why": "same-seed and different-seed A overlaps are not separated"}
    value = (min(shared) + max(independent)) / 2
    return {
        "value": round_down(value),
        "why": f"same seed {min(shared):.3f}–{max(shared):.3f}, different seeds "
        f"{min(independent):.3f}–{max(independent):.3f}: the midpoint of the gap is {value:.4f}",
    }


def calibrate(rows: list[dict], stats: dict) -> dict:
    return {"tolerance_percent": TOLERANCE, "rms_cosine": rms_cosine(rows, stats), "a_overlap": a_overlap(rows)}
