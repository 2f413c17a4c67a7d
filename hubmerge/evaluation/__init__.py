"""Evaluation on real text: does the merge keep what each source learned, and which weights are best?

- :mod:`.data`      reading ``.jsonl`` / ``.txt`` / Hub datasets, templates, splits, tokenisation
- :mod:`.model`     the base loaded once, sources and merges attached side by side, batched scoring
- :mod:`.metrics`   token-weighted NLL, perplexity, retention, cost against the best source; warnings
- :mod:`.tune`      merge weights tuned through the sources' LoRA scalings
- :mod:`.runner`    :func:`evaluate` and the ``merge(..., eval_data=...)`` flow
- :mod:`.render`    the section as terminal lines and as model-card Markdown

transformers and peft (the ``eval`` extra) are imported only when a model is loaded.
"""

from __future__ import annotations

__all__ = ["evaluate"]


def __getattr__(name: str):
    if name == "evaluate":
        from .runner import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
