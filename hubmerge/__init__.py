"""hubmerge: merge LoRA adapters exactly, without the base model, and measure their interference.

>>> import hubmerge
>>> result = hubmerge.merge(["examples/adapters/math", "examples/adapters/medicine"])
>>> folder = result.save_pretrained("merged")
"""

import importlib
import typing

from ._version import __version__

# Public name → the module that defines it. Imported on first use, so that
# `hubmerge --help` and argument errors answer without importing torch.
_EXPORTS = {
    "AdapterConfig": "config",
    "AdapterError": "errors",
    "AdapterFormatError": "errors",
    "AdapterNotFoundError": "errors",
    "BaseModelError": "errors",
    "EvaluationDataError": "errors",
    "EvaluationMemoryError": "errors",
    "Compatibility": "compat",
    "GGUFExportError": "errors",
    "GatedRepoAccessError": "errors",
    "HubError": "errors",
    "HubOrigin": "provenance",
    "HubmergeError": "errors",
    "IncompatibleAdaptersError": "errors",
    "InvalidArgumentError": "errors",
    "LimitExceededError": "errors",
    "LocalOrigin": "provenance",
    "LoraAdapter": "adapter",
    "MissingDependencyError": "errors",
    "METHODS": "methods",
    "MergeMethod": "methods",
    "MergeReport": "report",
    "MergeResult": "result",
    "MethodParams": "methods",
    "Notice": "notice",
    "OutputExistsError": "errors",
    "Problem": "errors",
    "PushError": "errors",
    "PushResult": "hub",
    "Recipe": "recipe",
    "RepoNotFoundError": "errors",
    "RevisionNotFoundError": "errors",
    "SimilarityReport": "report",
    "Source": "sources",
    "SourceError": "errors",
    "Thresholds": "interference",
    "UnsafeAdapterError": "errors",
    "check_compatibility": "compat",
    "evaluate": "evaluation.runner",
    "convert_to_gguf": "gguf_export",
    "get_method": "methods",
    "load_adapter": "adapter",
    "load_adapters": "loading",
    "merge": "api",
    "parse_source": "sources",
    "servability": "serving",
    "similarity": "api",
}

if typing.TYPE_CHECKING:
    from .adapter import LoraAdapter, load_adapter
    from .api import merge, similarity
    from .compat import Compatibility, check_compatibility
    from .config import AdapterConfig
    from .errors import (
        AdapterError,
        AdapterFormatError,
        AdapterNotFoundError,
        BaseModelError,
        EvaluationDataError,
        EvaluationMemoryError,
        GatedRepoAccessError,
        GGUFExportError,
        HubError,
        HubmergeError,
        IncompatibleAdaptersError,
        InvalidArgumentError,
        LimitExceededError,
        MissingDependencyError,
        OutputExistsError,
        Problem,
        PushError,
        RepoNotFoundError,
        RevisionNotFoundError,
        SourceError,
        UnsafeAdapterError,
    )
    from .evaluation.runner import evaluate
    from .gguf_export import convert_to_gguf
    from .hub import PushResult
    from .interference import Thresholds
    from .loading import load_adapters
    from .methods import METHODS, MergeMethod, MethodParams, get_method
    from .notice import Notice
    from .provenance import HubOrigin, LocalOrigin
    from .recipe import Recipe
    from .report import MergeReport, SimilarityReport
    from .result import MergeResult
    from .serving import servability
    from .sources import Source, parse_source


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "AdapterConfig",
    "AdapterError",
    "AdapterFormatError",
    "AdapterNotFoundError",
    "BaseModelError",
    "Compatibility",
    "EvaluationDataError",
    "EvaluationMemoryError",
    "GGUFExportError",
    "GatedRepoAccessError",
    "HubError",
    "HubOrigin",
    "HubmergeError",
    "IncompatibleAdaptersError",
    "InvalidArgumentError",
    "LimitExceededError",
    "LocalOrigin",
    "LoraAdapter",
    "METHODS",
    "MergeMethod",
    "MergeReport",
    "MergeResult",
    "MethodParams",
    "MissingDependencyError",
    "Notice",
    "OutputExistsError",
    "Problem",
    "PushError",
    "PushResult",
    "Recipe",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "SimilarityReport",
    "Source",
    "SourceError",
    "Thresholds",
    "UnsafeAdapterError",
    "__version__",
    "check_compatibility",
    "convert_to_gguf",
    "evaluate",
    "get_method",
    "load_adapter",
    "load_adapters",
    "merge",
    "parse_source",
    "servability",
    "similarity",
]
