"""How far apart two merged adapters are, module by module, computed in rank space.

For each module both adapters have, the relative Frobenius distance
‖X − Y‖_F / ‖Y‖_F of their deltas X = s·B·A (the first adapter) and Y (the
second, the reference), from the factors' Gram matrix
(``hubmerge.interference.module_gram``): no dense matrix is formed. Prints one
JSON object with the largest and median distance and the modules compared.

    python benchmarks/compare.py HUBMERGE_OUTPUT PEFT_OUTPUT
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from hubmerge import load_adapter
from hubmerge.interference import module_gram


def adapter_dir(path: str) -> Path:
    """The directory holding adapter_config.json: PEFT saves a named adapter in a subfolder."""
    found = sorted(p.parent for p in Path(path).rglob("adapter_config.json"))
    if not found:
        raise SystemExit(f"no adapter_config.json under {path}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ours")
    parser.add_argument("reference")
    args = parser.parse_args(argv)
    ours, reference = load_adapter(adapter_dir(args.ours)), load_adapter(adapter_dir(args.reference))
    shared = sorted(set(ours.modules) & set(reference.modules))
    distances = []
    for key in shared:
        gram = module_gram([ours.factors(key), reference.factors(key)], [ours.scale(key), reference.scale(key)]).gram
        squared = float(gram[0, 0] + gram[1, 1] - 2 * gram[0, 1])
        distances.append(math.sqrt(max(squared, 0.0) / float(gram[1, 1])) if gram[1, 1] > 0 else math.inf)
    print(
        json.dumps(
            {
                "modules": len(shared),
                "only_ours": len(set(ours.modules) - set(reference.modules)),
                "only_reference": len(set(reference.modules) - set(ours.modules)),
                "max_relative_distance": max(distances, default=None),
                "median_relative_distance": statistics.median(distances) if distances else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
