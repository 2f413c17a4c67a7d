"""How much do the adapters' weight deltas overlap? Computed in rank space.

For adapter i with merge weight wᵢ and PEFT scale sᵢ, the delta of module m
is ΔWᵢ = wᵢ·sᵢ·Bᵢ·Aᵢ. Frobenius inner products never need the
d_out × d_in matrix::

    ⟨BᵢAᵢ, BⱼAⱼ⟩_F = Σ (BᵢᵀBⱼ) ∘ (AᵢAⱼᵀ)        an rᵢ × rⱼ sum, O((d_in + d_out)·rᵢ·rⱼ)

Per module we build the N×N Gram matrix G of the deltas (the adapters that
do not adapt m contribute zero rows). From it:

- cosine(i, j) = Gᵢⱼ / √(Gᵢᵢ Gⱼⱼ)
- interference ratio = ‖Σ ΔWᵢ‖² / Σ ‖ΔWᵢ‖² = ΣᵢⱼGᵢⱼ / ΣᵢGᵢᵢ
  (1: orthogonal, > 1: reinforcing, < 1: cancelling)

and per pair, over the modules both adapt (for the RMS and mean cosine, those
where both deltas are non-zero, so that the cosine is defined):

- RMS cosine = √(mean cos²)          the paper's interference predictor
- mean cosine = mean cos               signed: negative means opposing updates
- norm-weighted cosine = Σ⟨ΔWᵢ,ΔWⱼ⟩ / √(Σ‖ΔWᵢ‖² Σ‖ΔWⱼ‖²) over the modules both adapt
                                       the cosine of the two deltas seen as one long vector
- A overlap = mean of ‖AᵢAⱼᵀ‖_F / √(‖AᵢAᵢᵀ‖_F ‖AⱼAⱼᵀ‖_F) ∈ [0, 1]; near 1 when the
  A matrices share an initialisation (same seed), about √(r/d_in) for independent ones.

Two more, as functions (:func:`output_overlap`, :func:`norm_ratio`), not yet in the report:

- output-subspace overlap = ‖QᵢᵀQⱼ‖²_F / min(rᵢ, rⱼ) ∈ [0, 1] with Qᵢ an orthonormal basis of
  the column space of Bᵢ (the outputs ΔWᵢ can write to): the mean squared cosine of the
  principal angles; 1 when one output subspace contains the other, about r/d_out by chance.
- norm ratio = ‖ΔWᵢ‖_F / ‖ΔWⱼ‖_F of the weighted deltas, from the Gram diagonal.

The thresholds behind the warnings live in :class:`Thresholds`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from .notice import Notice
from .report import Matrix, ModuleSimilarity, SimilarityReport

__all__ = [
    "ModuleGram",
    "SimilarityAccumulator",
    "Thresholds",
    "concat_gram",
    "module_gram",
    "norm_ratio",
    "output_overlap",
]


@dataclass(frozen=True)
class Thresholds:
    """When hubmerge warns. Change them by passing your own instance.

    Measured on SmolLM2-135M with math, medicine and finance adapters (r = 4, α = 64): the
    retention of each source in merges of them (``experiments/paper/RESULTS.md``, section
    "Retention of merged adapters, measured"). ``tests/test_paper.py`` keeps these defaults
    equal to what those runs give wherever they could set one; the others are choices.

    Attributes:
        rms_cosine: warn (``high_cosine``) for a pair whose RMS cosine is at least this. A
            choice, not a calibration: independently trained adapters sit near 0
            (0.004–0.0054 in hubmerge's runs), same-seed ones near 0.1 because they share their
            initial A. In hubmerge's measurements the cosine did not predict what a merge keeps
            across merges (plain sums whose RMS cosines all lay within 0.004–0.0054 kept from 2% to
            all of a source's gain, depending on the domains); the same merge with a
            shared initial A (~20× the cosine) kept slightly less (−0.04 of the gain on average
            in the plain sums). So the warning says how the updates overlap and asks for an
            evaluation; it predicts nothing.
        cancel_ratio: warn for modules whose interference ratio is below this, i.e. the sum
            keeps less than this share of the energy the parts have (a geometric fact about the
            deltas). A choice: the interference ratios of hubmerge's plain sums stayed within
            1.00–1.12, so the runs cannot calibrate it (there, the *more* reinforcing sums kept
            somewhat less, the opposite of cancellation).
        a_overlap: warn for a pair whose mean A overlap is at least this: such adapters
            almost surely started from the same random A (same seed). Calibrated: same-seed pairs
            measure about 0.995, different seeds 0.076–0.079; 0.53 is the middle of that gap. By
            chance the overlap is about √(r/in_features): raise this for ranks near the layer width.
        retention: warn (``merge_loses``) for a source whose retention on its own evaluation
            domain, (L_base − L_merged) / (L_base − L_source), is below this: the merge keeps
            less than this share of the loss the source alone gained over the base. Only
            measured merges are judged (``eval_data``). 0.5 is a choice, not a calibration:
            below it the merge loses more than half of what the adapter learned.
        max_listed: how many module keys a warning names before summarising.
    """

    rms_cosine: float = 0.1
    cancel_ratio: float = 0.5
    a_overlap: float = 0.53
    retention: float = 0.5
    max_listed: int = 5

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


@dataclass
class ModuleGram:
    """Rank-space statistics of one module.

    Attributes:
        gram: N×N float64 Gram matrix of the weighted deltas (zeros for absent adapters).
        a_overlap: N×N A-overlap matrix (NaN where undefined).
        present: indices of the adapters that adapt this module.
    """

    gram: torch.Tensor
    a_overlap: torch.Tensor
    present: list[int]

    @property
    def norms(self) -> torch.Tensor:
        return self.gram.diagonal().clamp_min(0).sqrt()

    @property
    def interference(self) -> float | None:
        energy = float(self.gram.diagonal().sum())
        return float(self.gram.sum()) / energy if energy > 0 else None

    def cosine(self) -> torch.Tensor:
        norms = self.norms
        denom = torch.outer(norms, norms)
        cos = torch.where(denom > 0, self.gram / denom.where(denom > 0, torch.ones_like(denom)), torch.nan)
        return cos.clamp(-1.0, 1.0)


def module_gram(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
    coefficients: Sequence[float],
) -> ModuleGram:
    """Gram matrix of the deltas cᵢ·Bᵢ·Aᵢ of one module, in rank space.

    Args:
        factors: per adapter ``(A, B)`` (A: r×in, B: out×r), or ``None`` where absent.
        coefficients: per adapter cᵢ = wᵢ·sᵢ.

    Returns:
        The :class:`ModuleGram`; ``gram[i, j] = ⟨cᵢBᵢAᵢ, cⱼBⱼAⱼ⟩_F``.
    """
    given = [(i, f) for i, f in enumerate(factors) if f is not None]
    present = [i for i, _ in given]
    if not given:
        return concat_gram(None, None, [], [], len(factors))
    work = torch.float64 if any(a.dtype == torch.float64 for _, (a, _) in given) else torch.float32
    a_all = torch.cat([a.to(work) * coefficients[i] for i, (a, _) in given], dim=0)
    b_all = torch.cat([b.to(work) for _, (_, b) in given], dim=1)
    return concat_gram(a_all, b_all, [a.shape[0] for _, (a, _) in given], present, len(factors))


def concat_gram(
    a_all: torch.Tensor | None, b_all: torch.Tensor | None, ranks: Sequence[int], present: list[int], n: int
) -> ModuleGram:
    """:func:`module_gram` from the concatenated factors the exact sum builds anyway.

    Args:
        a_all: the stacked cᵢ·Aᵢ (R×in), b_all: the concatenated Bᵢ (out×R).
        ranks: rᵢ of each block, in order; present: the adapters they belong to; n: all adapters.

    The two R×R products run in the factors' precision (float32 for bf16/fp16/fp32
    inputs: a few GFLOP for ten 8B-shaped adapters); everything after them in float64.
    """
    if not present or a_all is None or b_all is None:
        return ModuleGram(
            torch.zeros(n, n, dtype=torch.float64), torch.full((n, n), math.nan, dtype=torch.float64), present
        )
    a_gram = _self_gram(a_all).double()  # R×R
    b_gram = _self_gram(b_all.T).double()
    # S sums R×R entries into blocks: (S M Sᵀ)[k, m] = Σ of block (k, m) of M.
    s = _block_sums(tuple(ranks))
    gram = s @ (a_gram * b_gram) @ s.T
    block_norm = (s @ (a_gram * a_gram) @ s.T).sqrt()  # ‖AₖAₘᵀ‖_F, scaled by |cₖcₘ|
    own = block_norm.diagonal()
    denom = torch.outer(own, own).sqrt()
    overlap = torch.where(denom > 0, block_norm / denom.clamp_min(1e-300), math.nan)
    if len(present) < n:  # the adapters that do not adapt this module: zeros in the Gram, NaN overlaps
        index = torch.tensor(present)
        gram = torch.zeros(n, n, dtype=torch.float64).index_put_((index[:, None], index[None, :]), gram)
        overlap = torch.full((n, n), math.nan, dtype=torch.float64).index_put_(
            (index[:, None], index[None, :]), overlap
        )
    return ModuleGram(gram, overlap, present)


@functools.lru_cache(maxsize=64)
def _block_sums(ranks: tuple[int, ...]) -> torch.Tensor:
    """The len(ranks)×Σranks float64 matrix of ones that sums blocks of those sizes (shared by every module)."""
    owner = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks))
    return torch.nn.functional.one_hot(owner, len(ranks)).T.double()


def output_overlap(b_i: torch.Tensor, b_j: torch.Tensor) -> float | None:
    """Overlap of the column spaces of two B factors (out × r): ‖QᵢᵀQⱼ‖²_F / min(rankᵢ, rankⱼ).

    Args:
        b_i, b_j: the B factors of one module (same number of rows).

    Returns:
        A value in [0, 1] (the mean squared cosine of the principal angles between the two
        output subspaces), or ``None`` when either B is zero (no output subspace).
    """
    bases = []
    for b in (b_i, b_j):
        u, sv, _ = torch.linalg.svd(b.double(), full_matrices=False)
        # numerical rank, as numpy.linalg.matrix_rank counts it
        keep = sv > sv.max() * max(b.shape) * torch.finfo(torch.float64).eps if sv.numel() else sv > 0
        if not bool(keep.any()):
            return None
        bases.append(u[:, keep])
    q_i, q_j = bases
    return float((q_i.T @ q_j).square().sum()) / min(q_i.shape[1], q_j.shape[1])


def norm_ratio(gram: torch.Tensor, i: int, j: int) -> float | None:
    """‖ΔWᵢ‖_F / ‖ΔWⱼ‖_F from a Gram matrix of the (weighted) deltas (one module's, or a sum of them).

    Returns:
        The ratio, or ``None`` when ΔWⱼ is zero.
    """
    own, other = float(gram[i, i]), float(gram[j, j])
    return math.sqrt(max(own, 0.0) / other) if other > 0 else None


def _self_gram(x: torch.Tensor) -> torch.Tensor:
    """x·xᵀ for x: R×d. For large R only the blocks on and above the diagonal are multiplied (R/4 rows
    at a time against the rows from theirs on) and the rest mirrored: 5/8 of the multiply-adds, the
    analysis' largest cost at many adapters (R = Σ rᵢ)."""
    rows = x.shape[0]
    if rows < 128:  # below this the saving is lost in the extra calls
        return x @ x.T
    step = -(-rows // 4)
    gram = torch.empty(rows, rows, dtype=x.dtype)
    for start in range(0, rows, step):
        end = start + step
        torch.matmul(x[start:end], x[start:].T, out=gram[start:end, start:])
        gram[end:, start:end] = gram[start:end, end:].T
    return gram


@dataclass
class SimilarityAccumulator:
    """Collects per-module Gram matrices into pair statistics and warnings.

    Feed it one module at a time (:meth:`add`) so a merge streams; then :meth:`summary` gives the
    JSON-able result. Modules are folded into the running sums a batch at a time: the statistics of one
    module are a few dozen operations on N×N matrices, too small for a tensor library to run one by one.
    """

    names: list[str]
    thresholds: Thresholds = field(default_factory=Thresholds)
    weights: Sequence[float] | None = None  # the merge weights: a zero-weight delta is zero on purpose
    per_module: dict[str, ModuleSimilarity] = field(default_factory=dict)
    batch: int = field(default=256, kw_only=True)  # modules folded together (a dozen batch×N×N float64 temporaries)

    def __post_init__(self):
        n = len(self.names)
        self._pending: list[tuple[str, ModuleGram]] = []
        self._cos_sq = torch.zeros(n, n, dtype=torch.float64)
        self._cos_sum = torch.zeros(n, n, dtype=torch.float64)
        self._count = torch.zeros(n, n, dtype=torch.int64)  # modules both adapt
        self._defined = torch.zeros(n, n, dtype=torch.int64)  # … with non-zero deltas (cosine defined)
        self._inner = torch.zeros(n, n, dtype=torch.float64)
        self._energy_i = torch.zeros(n, n, dtype=torch.float64)  # Σ‖ΔWᵢ‖² over modules shared with j
        self._overlap_sum = torch.zeros(n, n, dtype=torch.float64)
        self._overlap_count = torch.zeros(n, n, dtype=torch.int64)
        self._total = 0.0
        self._energy = 0.0
        self._zero: dict[int, int] = {}

    def add(self, module: str, stats: ModuleGram) -> None:
        self._pending.append((module, stats))
        if len(self._pending) >= self.batch:
            self._fold()

    def _fold(self) -> None:
        """Add the pending modules to the running sums and write their per-module detail."""
        chunk, self._pending = self._pending, []
        if not chunk:
            return
        n = len(self.names)
        gram = torch.stack([stats.gram for _, stats in chunk])  # M×N×N
        present = torch.zeros(len(chunk), n, dtype=torch.bool)
        for index, (_, stats) in enumerate(chunk):
            present[index, stats.present] = True
        both = present[:, :, None] & present[:, None, :]
        diag = gram.diagonal(dim1=1, dim2=2)  # M×N: ‖ΔWᵢ‖² per module
        norms = diag.clamp_min(0).sqrt()
        denom = norms[:, :, None] * norms[:, None, :]
        cos = torch.where(denom > 0, gram / denom.where(denom > 0, torch.ones_like(denom)), torch.nan).clamp(-1.0, 1.0)
        defined = ~torch.isnan(cos)
        self._cos_sq += torch.where(defined, cos * cos, 0.0).sum(0)
        self._cos_sum += torch.where(defined, cos, 0.0).sum(0)
        self._defined += defined.sum(0)
        self._count += both.sum(0)
        self._inner += torch.where(both, gram, 0.0).sum(0)
        self._energy_i += torch.where(both, diag[:, :, None].expand_as(gram), 0.0).sum(0)
        overlap = torch.stack([stats.a_overlap for _, stats in chunk])
        seen = ~torch.isnan(overlap)
        self._overlap_sum += torch.where(seen, overlap, 0.0).sum(0)
        self._overlap_count += seen.sum(0)
        total, own = gram.sum((1, 2)), diag.sum(1)
        self._total += float(total.sum())
        self._energy += float(own.sum())
        # Python values, one conversion each: the per-module detail is built from lists, not tensor entries.
        rows = zip(chunk, cos.tolist(), norms.tolist(), diag.tolist(), total.tolist(), own.tolist())
        for (module, stats), values, module_norms, energies, module_total, module_energy in rows:
            for i in stats.present:
                if energies[i] == 0 and (self.weights is None or self.weights[i] != 0):
                    self._zero[i] = self._zero.get(i, 0) + 1
            self.per_module[module] = ModuleSimilarity(
                adapters=tuple(self.names[i] for i in stats.present),
                norms=tuple(round_float(module_norms[i]) for i in stats.present),
                cosine=_pairs(values, stats.present, self.names),
                interference=round_float(module_total / module_energy if module_energy > 0 else None),
            )

    def summary(self, same_files: Sequence[tuple[int, int]] = ()) -> tuple[SimilarityReport, list[Notice]]:
        """The pair matrices, the interference ratio and the warnings.

        ``same_files``: pairs (i < j) of sources known to be the same files; their cosines are 1 by
        construction, so they are warned about as one adapter counted twice, not as two similar ones.
        """
        self._fold()
        count = self._defined.to(torch.float64)
        with torch.no_grad():
            rms = torch.where(self._defined > 0, (self._cos_sq / count.clamp_min(1)).sqrt(), torch.nan)
            mean = torch.where(self._defined > 0, self._cos_sum / count.clamp_min(1), torch.nan)
            energy = self._energy_i * self._energy_i.T
            weighted = torch.where(energy > 0, self._inner / energy.clamp_min(1e-300).sqrt(), torch.nan)
            overlap = torch.where(
                self._overlap_count > 0, self._overlap_sum / self._overlap_count.clamp_min(1), torch.nan
            )
        overall = self._total / self._energy if self._energy > 0 else None
        result = SimilarityReport(
            adapters=tuple(self.names),
            rms_cosine=_matrix(rms),
            mean_cosine=_matrix(mean),
            norm_weighted_cosine=_matrix(weighted),
            shared_modules=tuple(tuple(row) for row in self._count.tolist()),
            a_overlap=_matrix(overlap),
            interference_ratio=round_float(overall),
            thresholds=self.thresholds.to_dict(),
            per_module=dict(self.per_module),
        )
        return result, self._warnings(rms, mean, overlap, set(same_files))

    def _warnings(self, rms, mean, overlap, same_files: set[tuple[int, int]]) -> list[Notice]:
        t = self.thresholds
        notes: list[Notice] = []
        n = len(self.names)
        for i in range(n):
            for j in range(i + 1, n):
                a, b = self.names[i], self.names[j]
                if (i, j) in same_files:
                    notes.append(
                        Notice(
                            "same_files",
                            f"{a} and {b} are the same files: the merge counts that adapter twice, and their "
                            "cosines are 1 by construction, not a measurement of two adapters",
                        )
                    )
                    continue
                shared_a = not math.isnan(overlap[i, j]) and overlap[i, j] >= t.a_overlap
                if not math.isnan(rms[i, j]) and rms[i, j] >= t.rms_cosine:
                    direction = "opposing" if mean[i, j] < 0 else "overlapping"
                    why = " Much of this cosine comes from their shared initial A (below)." if shared_a else ""
                    notes.append(
                        Notice(
                            "high_cosine",
                            f"{a} and {b} make {direction} updates (RMS cosine {float(rms[i, j]):.3f} ≥ "
                            f"{t.rms_cosine}). This measures how their updates overlap, not what the merge keeps: "
                            "in hubmerge's measurements the RMS cosine did not predict it. Evaluate the merge on "
                            f"both tasks before using it.{why}",
                        )
                    )
                if shared_a:
                    notes.append(
                        Notice(
                            "shared_init",
                            f"{a} and {b} have nearly identical A matrices (mean overlap {float(overlap[i, j]):.3f}): "
                            "they were probably trained from the same seed. PEFT starts A random and B at zero, "
                            "so a shared A makes their deltas look more alike than independent adapters",
                        )
                    )
        cancelling = [
            key
            for key, stats in self.per_module.items()
            if len(stats.adapters) > 1 and stats.interference is not None and stats.interference < t.cancel_ratio
        ]
        if cancelling:
            shown = ", ".join(cancelling[: t.max_listed]) + (" …" if len(cancelling) > t.max_listed else "")
            notes.append(
                Notice(
                    "cancelling_modules",
                    f"in {len(cancelling)} module(s) the adapters cancel each other (interference ratio < "
                    f"{t.cancel_ratio}: the sum keeps less than that share of the parts' energy): {shown}",
                )
            )
        for i, count in sorted(self._zero.items()):
            notes.append(
                Notice(
                    "zero_delta",
                    f"{self.names[i]} has an all-zero delta in {count} module(s); "
                    "it may be untrained (PEFT starts B at zero)",
                )
            )
        return notes


def round_float(value: float | None, digits: int = 6) -> float | None:
    """JSON-friendly: NaN and None become None; others rounded to ``digits`` significant digits."""
    if value is None or math.isnan(value):
        return None
    return float(f"{value:.{digits}g}")


def _matrix(values: torch.Tensor) -> Matrix:
    return tuple(tuple(round_float(v) for v in row) for row in values.tolist())


def _pairs(values: list[list[float]], present: list[int], names: list[str]) -> dict[str, float | None]:
    pairs = [(i, j) for k, i in enumerate(present) for j in present[k + 1 :]]
    return {f"{names[i]}|{names[j]}": round_float(values[i][j]) for i, j in pairs}
