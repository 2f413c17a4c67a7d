"""Every exception hubmerge raises on purpose.

Callers catch :class:`HubmergeError` for "hubmerge refused, and the message
says why"; anything else escaping hubmerge is a bug. Each class also subclasses
the builtin it resembles, so ``except ValueError`` keeps working::

    HubmergeError
    ├── SourceError (ValueError)              a source reference that cannot be parsed
    ├── AdapterError                          a source whose adapter files cannot be used
    │   ├── AdapterNotFoundError (FileNotFoundError)
    │   ├── UnsafeAdapterError                pickle weights refused without allow_pickle
    │   └── AdapterFormatError (ValueError)   broken config.json or tensor file
    ├── IncompatibleAdaptersError (ValueError) the adapters cannot be summed exactly
    ├── InvalidArgumentError (ValueError)     a merge option with a bad value
    ├── OutputExistsError (FileExistsError)   would overwrite a non-empty directory
    ├── LimitExceededError (ValueError)       too many adapters, or too many bytes to download
    ├── EvaluationDataError (ValueError)      evaluation data that cannot be read or matched to a source
    ├── BaseModelError (ValueError)           a base model that cannot be used to evaluate these adapters
    ├── EvaluationMemoryError (MemoryError)   the evaluation ran out of memory
    ├── MissingDependencyError (ImportError)  an optional extra (``hubmerge[eval]``) is not installed
    └── HubError (OSError)                    a Hub request failed or was refused
        ├── RepoNotFoundError                 missing, or private without access
        ├── GatedRepoAccessError              gated, and this account has no access
        ├── RevisionNotFoundError             no such branch, tag or commit
        └── PushError                         creating the repo or the commit was refused

Messages name the source (and file, and module key where there is one) and
say what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AdapterError",
    "AdapterFormatError",
    "AdapterNotFoundError",
    "BaseModelError",
    "EvaluationDataError",
    "EvaluationMemoryError",
    "GatedRepoAccessError",
    "HubError",
    "HubmergeError",
    "IncompatibleAdaptersError",
    "InvalidArgumentError",
    "LimitExceededError",
    "MissingDependencyError",
    "OutputExistsError",
    "PushError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "SourceError",
    "UnsafeAdapterError",
]


class HubmergeError(Exception):
    """Base class of every error hubmerge raises deliberately."""


class SourceError(HubmergeError, ValueError):
    """Raised when a source reference (``user/repo/sub@rev`` or a path) is malformed."""


class AdapterError(HubmergeError):
    """Raised when the files of one source cannot be used as a LoRA adapter."""


class AdapterNotFoundError(AdapterError, FileNotFoundError):
    """Raised when a source has no ``adapter_config.json`` or no adapter weights."""


class UnsafeAdapterError(AdapterError):
    """Raised when a source only has pickle weights (``adapter_model.bin``) and
    ``allow_pickle`` was not given: unpickling a stranger's file can run code."""


class AdapterFormatError(AdapterError, ValueError):
    """Raised when ``adapter_config.json`` or the tensor file cannot be parsed."""


class IncompatibleAdaptersError(HubmergeError, ValueError):
    """Raised by the compatibility check with *every* problem it found.

    Attributes:
        problems: one line per problem, each naming the source and, where it
            applies, the module key and what differs.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        count = len(self.problems)
        head = f"the adapters cannot be merged exactly ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class InvalidArgumentError(HubmergeError, ValueError):
    """Raised when a merge option has a bad value (weights count, dtype, …)."""


class OutputExistsError(HubmergeError, FileExistsError):
    """Raised when the output directory exists and is not empty, and
    ``overwrite`` was not given."""


class LimitExceededError(HubmergeError, ValueError):
    """Raised when a merge would pass a configured limit: more adapters than
    ``max_adapters``, or more bytes to download than ``max_download_bytes``
    (a mistyped repo id must not fill the disk). :attr:`limit` names which."""

    def __init__(self, message: str, *, limit: str):
        super().__init__(message)
        self.limit = limit  # "max_adapters" or "max_download_bytes": the argument that raises it


class HubError(HubmergeError, OSError):
    """Raised when a Hub request fails (unreachable, an unexpected HTTP error)
    or is refused; the message names the repo and says what to do next."""


class RepoNotFoundError(HubError):
    """Raised when a repository does not exist, or is private and the token
    (or the lack of one) gives no access."""


class GatedRepoAccessError(HubError):
    """Raised when a repository is gated and this account has not been granted access."""


class RevisionNotFoundError(HubError):
    """Raised when a branch, tag or commit sha does not exist in a repository."""


class PushError(HubError):
    """Raised when creating the target repository or its commit is refused
    (no write access, a branch that moved during the push)."""


class EvaluationDataError(HubmergeError, ValueError):
    """Raised when evaluation data cannot be used: a missing or empty file, a record with no usable
    text field, no record of the chosen split, or a domain name that matches no source."""


class BaseModelError(HubmergeError, ValueError):
    """Raised when the base model cannot evaluate the adapters: not a model, no tokenizer, or
    modules whose shapes do not fit the adapters' factors (checked before any forward pass)."""


class EvaluationMemoryError(HubmergeError, MemoryError):
    """Raised when the evaluation runs out of memory. :attr:`setting` names the argument to
    lower first (``"batch_size"``; with a batch of one, ``"max_length"``)."""

    def __init__(self, message: str, *, setting: str):
        super().__init__(message)
        self.setting = setting


class MissingDependencyError(HubmergeError, ImportError):
    """Raised when a feature needs an optional extra that is not installed; the message names the
    ``pip install`` command."""
