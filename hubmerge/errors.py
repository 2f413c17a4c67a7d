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
    ├── GGUFExportError (ValueError)          llama.cpp cannot take this adapter (or its base) as GGUF
    └── HubError (OSError)                    a Hub request failed or was refused
        ├── RepoNotFoundError                 missing, or private without access
        ├── GatedRepoAccessError              gated, and this account has no access
        ├── RevisionNotFoundError             no such branch, tag or commit
        └── PushError                         creating the repo or the commit was refused

Messages name the source (and file, and module key where there is one) and
say what is wrong in the terms of the Python API. The same facts are also
attributes (``source``, ``repo_id``, ``revision``, ``module``, and for Hub
failures huggingface_hub's ``server_message`` and ``request_id``), and
:attr:`HubmergeError.reason` names the case with a stable code, so each front
end (the CLI, the Space) adds its own next step from a table of its own
instead of the library naming flags one front end has and another lacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "AdapterError",
    "AdapterFormatError",
    "AdapterNotFoundError",
    "BaseModelError",
    "EvaluationDataError",
    "EvaluationMemoryError",
    "GGUFExportError",
    "GatedRepoAccessError",
    "HubError",
    "HubmergeError",
    "IncompatibleAdaptersError",
    "InvalidArgumentError",
    "LimitExceededError",
    "MissingDependencyError",
    "OutputExistsError",
    "Problem",
    "PushError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "SourceError",
    "UnsafeAdapterError",
]


class HubmergeError(Exception):
    """Base class of every error hubmerge raises deliberately.

    Attributes:
        reason: a stable code for the case (e.g. ``"pickle_only"``, ``"not_logged_in"``), or ``None``;
            front ends map ``(type, reason)`` to the next step in their own words.
        source: the source reference the error is about, where there is one.
        repo_id, revision: the Hub repository and revision, where there are.
        module: the adapted module key, where there is one.
        server_message, request_id: what the Hub answered, for a failed Hub request.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        source: str | None = None,
        repo_id: str | None = None,
        revision: str | None = None,
        module: str | None = None,
        server_message: str | None = None,
        request_id: str | None = None,
    ):
        super().__init__(message)
        self.reason = reason
        self.source = source
        self.repo_id = repo_id
        self.revision = revision
        self.module = module
        self.server_message = server_message
        self.request_id = request_id


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


@dataclass(frozen=True)
class Problem:
    """One reason a set of adapters cannot be merged exactly.

    Attributes:
        message: one line naming the source and, where it applies, the module key and what differs.
        code: a stable code for the case (``"base_model_mismatch"``, ``"nonfinite"``, …).
        source: the source it is about, where it is about one.
        module: the module key, where it is about one.
    """

    message: str
    code: str = "incompatible"
    source: str | None = None
    module: str | None = None

    def __str__(self) -> str:
        return self.message


class IncompatibleAdaptersError(HubmergeError, ValueError):
    """Raised by the compatibility check with *every* problem it found.

    Attributes:
        problems: one :class:`Problem` per problem found, in the order found.
        reasons: the set of their codes.
    """

    def __init__(self, problems: Sequence[Problem | str]):
        self.problems = [p if isinstance(p, Problem) else Problem(p) for p in problems]
        count = len(self.problems)
        head = f"the adapters cannot be merged exactly ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  - {p.message}" for p in self.problems)]))
        self.reasons = {p.code for p in self.problems}


class InvalidArgumentError(HubmergeError, ValueError):
    """Raised when a merge option has a bad value (weights count, dtype, …)."""


class OutputExistsError(HubmergeError, FileExistsError):
    """Raised when the output directory exists and is not empty, and
    ``overwrite`` was not given."""


class LimitExceededError(HubmergeError, ValueError):
    """Raised when a merge would pass a configured limit: more adapters than
    ``max_adapters``, or more bytes to download than ``max_download_bytes``
    (a mistyped repo id must not fill the disk). :attr:`limit` (also its
    :attr:`reason`) names which."""

    def __init__(self, message: str, *, limit: str, source: str | None = None):
        super().__init__(message, reason=limit, source=source)
        self.limit = limit  # "max_adapters" or "max_download_bytes": the argument that raises it


class GGUFExportError(HubmergeError, ValueError):
    """Raised when an adapter cannot be written as a llama.cpp GGUF LoRA: the message says what llama.cpp
    cannot take (full weight copies, a tied lm_head, an architecture without a known conversion)."""


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

    def __init__(self, message: str, *, setting: str = "batch_size"):
        super().__init__(message, reason=setting)
        self.setting = setting


class MissingDependencyError(HubmergeError, ImportError):
    """Raised when a feature needs an optional extra that is not installed; the message names the
    ``pip install`` command."""


def lookup_hint(err: BaseException, hints: Mapping[tuple[type, str | None], str]) -> str | None:
    """A front end's next step for ``err`` from its table of (exception type, reason) → hint.

    Walks the exception's MRO; at each type a matching reason wins (for
    :class:`IncompatibleAdaptersError`, any of its problems' codes), then ``None``, the type as a whole.
    """
    reasons = getattr(err, "reasons", None) or {getattr(err, "reason", None)}
    for kind in type(err).__mro__:
        for reason in sorted(r for r in reasons if r):
            if (kind, reason) in hints:
                return hints[(kind, reason)]
        if (kind, None) in hints:
            return hints[(kind, None)]
    return None
