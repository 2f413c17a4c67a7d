"""The merge methods, in one registry that the CLI help, the model card and the Space read.

Each :class:`MergeMethod` carries its name, a one-line description, its paper,
the parameters it uses, whether its result is the exact weighted sum, and the
function that merges one module. Every method works from the adapters' factors
alone: no base model.

========================  =====================================================
``sum`` (default)         exact: rank concatenation of Σ wᵢ·sᵢ·Bᵢ·Aᵢ
``mean``                  exact: the same with every weight divided by N
``svd``                   the exact sum, truncated to ``rank`` per module (QR of the stacked factors)
``ties``                  trim, elect sign, disjoint merge of the dense deltas, then SVD to ``rank``
``dare_linear``           random drop + rescale, weighted sum, then SVD
``dare_ties``             random drop + rescale, TIES sign election and merge, then SVD
``magnitude_prune``       trim by magnitude, weighted sum, then SVD
========================  =====================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from . import combine
from .combine import ModuleInput

if TYPE_CHECKING:
    from .lowrank import LowRank

__all__ = ["METHODS", "MergeMethod", "MethodParams", "ModuleInput", "get_method"]

MAJORITY_SIGN_CHOICES = ("total", "frequency")


@dataclass(frozen=True)
class MethodParams:
    """Parameters of the non-exact methods (ignored by the methods that don't use them).

    Attributes:
        rank: rank per module of the result; default ``svd``: the largest input
            rank of the module (as PEFT), dense methods: the sum of the input ranks.
        density: share of entries kept by trimming / dropping, in (0, 1].
        majority_sign: ``"total"`` or ``"frequency"`` (TIES sign election).
        seed: seed of DARE's random drops (per module, derived from seed and module key).
    """

    rank: int | None = None
    density: float = 0.5
    majority_sign: str = "total"
    seed: int = 0

    def validate(self) -> MethodParams:
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise InvalidArgumentError(f"rank {self.rank!r} must be a positive integer")
        if not isinstance(self.density, (int, float)) or not 0 < self.density <= 1:
            raise InvalidArgumentError(f"density {self.density!r} must be in (0, 1]")
        if self.majority_sign not in MAJORITY_SIGN_CHOICES:
            raise InvalidArgumentError(f"majority_sign {self.majority_sign!r} must be 'total' or 'frequency'")
        return self


@dataclass(frozen=True)
class MergeMethod:
    """A merge method as the registry describes it.

    Attributes:
        name: the value of ``--method`` / ``method=``.
        description: one line for help texts and the model card.
        paper: a link to the paper it comes from (``None`` for plain arithmetic).
        parameters: the :class:`MethodParams` fields it uses.
        exact: whether the result is always the exact weighted sum.
        function: merges one module (from :mod:`hubmerge.methods.combine`, which
            imports torch only when a merge runs).
        weight_scale: multiplies the user's weights given N adapters (``mean``: 1/N).
        exact_if_untruncated: exact whenever the rank cut keeps all the energy (``svd``).
    """

    name: str
    description: str
    paper: str | None
    parameters: tuple[str, ...]
    exact: bool
    function: Callable[[ModuleInput, MethodParams], LowRank] = field(repr=False)
    weight_scale: Callable[[int], float] = field(default=lambda n: 1.0, repr=False)
    exact_if_untruncated: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "paper": self.paper, "exact": self.exact}

    def combine(self, module: ModuleInput, params: MethodParams) -> LowRank:
        """Merge one module's factors into a low-rank result."""
        return self.function(module, params)


_DENSE = ("rank", "density")
METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod(
            name="sum",
            description="exact weighted sum Σ wᵢ·sᵢ·Bᵢ·Aᵢ by rank concatenation (rank grows to Σ rᵢ)",
            paper="https://arxiv.org/abs/2508.11985",
            parameters=(),
            exact=True,
            function=combine.exact_sum,
        ),
        MergeMethod(
            name="mean",
            description="exact sum with every weight divided by the number of adapters",
            paper=None,
            parameters=(),
            exact=True,
            function=combine.exact_sum,
            weight_scale=lambda n: 1.0 / n,
        ),
        MergeMethod(
            name="svd",
            description="the exact sum truncated to `rank` per module (best rank-K approximation, via QR)",
            paper=None,
            parameters=("rank",),
            exact=False,
            function=combine.svd_truncation,
            exact_if_untruncated=True,
        ),
        MergeMethod(
            name="ties",
            description="TIES: trim each delta to `density` by magnitude, elect a sign, merge agreeing entries",
            paper="https://arxiv.org/abs/2306.01708",
            parameters=(*_DENSE, "majority_sign"),
            exact=False,
            function=combine.ties,
        ),
        MergeMethod(
            name="dare_linear",
            description="DARE: drop entries at random (keep `density`, rescale), then weighted sum",
            paper="https://arxiv.org/abs/2311.03099",
            parameters=(*_DENSE, "seed"),
            exact=False,
            function=combine.dare_linear,
        ),
        MergeMethod(
            name="dare_ties",
            description="DARE drop and rescale, then TIES sign election and disjoint merge",
            paper="https://arxiv.org/abs/2311.03099",
            parameters=(*_DENSE, "majority_sign", "seed"),
            exact=False,
            function=combine.dare_ties,
        ),
        MergeMethod(
            name="magnitude_prune",
            description="trim each delta to `density` by magnitude, then weighted sum",
            paper="https://arxiv.org/abs/2306.01708",
            parameters=_DENSE,
            exact=False,
            function=combine.magnitude_prune,
        ),
    )
}


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name``.

    Raises:
        InvalidArgumentError: no such method (the message lists them).
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise InvalidArgumentError(f"unknown merge method {name!r}; choose one of {', '.join(METHODS)}") from None
