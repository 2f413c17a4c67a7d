"""hubmerge: merge LoRA adapters exactly, without the base model, and measure their interference.

>>> import hubmerge
>>> result = hubmerge.merge(["examples/adapters/math", "examples/adapters/medicine"])
>>> result.save_pretrained("merged")
"""

import importlib
from typing import TYPE_CHECKING

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
    "GatedRepoAccessError": "errors",
    "HubError": "errors",
    "HubmergeError": "errors",
    "IncompatibleAdaptersError": "errors",
    "InvalidArgumentError": "errors",
    "LimitExceededError": "errors",
    "LoraAdapter": "adapter",
    "MissingDependencyError": "errors",
    "METHODS": "methods",
    "MergeMethod": "methods",
    "MergeResult": "result",
    "MethodParams": "methods",
    "Notice": "notice",
    "OutputExistsError": "errors",
    "PushError": "errors",
    "RepoNotFoundError": "errors",
    "RevisionNotFoundError": "errors",
    "Source": "sources",
    "SourceError": "errors",
    "Thresholds": "interference",
    "UnsafeAdapterError": "errors",
    "check_compatibility": "compat",
    "evaluate": "evaluation.runner",
    "get_method": "methods",
    "load_adapter": "adapter",
    "load_adapters": "api",
    "merge": "api",
    "parse_source": "sources",
    "similarity": "api",
}

if TYPE_CHECKING:
    from .adapter import LoraAdapter, load_adapter
    from .api import load_adapters, merge, similarity
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
        HubError,
        HubmergeError,
        IncompatibleAdaptersError,
        InvalidArgumentError,
        LimitExceededError,
        MissingDependencyError,
        OutputExistsError,
        PushError,
        RepoNotFoundError,
        RevisionNotFoundError,
        SourceError,
        UnsafeAdapterError,
    )
    from .evaluation.runner import evaluate
    from .interference import Thresholds
    from .methods import METHODS, MergeMethod, MethodParams, get_method
    from .notice import Notice
    from .result import MergeResult
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
    "GatedRepoAccessError",
    "HubError",
    "HubmergeError",
    "IncompatibleAdaptersError",
    "InvalidArgumentError",
    "LimitExceededError",
    "LoraAdapter",
    "METHODS",
    "MergeMethod",
    "MergeResult",
    "MethodParams",
    "MissingDependencyError",
    "Notice",
    "OutputExistsError",
    "PushError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "Source",
    "SourceError",
    "Thresholds",
    "UnsafeAdapterError",
    "__version__",
    "check_compatibility",
    "evaluate",
    "get_method",
    "load_adapter",
    "load_adapters",
    "merge",
    "parse_source",
    "similarity",
]
