"""Where an adapter comes from: a local directory or a Hub reference.

One grammar, parsed in one place::

    ./path/to/adapter            a local directory (also absolute paths, ~, and any existing directory)
    user/repo                    a Hub repository, default branch
    user/repo@v1                 … at a branch, tag or commit sha
    user/repo/sub/folder@v1      … an adapter stored in a subfolder

A relative name that exists as a local directory is local, as in
transformers' ``from_pretrained``. Apart from that one ``isdir`` look-up,
parsing does no I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .errors import InvalidArgumentError, SourceError

__all__ = ["Source", "check_repo_id", "is_repo_id", "parse_source"]

# A subfolder segment: no "..", no empty segments, nothing that could escape the repo.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Source:
    """A parsed source reference.

    Exactly one of ``path`` (local) and ``repo_id`` (Hub) is set.
    """

    text: str
    path: Path | None = None
    repo_id: str | None = None
    subfolder: str | None = None
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def name(self) -> str:
        """A short readable name (the last path or subfolder component)."""
        if self.path is not None:
            return self.path.resolve().name or str(self.path)
        if self.subfolder:
            return self.subfolder.rsplit("/", 1)[-1]
        return (self.repo_id or self.text).split("/")[-1]

    def __str__(self) -> str:
        return self.text


def parse_source(text: str) -> Source:
    """Parse a source reference.

    Args:
        text: a local directory or ``user/repo[/sub/folder][@revision]``.

    Returns:
        The parsed :class:`Source`.

    Raises:
        SourceError: if ``text`` is neither an existing directory nor a valid Hub reference.

    Example:
        >>> parse_source("user/adapters/math@v1")
        Source(text='user/adapters/math@v1', path=None, repo_id='user/adapters', subfolder='math', revision='v1')
    """
    if not isinstance(text, str) or not text.strip():
        raise SourceError("empty source reference: give a directory or a Hub repo id like 'user/repo'")
    text = text.strip()
    looks_local = text.startswith(("/", "./", "../", "~")) or text in (".", "..")
    if looks_local or os.path.isdir(text):
        return Source(text=text, path=Path(text).expanduser())

    ref, _, revision = text.partition("@")
    if "@" in text and not revision:
        raise SourceError(f"{text!r}: nothing after '@'; give a branch, tag or commit sha, or drop the '@'")
    if "@" in revision:
        raise SourceError(f"{text!r}: more than one '@'; the form is user/repo[/subfolder][@revision]")
    parts = ref.split("/")
    if len(parts) < 2 or not all(parts):
        raise SourceError(
            f"{text!r} is not an existing directory nor a Hub reference; "
            "the form is user/repo[/subfolder][@revision] or a path to a local directory"
        )
    repo_id = "/".join(parts[:2])
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise SourceError(f"{text!r}: {repo_id!r} is not a valid Hub repo id ({err})") from None
    sub = parts[2:]
    for segment in sub:
        if not _SEGMENT.match(segment):
            raise SourceError(
                f"{text!r}: subfolder segment {segment!r} is not allowed "
                "(letters, digits, '_', '-', '.'; no '..' or empty segments)"
            )
    return Source(
        text=text,
        repo_id=repo_id,
        subfolder="/".join(sub) or None,
        revision=revision or None,
    )


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if the Hub accepts it as ``namespace/name``, else :class:`InvalidArgumentError`.

    Example:
        >>> check_repo_id("alice/math-medicine-merged")
        'alice/math-medicine-merged'
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InvalidArgumentError(f"{repo_id!r} is not a valid repo id ({err})", reason="bad_repo_id") from err
    return repo_id


def is_repo_id(name: str) -> bool:
    """Whether ``name`` passes the Hub's repo-id rules (a local path such as ``./llama`` does not)."""
    try:
        check_repo_id(name)
    except InvalidArgumentError:
        return False
    return True
