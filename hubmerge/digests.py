"""The sha256 of a local file, remembered while the file is unchanged.

A merge pins each local source by the sha256 of the two files it reads
(:mod:`hubmerge.provenance`). For an 8B-shaped adapter that is ~170 MB to hash
per source; merging the same folders again (a weight sweep, a replay, a second
method) need not hash them again. Like huggingface_hub's upload cache, a digest
is reused only while the file's fingerprint is what it was when it was hashed:
size, modification and status-change times (nanoseconds), inode and device.
Nothing can set a file's status-change time back (``touch`` and ``os.utime``
reset the modification time but set the status-change time to now), so any
write to the file makes it miss.

A file changed within :data:`SETTLE_S` of being hashed is hashed but not
remembered: file times tick coarsely (a few milliseconds), so two writes within
one tick could leave the same fingerprint (git's "racily clean" entries).

The digests live in one JSON file under ``$HF_HOME/hubmerge/``, replaced
atomically; a cache that cannot be read is ignored, one that cannot be written
leaves the result unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["SETTLE_S", "file_sha256"]

SETTLE_S = 2.0  # a file changed more recently than this is not remembered
MAX_ENTRIES = 4096  # the oldest entries go first beyond this
_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The hex sha256 of ``path``'s content, from the cache while the file is unchanged.

    Args:
        path: a regular file.

    Returns:
        The digest, always equal to hashing the file's current content.

    Raises:
        OSError: the file cannot be read.
    """
    key = os.path.realpath(path)
    before = _fingerprint(key)
    with _lock:
        entries = _read()
    found = entries.get(key)
    if isinstance(found, dict) and found.get("stat") == before and isinstance(found.get("sha256"), str):
        return found["sha256"]
    digest = _hash(key)
    after = _fingerprint(key)
    if after == before and time.time() - max(after[1], after[2]) / 1e9 > SETTLE_S:
        with _lock:
            entries = _read()  # another merge may have added entries meanwhile
            entries.pop(key, None)
            entries[key] = {"stat": after, "sha256": digest}
            _write(dict(list(entries.items())[-MAX_ENTRIES:]))
    return digest


def _fingerprint(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _cache_file() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hubmerge" / "sha256.json"


def _read() -> dict[str, object]:
    try:
        loaded = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write(entries: dict[str, object]) -> None:
    target = _cache_file()
    temporary = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".sha256-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(entries, out)
        os.replace(temporary, target)
        temporary = None
    except OSError:
        pass  # a read-only or full cache directory: the digest is still right, only not remembered
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
