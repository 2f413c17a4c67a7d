"""Data-free signals of a weighted merge, computed from the adapters' factors alone.

For the weighted deltas ΔWᵢ = wᵢ·sᵢ·Bᵢ·Aᵢ, module by module, with hubmerge's rank-space Gram
matrices (:func:`hubmerge.interference.module_gram`):

- per pair (i, j), as hubmerge's report defines them: RMS cosine, mean cosine, norm-weighted
  cosine, A overlap; and the output-subspace overlap of the B's column spaces
  (:func:`hubmerge.interference.output_overlap`), averaged over modules;
- for the merge: the interference ratio ‖ΣΔW‖² / Σ‖ΔW‖² (summed over modules);
- per source i: ``others_projection`` = Σ_{j≠i}⟨ΔWᵢ, ΔWⱼ⟩ / ‖ΔWᵢ‖² (how far the other deltas push
  along i's own, signed) and ``others_norm_ratio`` = ‖Σ_{j≠i}ΔWⱼ‖ / ‖ΔWᵢ‖ (how large the rest of the
  merge is next to i), both over all modules; and the pair quantities averaged over i's pairs.

Signals of source i are the ones a warning could use to predict i's retention.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from hubmerge.adapter import load_adapter
from hubmerge.interference import module_gram, norm_ratio, output_overlap

PAIR_SIGNALS = ("rms_cosine", "mean_cosine", "norm_weighted_cosine", "a_overlap", "output_overlap")
SOURCE_SIGNALS = ("others_projection", "others_norm_ratio", "norm_ratio")
SIGNALS = (*PAIR_SIGNALS, "interference_ratio", *SOURCE_SIGNALS)


def merge_signals(paths: list[Path], weights: list[float]) -> dict:
    """Signals of the merge Σ wᵢ·sᵢ·Bᵢ·Aᵢ of the adapters in ``paths``.

    Returns:
        ``{"interference_ratio": x, "pairs": {(i, j): {signal: x}}, "sources": [{signal: x} per source]}``;
        pair signals average over the modules both adapt (cosines: where both deltas are non-zero).
    """
    adapters = [load_adapter(p) for p in paths]
    n = len(adapters)
    modules = sorted(set.intersection(*(set(a.modules) for a in adapters)))
    if not modules:
        raise ValueError("the adapters share no module")
    total = torch.zeros(n, n, dtype=torch.float64)
    sums = {name: torch.zeros(n, n, dtype=torch.float64) for name in ("cos_sq", "cos", "defined", "a", "b", "b_n")}
    for module in modules:
        factors = [a.factors(module) for a in adapters]
        coefficients = [w * a.scale(module) for w, a in zip(weights, adapters)]
        stats = module_gram([(f[0].float(), f[1].float()) for f in factors], coefficients)
        total += stats.gram
        cos = stats.cosine()
        defined = ~torch.isnan(cos)
        sums["cos_sq"] += torch.where(defined, cos * cos, 0.0)
        sums["cos"] += torch.where(defined, cos, 0.0)
        sums["defined"] += defined.double()
        sums["a"] += torch.nan_to_num(stats.a_overlap, nan=0.0)
        for i in range(n):
            for j in range(i + 1, n):
                value = output_overlap(factors[i][1], factors[j][1])
                if value is not None:
                    sums["b"][i, j] += value
                    sums["b_n"][i, j] += 1
    count = sums["defined"].clamp_min(1)
    pairs = {}
    for i in range(n):
        for j in range(i + 1, n):
            pairs[(i, j)] = {
                "rms_cosine": math.sqrt(float(sums["cos_sq"][i, j] / count[i, j])),
                "mean_cosine": float(sums["cos"][i, j] / count[i, j]),
                "norm_weighted_cosine": float(total[i, j] / math.sqrt(float(total[i, i] * total[j, j]))),
                "a_overlap": float(sums["a"][i, j]) / len(modules),
                "output_overlap": float(sums["b"][i, j] / sums["b_n"][i, j].clamp_min(1)),
            }
    sources = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        index = torch.tensor(others)
        own = float(total[i, i])
        row = {
            "others_projection": float(total[i, index].sum()) / own,
            "others_norm_ratio": math.sqrt(max(float(total[index][:, index].sum()), 0.0) / own),
            # the largest other delta against this one (for a pair: ‖ΔWⱼ‖/‖ΔWᵢ‖)
            "norm_ratio": max(norm_ratio(total, j, i) or 0.0 for j in others),
        }
        for name in PAIR_SIGNALS:
            row[name] = sum(pairs[tuple(sorted((i, j)))][name] for j in others) / len(others)
        sources.append(row)
    ratio = float(total.sum()) / float(total.diagonal().sum())
    for row in sources:
        row["interference_ratio"] = ratio
    return {"interference_ratio": ratio, "pairs": pairs, "sources": sources}
