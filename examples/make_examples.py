"""Rebuild the example adapters shipped in examples/adapters/{math,medicine,finance}.

They are the single-domain adapters of replicate 0 (independent initialisation) of the
paper reproduction in experiments/paper, with a model card each. This needs the SmolLM2
model (the ``paper`` extra: ``pip install -e ".[paper]"``) and ../shared/data; it trains
nine adapters, so it takes a while on a CPU:

    python examples/make_examples.py    # python -m experiments.paper train, evaluate, export-examples (seed 0)

It leaves experiments/paper/RESULTS.md alone (``python -m experiments.paper report`` rewrites it).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.paper.__main__ import main  # noqa: E402

if __name__ == "__main__":
    for stage in ("train", "evaluate", "export-examples"):
        main([stage, "--seeds", "0", *sys.argv[1:]])
