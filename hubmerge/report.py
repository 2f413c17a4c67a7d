"""The merge report: typed, frozen, and the same JSON as ``hubmerge_report.json``.

:class:`MergeReport` is what :func:`hubmerge.merge` measured and decided, as
data: the sources, module coverage, similarity (:class:`SimilarityReport`),
warnings (:class:`~hubmerge.notice.Notice`), the method and its exactness, and
the output. ``to_dict()`` gives the JSON (with ``schema_version``; the schema
is committed as ``hubmerge/schemas/report.schema.json``) and
:meth:`MergeReport.from_dict` reads it back. :func:`render_text` is the
terminal rendering the CLI prints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._version import __version__
from .formatting import format_number, text_table
from .notice import Notice

__all__ = [
    "BaseModelSummary",
    "KeptEnergy",
    "MergeReport",
    "MethodSummary",
    "ModuleSimilarity",
    "ModuleSummary",
    "OutputSummary",
    "SavedModule",
    "SimilarityReport",
    "SourceSummary",
    "dtype_name",
    "render_text",
]

REPORT_NAME = "hubmerge_report.json"
SCHEMA_VERSION = 1

# The output dtypes a merge can be asked for, by name.
DTYPE_CHOICES = ("float32", "float16", "bfloat16", "float64")

Matrix = tuple[tuple[float | None, ...], ...]


def dtype_name(dtype: object) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class SourceSummary:
    """One source as merged: where it came from, its display name and weight, its LoRA settings."""

    name: str
    source: str
    repo_id: str | None
    subfolder: str | None
    commit_sha: str | None
    license: str | None
    datasets: tuple[str, ...]
    weight: float
    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    rank_min: int
    rank_max: int
    num_modules: int
    dtype: str
    task_type: str | None
    base_model: str | None
    target_modules: tuple[str, ...] | str | None
    files_sha256: Mapping[str, str] | None = None  # local sources: file name → sha256


@dataclass(frozen=True)
class BaseModelSummary:
    """The base model the sources name, and whether the Hub confirmed its identity."""

    name: str | None
    revision: str | None
    canonical: str | None
    resolved: bool
    note: str


@dataclass(frozen=True)
class ModuleSummary:
    """Which modules are adapted, and by whom."""

    union: int
    shared_by_all: int
    only_in: Mapping[str, int]
    coverage: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class SavedModule:
    """A full module carried over from one source (``modules_to_save``); JSON key ``from``."""

    module: str
    owner: str = field(metadata={"json": "from"})


@dataclass(frozen=True)
class ModuleSimilarity:
    """One module's delta norms, pairwise cosines (``"a|b"``) and interference ratio."""

    adapters: tuple[str, ...]
    norms: tuple[float | None, ...]
    cosine: Mapping[str, float | None]
    interference: float | None


@dataclass(frozen=True)
class SimilarityReport:
    """The interference analysis: N×N pair matrices (``None`` where undefined) and per-module detail."""

    adapters: tuple[str, ...]
    rms_cosine: Matrix
    mean_cosine: Matrix
    norm_weighted_cosine: Matrix
    shared_modules: tuple[tuple[int, ...], ...]
    a_overlap: Matrix
    interference_ratio: float | None
    thresholds: Mapping[str, int | float]
    per_module: Mapping[str, ModuleSimilarity]


@dataclass(frozen=True)
class MethodSummary:
    """The merge method used, as the registry describes it, and the parameters it used."""

    name: str
    description: str
    paper: str | None
    exact: bool
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class KeptEnergy:
    """For a truncating method: the share of ‖ΔW‖²_F of its dense result kept, overall and per module."""

    overall: float | None
    per_module: Mapping[str, float | None]


@dataclass(frozen=True)
class OutputSummary:
    """The merged adapter: module count, stored rank (every module padded to it), dtype, and the
    oldest PEFT release that loads it (:func:`hubmerge.peft_releases.loading_release`)."""

    num_modules: int
    rank: int
    rank_min: int
    rank_max: int
    padded_modules: int
    dtype: str
    min_peft: str | None = None

    @classmethod
    def of(cls, ranks: Mapping[str, int], dtype: object) -> OutputSummary:
        values = sorted(ranks.values()) or [0]
        return cls(
            num_modules=len(ranks),
            rank=values[-1],
            rank_min=values[0],
            rank_max=values[-1],
            padded_modules=sum(1 for v in values if v < values[-1]),
            dtype=dtype_name(dtype),
        )


@dataclass(frozen=True)
class MergeReport:
    """Everything a merge measured and decided (``hubmerge_report.json``).

    ``report_only`` runs leave :attr:`output` (and :attr:`kept_energy`) ``None``.
    :attr:`serving` is where the adapter can be served (:mod:`hubmerge.serving`): the
    facts checked, the rank fit if one was asked, and one verdict per engine.
    :attr:`evaluation` is what ``eval_data`` measured on text (:mod:`hubmerge.evaluation`).
    """

    method: MethodSummary
    exact: bool
    base_model: BaseModelSummary
    sources: tuple[SourceSummary, ...]
    modules: ModuleSummary
    modules_to_save: tuple[SavedModule, ...]
    similarity: SimilarityReport
    warnings: tuple[Notice, ...]
    output: OutputSummary | None
    kept_energy: KeptEnergy | None = None
    serving: Mapping[str, Any] | None = None
    evaluation: Mapping[str, Any] | None = None
    hubmerge_version: str = __version__

    @property
    def names(self) -> tuple[str, ...]:
        """The sources' display names, in merge order."""
        return tuple(s.name for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able report, as written to ``hubmerge_report.json``."""
        data = _to_json(self)
        method = data.pop("method")
        return {
            "schema_version": SCHEMA_VERSION,
            "hubmerge_version": data.pop("hubmerge_version"),
            "method": method["name"],
            "method_info": method,
            **data,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergeReport:
        """Read a report back from its JSON form.

        Raises:
            ValueError: a field is missing, unknown, or of the wrong type.
        """
        data = dict(data)
        version = data.pop("schema_version", None)
        if version != SCHEMA_VERSION:
            raise ValueError(f"report schema_version {version!r} is not {SCHEMA_VERSION}")
        name = data.pop("method")
        method = dict(data.pop("method_info"))
        if method.get("name") != name:
            raise ValueError(f"report method {name!r} differs from method_info's {method.get('name')!r}")
        return _from_json(cls, {**data, "method": method}, "report")


T = TypeVar("T")


_SCALARS = (str, int, float, bool, type(None))


def _to_json(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALARS:  # most of a report's ~10⁵ values: the cheap checks first
        return value
    if kind is dict:
        return {str(k): _to_json(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_to_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.metadata.get("json", f.name): _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    return value


def _from_json(kind: Any, value: Any, where: str) -> Any:
    """Rebuild ``value`` (parsed JSON) as the type ``kind``; strict about names and types."""
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _from_json(option, value, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{where}: unexpected {value!r}")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(kind)
        fields = {f.metadata.get("json", f.name): f for f in dataclasses.fields(kind)}
        unknown = set(value) - set(fields)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
        args = {}
        for key, spec in fields.items():
            if key in value:
                args[spec.name] = _from_json(hints[spec.name], value[key], f"{where}.{key}")
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing field {key!r}")
        return typing.cast(Any, kind)(**args)
    if origin is tuple:
        items = typing.get_args(kind)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        item = items[0]
        return tuple(_from_json(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict, typing.get_origin(Mapping[str, int])):
        _, item = typing.get_args(kind)
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        return {str(k): _from_json(item, v, f"{where}.{k}") for k, v in value.items()}
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind in (int, str, bool):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
        return value
    raise ValueError(f"{where}: cannot read type {kind!r}")  # pragma: no cover - a new field type


def render_text(report: MergeReport, *, adapter: str | None = None) -> str:
    """A readable summary of a report for the terminal.

    Args:
        report: the report.
        adapter: where the adapter was written or pushed, filled into the serving commands.
    """
    lines = [f"hubmerge {report.hubmerge_version} — method: {report.method.name} (exact: {report.exact})"]
    base = report.base_model
    lines.append(f"base model: {base.name or 'unknown'}" + (f" @ {base.revision}" if base.revision else ""))
    lines.append("")
    header = ["adapter", "weight", "r", "alpha", "rsLoRA", "modules", "dtype", "source"]
    rows = [
        [
            s.name,
            format_number(s.weight),
            str(s.rank_min) if s.rank_min == s.rank_max else f"{s.rank_min}–{s.rank_max}",
            format_number(s.lora_alpha),
            "yes" if s.use_rslora else "no",
            s.num_modules,
            s.dtype,
            s.source,
        ]
        for s in report.sources
    ]
    lines.append(text_table(header, rows))

    sim = report.similarity
    names = sim.adapters
    if len(names) > 1:
        lines += ["", "RMS cosine of the weighted deltas (per pair, over shared modules):"]
        lines.append(
            text_table(
                ["", *names], [[a, *(format_number(v, 3) for v in row)] for a, row in zip(names, sim.rms_cosine)]
            )
        )
        pairs = [
            [
                f"{names[i]} + {names[j]}",
                format_number(sim.rms_cosine[i][j]),
                format_number(sim.mean_cosine[i][j]),
                format_number(sim.norm_weighted_cosine[i][j]),
                format_number(sim.a_overlap[i][j], 3),
                sim.shared_modules[i][j],
            ]
            for i in range(len(names))
            for j in range(i + 1, len(names))
        ]
        lines += [
            "",
            text_table(["pair", "rms cos", "mean cos", "norm-weighted", "A overlap", "shared modules"], pairs),
        ]
    lines += [
        "",
        f"interference ratio ‖ΣΔW‖²/Σ‖ΔW‖²: {format_number(sim.interference_ratio)} "
        "(1 orthogonal, >1 reinforcing, <1 cancelling)",
    ]
    out = report.output
    if out is not None:
        effective = (
            f" (effective {out.rank_min}–{out.rank_max}; {out.padded_modules} module(s) zero-padded)"
            if out.rank_min != out.rank_max
            else ""
        )
        lines.append(f"merged adapter: {out.num_modules} modules, rank {out.rank}{effective}, dtype {out.dtype}")
        if out.min_peft:
            lines.append(
                f"loads in PEFT >= {out.min_peft} (the oldest release whose LoraConfig fields and LoRA layers "
                "cover everything the adapter uses)"
            )
    kept = report.kept_energy.overall if report.kept_energy else None
    if kept is not None:
        lines.append(f"kept energy: {100 * kept:.2f}% of ‖ΔW‖² of the method's dense result (per module in the report)")
    if report.serving:
        from .serving import render_text as render_serving

        lines += ["", *render_serving(report.serving, adapter=adapter)]
    if report.evaluation:
        from .evaluation.render import text_lines

        lines += ["", *text_lines(dict(report.evaluation))]
    if report.warnings:
        lines += ["", f"warnings ({len(report.warnings)}):"]
        lines += [f"  ! {w.message}" for w in report.warnings]
    return "\n".join(lines)
