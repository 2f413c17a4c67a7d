"""A finished merge in words: its report (:class:`~hubmerge.report.MergeReport`) and each source's recipe entry.

Pure: the loaded adapters, the compatibility check's answer and the analysis in; frozen records out.
A local source is named by its folder and the sha256 of its files, never by its path.
"""

from __future__ import annotations

from collections.abc import Sequence

from .adapter import LoraAdapter
from .compat import Compatibility
from .notice import Notice
from .provenance import HubOrigin, LocalOrigin
from .recipe import RecipeSource
from .report import (
    BaseModelSummary,
    KeptEnergy,
    MergeReport,
    MethodSummary,
    ModuleSummary,
    OutputSummary,
    SavedModule,
    SimilarityReport,
    SourceSummary,
    dtype_name,
)

__all__ = ["build_report", "recipe_source", "source_summary"]


def build_report(
    adapters: Sequence[LoraAdapter],
    names: Sequence[str],
    weights: Sequence[float],
    compat: Compatibility,
    canonical: dict[str, str],
    similarity_report: SimilarityReport,
    notes: Sequence[Notice],
    *,
    method: MethodSummary,
    exact: bool,
    output: OutputSummary | None,
    kept_energy: KeptEnergy | None,
) -> MergeReport:
    base = compat.base_model
    resolved = bool(base and base in canonical)
    only = {name: sum(1 for owners in compat.coverage.values() if owners == [i]) for i, name in enumerate(names)}
    return MergeReport(
        method=method,
        exact=exact,
        kept_energy=kept_energy,
        base_model=BaseModelSummary(
            name=base,
            revision=compat.revision,
            canonical=canonical.get(base) if base else None,
            resolved=resolved,
            note=(
                "resolved on the Hub: aliases of one repo compare equal"
                if resolved
                else "not resolved against the Hub (offline, local, or not asked): compared by name, "
                "case-insensitively for Hub ids"
            ),
        ),
        sources=tuple(source_summary(a, n, w) for a, n, w in zip(adapters, names, weights)),
        modules=ModuleSummary(
            union=len(compat.coverage),
            shared_by_all=sum(1 for owners in compat.coverage.values() if len(owners) == len(adapters)),
            only_in=only,
            coverage={key: tuple(names[i] for i in owners) for key, owners in compat.coverage.items()},
        ),
        modules_to_save=tuple(SavedModule(module=key, owner=names[i]) for key, i in compat.saved_modules.items()),
        similarity=similarity_report,
        warnings=tuple(notes),
        output=output,
    )


def source_summary(adapter: LoraAdapter, name: str, weight: float) -> SourceSummary:
    ranks = [spec.rank for spec in adapter.modules.values()] or [0]
    origin = adapter.origin
    hub = origin if isinstance(origin, HubOrigin) else None
    local = origin if isinstance(origin, LocalOrigin) else None
    config = adapter.config
    targets = config.target_modules
    return SourceSummary(
        name=name,
        source=adapter.source if hub else origin.pinned,  # a local folder by its name, never its path
        repo_id=hub.repo_id if hub else None,
        subfolder=hub.subfolder if hub else None,
        commit_sha=hub.commit_sha if hub else None,
        license=hub.license if hub else None,
        datasets=hub.datasets if hub else (),
        weight=weight,
        r=config.r,
        lora_alpha=config.lora_alpha,
        use_rslora=config.use_rslora,
        rank_pattern=dict(config.rank_pattern),
        alpha_pattern=dict(config.alpha_pattern),
        rank_min=min(ranks),
        rank_max=max(ranks),
        num_modules=len(adapter.modules),
        dtype=dtype_name(adapter.dtype),
        task_type=config.task_type,
        base_model=config.base_model_name_or_path,
        target_modules=tuple(targets) if isinstance(targets, list) else targets,
        files_sha256=dict(local.files_sha256) if local else None,
    )


def recipe_source(adapter: LoraAdapter, weight: float) -> RecipeSource:
    origin = adapter.origin
    if isinstance(origin, HubOrigin):
        return RecipeSource(
            source=origin.pinned,
            weight=weight,
            repo_id=origin.repo_id,
            subfolder=origin.subfolder,
            revision=origin.commit_sha,
        )
    return RecipeSource(source=origin.pinned, weight=weight, files_sha256=dict(origin.files_sha256))
