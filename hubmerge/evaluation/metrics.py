"""What the evaluation reports: token-weighted NLL, perplexity, retention, the cost against the best source.

Per domain, every row (the base, each source alone at weight 1, the merge) is
scored on the same examples. Its loss is the mean negative log-likelihood per
predicted token, natural log, weighted by tokens over the domain's examples
(Σ NLL / Σ tokens, not a mean of per-example means); its perplexity is exp(loss).

Derived, for the source a domain is mapped to:

- retention = (L_base − L_merged) / (L_base − L_source): 1 when the merge keeps
  all the source gained on its domain, 0 when it keeps none, negative when the
  merge is worse than the base there; undefined (``None``) when the source
  gained nothing (|L_base − L_source| below 1e-9).
- the cost against the best single adapter on the domain: L_merged − min_i L_i,
  in nats per token, and the perplexity ratio exp of it.
"""

from __future__ import annotations

import math

from ..interference import Thresholds, round_float
from ..notice import Notice

__all__ = ["Score", "domain_section", "evaluation_notices", "retention"]


class Score:
    """A running Σ NLL and Σ predicted tokens of one row on one domain."""

    def __init__(self, nll: float = 0.0, tokens: int = 0):
        self.nll = nll
        self.tokens = tokens

    def add(self, nll: float, tokens: int) -> None:
        self.nll += nll
        self.tokens += tokens

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan


def retention(base: float, merged: float, source: float) -> float | None:
    """(L_base − L_merged) / (L_base − L_source), or ``None`` when the source gained nothing."""
    gained = base - source
    if abs(gained) < 1e-9:
        return None
    return (base - merged) / gained


def domain_section(
    *, source: str, base: Score, merged: Score, sources: dict[str, Score], examples: int, skipped: int, truncated: int
) -> dict:
    """The report entry of one domain (``report.evaluation["domains"][NAME]``).

    Args:
        source: the display name of the source the domain is mapped to.
        base, merged: the scores of the base model and of the merged adapter.
        sources: display name → the score of that source alone.
        examples: examples scored; skipped: records that could not be scored; truncated: examples cut.

    Returns:
        ``examples``, ``tokens``, ``loss`` {``base``, ``merged``, ``sources``}, ``perplexity`` (same shape),
        ``retention`` {source: value}, ``cost`` (against the best single source), ``skipped``, ``truncated``.
    """
    losses = {name: score.loss for name, score in sources.items()}
    best = min(losses, key=lambda name: losses[name])
    kept = retention(base.loss, merged.loss, losses[source])
    delta = merged.loss - losses[best]
    return {
        "source": source,
        "examples": examples,
        "tokens": base.tokens,
        "skipped": skipped,
        "truncated": truncated,
        "loss": {
            "base": round_float(base.loss, 9),
            "merged": round_float(merged.loss, 9),
            "sources": {name: round_float(value, 9) for name, value in losses.items()},
        },
        "perplexity": {
            "base": round_float(math.exp(base.loss)),
            "merged": round_float(math.exp(merged.loss)),
            "sources": {name: round_float(math.exp(value)) for name, value in losses.items()},
        },
        "retention": {source: round_float(kept) if kept is not None else None},
        "cost": {
            "best_source": best,
            "best_loss": round_float(losses[best]),
            "loss_delta": round_float(delta),
            "perplexity_ratio": round_float(math.exp(delta)),
        },
    }


def evaluation_notices(section: dict, thresholds: Thresholds) -> list[Notice]:
    """``merge_loses`` for each domain whose source's retention is below ``thresholds.retention``."""
    notes = []
    for name, domain in section["domains"].items():
        for source, kept in domain["retention"].items():
            if kept is None or kept >= thresholds.retention:
                continue
            loss = domain["loss"]
            notes.append(
                Notice(
                    "merge_loses",
                    f"on {name} the merge keeps {100 * kept:.0f}% of what {source} gained over the base "
                    f"(loss {loss['base']:.4g} base, {loss['sources'][source]:.4g} {source} alone, "
                    f"{loss['merged']:.4g} merged; warned under {100 * thresholds.retention:.0f}%): "
                    f"try a smaller weight for the other sources, or tune the weights on this data",
                )
            )
    return notes
