"""The rank limits a merge can be fitted to: a plain cap, or vLLM's ``--max-lora-rank`` (no torch here).

vLLM starts only with ``max_lora_rank`` in :data:`VLLM_MAX_LORA_RANKS` (default 16) and
refuses an adapter whose ``r`` is above it; :func:`parse_fit` reads ``"vllm[=MAX]"`` and a
``max_rank`` into one :class:`FitTarget`. The fitting itself is :mod:`hubmerge.methods.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgumentError

__all__ = [
    "FIT_TARGETS",
    "VLLM_DEFAULT_MAX_LORA_RANK",
    "VLLM_MAX_LORA_RANKS",
    "FitTarget",
    "parse_fit",
    "smallest_vllm_rank",
]

# vLLM 0.33.0, vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]; max_lora_rank = 16
# (0.11.0 had no 1 in its list). No separate limit for MoE models: see docs/serving.md.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
FIT_TARGETS = ("vllm",)


@dataclass(frozen=True)
class FitTarget:
    """What the rank must fit: a plain cap (``max_rank``) and/or a serving engine's limit.

    Attributes:
        max_rank: the largest rank any module may keep.
        engine: ``"vllm"`` when fitting vLLM's ``--max-lora-rank``, else ``None``.
        engine_max: the ``--max-lora-rank`` the user serves with (a legal vLLM rank).
    """

    max_rank: int
    engine: str | None = None
    engine_max: int | None = None


def parse_fit(fit: str | None, max_rank: int | None) -> FitTarget | None:
    """Read ``fit`` (``"vllm"`` or ``"vllm=MAX"``) and ``max_rank`` into one target.

    Args:
        fit: ``"vllm"`` (MAX = vLLM's default 16) or ``"vllm=MAX"`` with MAX one of
            :data:`VLLM_MAX_LORA_RANKS`; ``None``: no engine.
        max_rank: a positive cap on every module's rank; ``None``: none. With both,
            the smaller cap holds.

    Returns:
        The target, or ``None`` when neither is given.

    Raises:
        InvalidArgumentError: an unknown engine, a MAX vLLM refuses, or a cap below 1.
    """
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise InvalidArgumentError(f"max_rank {max_rank!r} must be a positive integer", reason="bad_max_rank")
    if fit is None:
        return None if max_rank is None else FitTarget(max_rank)
    engine, _, value = str(fit).partition("=")
    engine = engine.strip().lower()
    if engine not in FIT_TARGETS:
        raise InvalidArgumentError(
            f"fit {fit!r}: unknown engine {engine!r}; choose one of {', '.join(FIT_TARGETS)}", reason="bad_fit"
        )
    legal = ", ".join(map(str, VLLM_MAX_LORA_RANKS))
    try:
        limit = int(value) if value.strip() else VLLM_DEFAULT_MAX_LORA_RANK
    except ValueError:
        raise InvalidArgumentError(
            f"fit {fit!r}: {value!r} is not a whole number; vLLM takes {legal}", reason="bad_fit"
        ) from None
    if limit not in VLLM_MAX_LORA_RANKS:
        raise InvalidArgumentError(
            f"fit {fit!r}: vLLM refuses max_lora_rank {limit}; it takes one of {legal}", reason="bad_fit"
        )
    cap = limit if max_rank is None else min(limit, max_rank)
    return FitTarget(cap, engine=engine, engine_max=limit)


def smallest_vllm_rank(rank: int) -> int | None:
    """The smallest legal vLLM ``--max-lora-rank`` ≥ ``rank`` (``None`` above 512)."""
    return next((legal for legal in VLLM_MAX_LORA_RANKS if legal >= rank), None)
