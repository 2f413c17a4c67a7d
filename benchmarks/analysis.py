"""Pairwise cosines of the adapters' deltas: hubmerge's rank space vs forming every ΔW densely.

Both computations get the same factors, already in memory (reading them is
timed separately), and produce the per-module cosine of every pair. The dense
one is the straightforward way: ΔWᵢ = sᵢ·Bᵢ·Aᵢ in float32, then Frobenius
inner products. Prints one JSON object with the timings and the largest
difference between the two sets of cosines.

    python benchmarks/analysis.py [--rank-repeats 5] [--skip-dense] [--skip-api] ADAPTER_DIR ADAPTER_DIR...
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from hubmerge import load_adapters, similarity
from hubmerge.interference import concat_gram, module_gram


def rank_space(modules, scales) -> dict[str, torch.Tensor]:
    return {key: module_gram(factors, scales[key]).cosine() for key, factors in modules.items()}


def dense(modules, scales) -> dict[str, torch.Tensor]:
    found = {}
    for key, factors in modules.items():
        deltas = [(c * (b.float() @ a.float())).reshape(-1) for (a, b), c in zip(factors, scales[key])]
        n = len(deltas)
        gram = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(i, n):
                gram[i, j] = gram[j, i] = float(torch.dot(deltas[i], deltas[j]))
        norms = gram.diagonal().sqrt()
        found[key] = gram / torch.outer(norms, norms)
    return found


def products_seconds(modules, scales) -> float:
    """The Gram products alone: each module's float32 concatenation is built untimed (the merge builds it for the
    exact sum too), then only :func:`concat_gram` on it is timed."""
    total = 0.0
    for key, factors in modules.items():
        a_all = torch.cat([a.float() * c for (a, _), c in zip(factors, scales[key])], dim=0)
        b_all = torch.cat([b.float() for _, b in factors], dim=1)
        ranks, present = [a.shape[0] for a, _ in factors], list(range(len(factors)))
        start = time.perf_counter()
        concat_gram(a_all, b_all, ranks, present, len(factors))
        total += time.perf_counter() - start
    return total


def float32_matmul_gflops(size: int = 2048, repeats: int = 3) -> float:
    """This machine's float32 matrix-product rate, with torch's threads: the best of a few size×size products.

    The analysis' products are skinny (R×d by d×R, R = Σ rᵢ); this square one is what the CPU does at best,
    the yardstick for how close the analysis runs to it.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: threads started, pages touched
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+")
    parser.add_argument("--rank-repeats", type=int, default=5)
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--skip-api", action="store_true", help="leave out the timing of similarity()")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    adapters = load_adapters(args.adapters)
    keys = sorted(set.intersection(*(set(a.modules) for a in adapters)))
    modules = {key: [a.factors(key) for a in adapters] for key in keys}
    scales = {key: [a.scale(key) for a in adapters] for key in keys}
    load_s = time.perf_counter() - start

    rank_times = []
    for _ in range(args.rank_repeats):
        start = time.perf_counter()
        rank_cos = rank_space(modules, scales)
        rank_times.append(time.perf_counter() - start)

    result = {
        "adapters": len(adapters),
        "pairs": len(adapters) * (len(adapters) - 1) // 2,
        "modules": len(keys),
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "rank_space_s": statistics.median(rank_times),
        "rank_space_runs_s": rank_times,
        "products_s": statistics.median(products_seconds(modules, scales) for _ in range(args.rank_repeats)),
        "float32_matmul_gflops": float32_matmul_gflops(),
    }
    if not args.skip_dense:
        start = time.perf_counter()
        dense_cos = dense(modules, scales)
        result["dense_s"] = time.perf_counter() - start
        result["max_abs_cosine_difference"] = max(
            float((rank_cos[key].double() - dense_cos[key]).abs().max()) for key in keys
        )
        upper = torch.triu_indices(len(adapters), len(adapters), offset=1)
        result["max_abs_cosine"] = max(float(rank_cos[key][upper[0], upper[1]].abs().max()) for key in keys)

    if not args.skip_api:
        start = time.perf_counter()
        similarity(args.adapters)  # the public analysis, reading the files itself
        result["similarity_api_s"] = time.perf_counter() - start
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
