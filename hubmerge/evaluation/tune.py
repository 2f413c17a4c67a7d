"""Merge weights chosen on evaluation data, by gradient descent through the sources' LoRA scalings.

With every source active at once, PEFT adds Σᵢ sᵢ·cᵢ·Bᵢ·Aᵢ·x to each adapted
module, cᵢ the scaling hubmerge gives source i; for ``sum`` (cᵢ = wᵢ) and
``mean`` (cᵢ = wᵢ/N) that is exactly what the merged adapter computes, so the
loss of a merge is a differentiable function of the weights that needs no
re-merging. The weights are leaf tensors; every LoRA layer's scaling of
source i is replaced by sᵢ·cᵢ(w) for the forward passes and restored after.
For the other methods the same objective tunes the weights of the plain sum,
which they approximate; the numbers reported are always those of the real merge.

Objective: the mean over domains of each domain's token-weighted mean NLL, on
the tuning examples (never those reported). Adam, a fixed number of full-batch
steps; the weights with the lowest objective seen are kept (the start counts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .data import Example
from .model import Evaluator, import_eval_dependencies

__all__ = ["tune_weights"]

DEFAULT_STEPS = 20
DEFAULT_LEARNING_RATE = 0.1


def tune_weights(
    evaluator: Evaluator,
    examples: dict[str, Sequence[Example]],
    start: Sequence[float],
    *,
    weight_scale: Callable[[int], float] = lambda n: 1.0,
    steps: int = DEFAULT_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> dict:
    """Minimise the mean over domains of the loss of Σ cᵢ(w)·sᵢ·Bᵢ·Aᵢ from ``start``.

    Args:
        evaluator: the base with the sources attached (its ``sources`` adapter names).
        examples: domain → the tuning examples.
        start: one weight per source.
        weight_scale: the method's weight multiplier given N sources (``mean``: 1/N).
        steps: Adam steps.
        learning_rate: Adam's step size.

    Returns:
        ``{"weights": best, "start_objective", "objective", "history": [objective per step]}``.
    """
    _, peft = import_eval_dependencies()
    layer_type = peft.tuners.lora.LoraLayer
    scale = weight_scale(len(start))
    originals = {}
    for module in evaluator.model.modules():
        if isinstance(module, layer_type):
            for index, name in enumerate(evaluator.sources):
                if name in module.scaling:
                    originals[(module, name, index)] = module.scaling[name]
    weights = torch.tensor([float(w) for w in start], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([weights], lr=learning_rate)
    tokens = {domain: sum(e.predicted for e in items) for domain, items in examples.items()}
    history: list[float] = []
    best = (float("inf"), list(start))
    evaluator.model.base_model.set_adapter(list(evaluator.sources), inference_mode=True)
    try:
        for step in range(steps + 1):
            optimiser.zero_grad()
            objective = 0.0
            for domain, items in examples.items():
                for batch in evaluator.batches(items):
                    with torch.set_grad_enabled(step < steps):
                        for (module, name, index), value in originals.items():
                            # rebuilt per batch: each backward frees the graph of the product
                            module.scaling[name] = value * scale * weights[index]
                        loss = evaluator.nll(batch, label=domain).sum() / (tokens[domain] * len(examples))
                    if step < steps:
                        loss.backward()
                    objective += float(loss.detach())
            history.append(objective)
            if objective < best[0]:
                best = (objective, [float(w) for w in weights.detach()])
            if step < steps:
                optimiser.step()
    finally:
        for (module, name, _), value in originals.items():
            module.scaling[name] = value
    return {"weights": best[1], "start_objective": history[0], "objective": best[0], "history": history}
