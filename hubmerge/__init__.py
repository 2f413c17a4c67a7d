"""hubmerge: merge LoRA adapters exactly, without the base model, and measure their interference.

>>> import hubmerge
>>> result = hubmerge.merge(["examples/adapters/math", "examples/adapters/medicine"])
>>> result.save_pretrained("merged")
"""

__version__ = "0.1.0"

from .adapter import AdapterConfig, LoraAdapter, load_adapter
from .api import load_adapters, merge, similarity
from .compat import Compatibility, check_compatibility
from .errors import (
    AdapterError,
    AdapterFormatError,
    AdapterNotFoundError,
    GatedRepoAccessError,
    HubError,
    HubmergeError,
    IncompatibleAdaptersError,
    InvalidArgumentError,
    LimitExceededError,
    OutputExistsError,
    PushError,
    RepoNotFoundError,
    RevisionNotFoundError,
    SourceError,
    UnsafeAdapterError,
)
from .methods import METHODS, MergeMethod, MethodParams, get_method
from .report import Notice
from .result import MergeResult
from .similarity import Thresholds
from .sources import Source, parse_source

__all__ = [
    "AdapterConfig",
    "AdapterError",
    "AdapterFormatError",
    "AdapterNotFoundError",
    "Compatibility",
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
    "get_method",
    "load_adapter",
    "load_adapters",
    "merge",
    "parse_source",
    "similarity",
]
