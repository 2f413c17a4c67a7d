"""Atomic directory writes: all of it appears, or nothing changes."""

from __future__ import annotations

import pytest

from hubmerge.errors import OutputExistsError
from hubmerge.output import write_directory


def test_writes_all_files(tmp_path):
    target = write_directory(
        tmp_path / "d", {"a.txt": lambda p: p.write_text("A"), "b.txt": lambda p: p.write_text("B")}
    )
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]


def test_crash_mid_write_leaves_old_state(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def boom(path):
        path.write_text("partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_directory(target, {"a.txt": lambda p: p.write_text("A"), "b.txt": boom}, overwrite=True)
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "staging directory removed"


def test_refuses_non_empty_without_overwrite_and_accepts_empty(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty"):
        write_directory(tmp_path / "full", {"a": lambda p: p.write_text("A")})
    (tmp_path / "empty").mkdir()
    write_directory(tmp_path / "empty", {"a": lambda p: p.write_text("A")})
    assert (tmp_path / "empty" / "a").read_text() == "A"
    (tmp_path / "file").write_text("f")
    with pytest.raises(OutputExistsError, match="not a directory"):
        write_directory(tmp_path / "file", {"a": lambda p: p.write_text("A")}, overwrite=True)
