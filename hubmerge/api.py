"""The Python API: load → check → merge and analyse, in one streaming pass.

:func:`merge` is what the CLI and the Space call. It loads every source,
checks them all (raising once with every problem), then walks the union of
adapted modules one at a time: each module's factors are read, compared in
rank space and concatenated, then dropped, so the inputs are never all in
memory next to the output.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import __version__
from .adapter import CONFIG_NAME, KEY_PREFIX, SAFETENSORS_NAME, LoraAdapter, load_adapter
from .compat import Compatibility, check_compatibility
from .errors import InvalidArgumentError, SourceError
from .merge import build_config, concat_factors
from .output import write_directory
from .report import REPORT_NAME, Notice
from .similarity import SimilarityAccumulator, Thresholds, module_gram
from .sources import Source, parse_source

__all__ = ["MergeResult", "load_adapters", "merge", "similarity"]

logger = logging.getLogger(__name__)

SourceLike = str | Path | Source | LoraAdapter

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}  # fmt: skip
DTYPE_CHOICES = ("float32", "float16", "bfloat16", "float64")


class MergeResult:
    """A merged adapter held in memory, with its report.

    Attributes:
        config: the merged ``adapter_config.json`` (a dict).
        tensors: the merged adapter's tensors, PEFT key → tensor (empty for a report-only run).
        report: the JSON-able merge report.
        adapters: the loaded input adapters.
    """

    def __init__(self, *, config: dict, tensors: dict[str, torch.Tensor], report: dict, adapters: list[LoraAdapter]):
        self.config = config
        self.tensors = tensors
        self.report = report
        self.adapters = adapters

    def __repr__(self) -> str:
        names = ", ".join(a.name for a in self.adapters)
        return (
            f"MergeResult(adapters=[{names}], modules={self.report['modules']['union']}, exact={self.report['exact']})"
        )

    @property
    def warnings(self) -> list[dict]:
        return self.report["warnings"]

    def save_pretrained(self, save_directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write a directory that ``peft.PeftModel.from_pretrained`` loads.

        It holds ``adapter_config.json``, ``adapter_model.safetensors`` and
        ``hubmerge_report.json``, written atomically.

        Args:
            save_directory: where to write.
            overwrite: replace an existing non-empty directory.

        Returns:
            The directory written.

        Raises:
            OutputExistsError: the directory is not empty and ``overwrite`` is false.
            InvalidArgumentError: this result was made with ``report_only=True``.
        """
        if not self.tensors:
            raise InvalidArgumentError("this result has no tensors (it was made with report_only=True)")
        metadata = {"format": "pt", "hubmerge_version": __version__}
        return write_directory(
            save_directory,
            {
                CONFIG_NAME: lambda p: p.write_text(json.dumps(self.config, indent=2) + "\n", encoding="utf-8"),
                SAFETENSORS_NAME: lambda p: save_file(self.tensors, str(p), metadata=metadata),
                REPORT_NAME: lambda p: p.write_text(
                    json.dumps(self.report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
                ),
            },
            overwrite=overwrite,
        )


def load_adapters(sources: Sequence[SourceLike], *, allow_pickle: bool = False) -> list[LoraAdapter]:
    """Parse and load every source, giving each a unique display name.

    Args:
        sources: directories, parsed :class:`Source` objects or already loaded adapters.
        allow_pickle: accept ``adapter_model.bin`` where there is no safetensors file.

    Returns:
        The adapters, in order.

    Raises:
        SourceError, AdapterError: a source is malformed, missing or unreadable.
    """
    adapters = []
    for item in sources:
        if isinstance(item, LoraAdapter):
            adapters.append(item)
            continue
        source = item if isinstance(item, Source) else parse_source(str(item))
        if not source.is_local:
            raise SourceError(
                f"{source}: is a Hub reference, but no local directory of that name exists and this "
                "version of hubmerge reads local adapters only"
            )
        adapters.append(load_adapter(source.path, name=source.name, source=source.text, allow_pickle=allow_pickle))
    seen: dict[str, int] = {}
    for adapter in adapters:
        count = seen.get(adapter.name, 0)
        seen[adapter.name] = count + 1
        if count:
            adapter.name = f"{adapter.name}-{count + 1}"
    return adapters


def merge(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    allow_base_mismatch: bool = False,
    report_only: bool = False,
    thresholds: Thresholds | None = None,
) -> MergeResult:
    """Merge LoRA adapters exactly (Σ wᵢ·sᵢ·Bᵢ·Aᵢ) and measure their interference.

    Args:
        sources: two or more adapters: directories, :class:`Source` objects or
            loaded :class:`LoraAdapter` objects. One adapter is allowed (it
            rescales it by its weight).
        weights: one weight per source, default 1 each; negative weights subtract.
        dtype: output dtype (``"float32"``, ``"bfloat16"``, …); default the inputs'.
        allow_pickle: accept ``adapter_model.bin`` sources (loaded with ``weights_only=True``).
        allow_base_mismatch: merge adapters that name different base models (a warning instead).
        report_only: compute the report without building the merged tensors.
        thresholds: when to warn; default :class:`Thresholds()`.

    Returns:
        A :class:`MergeResult`; ``result.save_pretrained(dir)`` writes it.

    Raises:
        SourceError, AdapterError: a source cannot be read.
        IncompatibleAdaptersError: the adapters cannot be summed exactly (every problem listed).
        InvalidArgumentError: bad weights or dtype.

    Example:
        >>> result = merge(["examples/adapters/math", "examples/adapters/medicine"], weights=[1.0, 0.5])
        >>> result.report["similarity"]["rms_cosine"][0][1]
        0.0123
        >>> result.save_pretrained("merged")
    """
    adapters = load_adapters(sources, allow_pickle=allow_pickle)
    coefficients_w = _check_weights(weights, len(adapters))
    out_dtype, dtype_notes = _choose_dtype(dtype, adapters)
    compat = check_compatibility(adapters, allow_base_mismatch=allow_base_mismatch)

    names = [a.name for a in adapters]
    accumulator = SimilarityAccumulator(names, thresholds or Thresholds())
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for key, owners in compat.coverage.items():
        factors = [adapters[i].factors(key) if i in owners else None for i in range(len(adapters))]
        coefficients = [w * a.scale(key) if key in a.modules else 0.0 for w, a in zip(coefficients_w, adapters)]
        accumulator.add(key, module_gram(factors, coefficients))
        if report_only:
            continue
        a, b = concat_factors([factors[i] for i in owners], [coefficients[i] for i in owners], dtype=out_dtype)
        kind = adapters[owners[0]].modules[key].kind
        a_name, b_name = (
            ("lora_embedding_A", "lora_embedding_B") if kind == "embedding" else ("lora_A.weight", "lora_B.weight")
        )
        tensors[f"{KEY_PREFIX}{key}.{a_name}"] = a
        tensors[f"{KEY_PREFIX}{key}.{b_name}"] = b
        ranks[key] = a.shape[0]
    if not report_only:
        for group, owners in (("saved_modules", compat.saved_modules), ("base_layers", compat.base_layers)):
            for key, owner in owners.items():
                for name in getattr(adapters[owner], group)[key]:
                    tensors[name] = adapters[owner].tensor(name)

    similarity_summary, similarity_notes = accumulator.summary()
    tasks = {a.config.task_type for a in adapters}
    config = build_config(
        ranks,
        base_model_name_or_path=compat.base_model,
        revision=compat.revision,
        task_type=tasks.pop() if len(tasks) == 1 else None,
        fan_in_fan_out=adapters[0].config.fan_in_fan_out,
        modules_to_save=list(compat.saved_modules),
    )
    report = _build_report(
        adapters, coefficients_w, compat, similarity_summary,
        [*compat.warnings, *dtype_notes, *similarity_notes],
        output=None if report_only else _output_summary(ranks, out_dtype),
    )  # fmt: skip
    for note in report["warnings"]:
        logger.warning(note["message"])
    return MergeResult(config=config, tensors=tensors, report=report, adapters=adapters)


def similarity(
    sources: Sequence[SourceLike],
    *,
    weights: Sequence[float] | None = None,
    allow_pickle: bool = False,
    allow_base_mismatch: bool = False,
    thresholds: Thresholds | None = None,
) -> dict:
    """The interference analysis alone: ``merge(..., report_only=True).report["similarity"]``.

    Returns:
        The similarity section of the report: ``rms_cosine``, ``mean_cosine``,
        ``norm_weighted_cosine``, ``a_overlap`` (N×N lists), ``shared_modules``,
        ``interference_ratio`` and ``per_module``.
    """
    result = merge(
        sources,
        weights=weights,
        allow_pickle=allow_pickle,
        allow_base_mismatch=allow_base_mismatch,
        report_only=True,
        thresholds=thresholds,
    )
    return result.report["similarity"]


def _check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = list(weights)
    if len(weights) != count:
        raise InvalidArgumentError(f"got {len(weights)} weight(s) for {count} adapter(s); give one weight per adapter")
    for value in weights:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgumentError(f"weight {value!r} is not a finite number")
    return [float(w) for w in weights]


def _choose_dtype(dtype, adapters) -> tuple[torch.dtype, list[Notice]]:
    if dtype is not None:
        if isinstance(dtype, torch.dtype) and dtype in _DTYPE_NAMES.values():
            return dtype, []
        if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
            return _DTYPE_NAMES[dtype.lower()], []
        raise InvalidArgumentError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    found = {a.dtype for a in adapters}
    chosen = found.pop()
    if not found:
        return chosen, []
    for other in found:
        chosen = torch.promote_types(chosen, other)
    listing = ", ".join(f"{a.name}: {_dtype_name(a.dtype)}" for a in adapters)
    return chosen, [
        Notice(
            "mixed_dtypes",
            f"the adapters have different dtypes ({listing}); the merge is saved as {_dtype_name(chosen)}",
        )
    ]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _output_summary(ranks: dict[str, int], dtype: torch.dtype) -> dict:
    values = sorted(ranks.values()) or [0]
    return {
        "num_modules": len(ranks),
        "rank": max(set(values), key=values.count),
        "rank_min": values[0],
        "rank_max": values[-1],
        "dtype": _dtype_name(dtype),
        "files": [CONFIG_NAME, SAFETENSORS_NAME, REPORT_NAME],
    }


def _build_report(adapters, weights, compat: Compatibility, sim: dict, notes, *, output) -> dict:
    sources = []
    for adapter, weight in zip(adapters, weights):
        ranks = [spec.rank for spec in adapter.modules.values()] or [0]
        sources.append(
            {
                "name": adapter.name,
                "source": adapter.source,
                "commit_sha": adapter.commit_sha,
                "weight": weight,
                "r": adapter.config.r,
                "lora_alpha": adapter.config.lora_alpha,
                "use_rslora": adapter.config.use_rslora,
                "rank_pattern": adapter.config.rank_pattern,
                "alpha_pattern": adapter.config.alpha_pattern,
                "rank_min": min(ranks),
                "rank_max": max(ranks),
                "num_modules": len(adapter.modules),
                "dtype": _dtype_name(adapter.dtype),
                "task_type": adapter.config.task_type,
                "base_model": adapter.config.base_model_name_or_path,
                "target_modules": adapter.config.target_modules,
            }
        )
    names = [a.name for a in adapters]
    only = {name: sum(1 for owners in compat.coverage.values() if owners == [i]) for i, name in enumerate(names)}
    return {
        "hubmerge_version": __version__,
        "method": "sum",
        "exact": True,
        "base_model": {
            "name": compat.base_model,
            "revision": compat.revision,
            "resolved": False,
            "note": "compared by name (case-insensitive for Hub ids); not resolved against the Hub",
        },
        "sources": sources,
        "modules": {
            "union": len(compat.coverage),
            "shared_by_all": sum(1 for owners in compat.coverage.values() if len(owners) == len(adapters)),
            "only_in": only,
            "coverage": {key: [names[i] for i in owners] for key, owners in compat.coverage.items()},
        },
        "modules_to_save": [{"module": key, "from": names[i]} for key, i in compat.saved_modules.items()],
        "similarity": sim,
        "warnings": [note.to_dict() for note in notes],
        "output": output,
    }
