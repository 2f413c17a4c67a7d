"""Writing a directory atomically: all of it appears, or nothing changes.

Files are written into a temporary sibling directory, which is then renamed
into place. An existing non-empty directory is replaced only with
``overwrite=True``, and even then the old one is moved aside first and
removed only once the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputExistsError

__all__ = ["check_writable", "write_directory"]

# name → a function that writes that file to the given path
FileWriter = Callable[[Path], object]


def check_writable(directory: str | Path, *, overwrite: bool = False) -> Path:
    """Fail early if ``directory`` exists, is not empty, and ``overwrite`` is false."""
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target}: exists and is not a directory", reason="not_a_directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"{target}: directory exists and is not empty", reason="not_empty")
    return target


def write_directory(directory: str | Path, files: dict[str, FileWriter], *, overwrite: bool = False) -> Path:
    """Write ``files`` into ``directory`` atomically.

    Args:
        directory: the target directory.
        files: file name → writer called with the path to write.
        overwrite: replace an existing non-empty directory.

    Returns:
        The target path.

    Raises:
        OutputExistsError: ``directory`` is a non-empty directory and ``overwrite`` is false.
    """
    target = check_writable(directory, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        mask = _umask()
        for name, write in files.items():
            write(staging / name)
            # Writers that go through a temporary file (safetensors) leave it 0600: give every file the
            # permissions the umask gives a new file, as the directory gets those of a new directory.
            os.chmod(staging / name, 0o666 & ~mask)
        os.chmod(staging, 0o777 & ~mask)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "previous")
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old / "previous", target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
