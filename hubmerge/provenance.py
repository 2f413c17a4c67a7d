"""Where a source came from, as a frozen record: a Hub commit, or a local folder and its files' digests.

The download step (:mod:`hubmerge.hub`) returns a :class:`HubOrigin`; a local
source gets a :class:`LocalOrigin`, which names the folder only by its name
(never an absolute path, which would leak the machine's layout into a public
card and could not be replayed elsewhere) and pins its content by the sha256
of the two files a merge reads.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .digests import file_sha256

__all__ = ["HubOrigin", "LocalOrigin", "Origin", "local_origin", "local_origin_soon", "same_files"]


@dataclass(frozen=True)
class HubOrigin:
    """A Hub adapter pinned to the commit it was downloaded from, with its card's licence and datasets."""

    repo_id: str
    subfolder: str | None
    revision: str | None  # as the user asked for it (branch, tag, sha, or None for the default branch)
    commit_sha: str | None  # None only offline, where the cache could not say
    license: str | None = None
    datasets: tuple[str, ...] = ()

    @property
    def pinned(self) -> str:
        """``repo[/subfolder]@sha``: the reference that fetches exactly these files again."""
        where = self.repo_id + (f"/{self.subfolder}" if self.subfolder else "")
        return f"{where}@{self.commit_sha}" if self.commit_sha else where


@dataclass(frozen=True)
class LocalOrigin:
    """A local adapter folder: its name and the sha256 of each file read (name → hex digest)."""

    folder: str
    files_sha256: tuple[tuple[str, str], ...]

    @property
    def pinned(self) -> str:
        return self.folder


Origin = HubOrigin | LocalOrigin


def same_files(a: Origin, b: Origin) -> bool:
    """Whether two sources are known to be the same files: equal digests, or the same Hub commit and folder.

    A local folder and a Hub repo are never called the same (the Hub's digests are not at hand)."""
    if isinstance(a, LocalOrigin) and isinstance(b, LocalOrigin):
        return a.files_sha256 == b.files_sha256
    if isinstance(a, HubOrigin) and isinstance(b, HubOrigin):
        return a.commit_sha is not None and (a.repo_id, a.subfolder, a.commit_sha) == (
            b.repo_id,
            b.subfolder,
            b.commit_sha,
        )
    return False


def local_origin(directory: Path, files: tuple[Path, ...]) -> LocalOrigin:
    """The :class:`LocalOrigin` of ``files`` in ``directory`` (digests remembered while a file is unchanged)."""
    digests = [(path.name, file_sha256(path)) for path in files]
    return LocalOrigin(folder=directory.resolve().name or str(directory), files_sha256=tuple(digests))


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def local_origin_soon(directory: Path, files: tuple[Path, ...]) -> Future[LocalOrigin]:
    """:func:`local_origin` in a background thread, so hashing overlaps the merge's own reads.

    hashlib releases the GIL while it hashes, so on a second core the digests cost the merge
    almost no time; the result is waited for only when a card or recipe needs it.
    """
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubmerge-sha256")
    return _executor.submit(local_origin, directory, files)
