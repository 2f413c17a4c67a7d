"""Local files' sha256: remembered while a file is unchanged, never stale."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from hubmerge import digests
from hubmerge.digests import file_sha256


@pytest.fixture
def hashed(monkeypatch):
    """Count the files actually read and hashed; let files written by the test settle at once."""
    calls = []
    real = digests._hash

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(digests, "_hash", counting)
    monkeypatch.setattr(digests, "SETTLE_S", -1.0)
    return calls


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_unchanged_file_is_hashed_once(tmp_path, hashed):
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(b"weights" * 1000)
    assert file_sha256(path) == file_sha256(path) == sha(b"weights" * 1000)
    assert len(hashed) == 1


def test_a_rewrite_with_the_same_size_and_restored_mtime_is_hashed_again(tmp_path, hashed):
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(b"a" * 64)
    first = file_sha256(path)
    stat = os.stat(path)
    path.write_bytes(b"b" * 64)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back: only ctime tells
    assert file_sha256(path) == sha(b"b" * 64) != first
    assert len(hashed) == 2


def test_a_file_replaced_by_another_is_hashed_again(tmp_path, hashed):
    path, other = tmp_path / "adapter_config.json", tmp_path / "other.json"
    path.write_text("{}")
    other.write_text("[]")
    file_sha256(path)
    os.replace(other, path)
    assert file_sha256(path) == sha(b"[]")


def test_a_freshly_written_file_is_not_remembered(tmp_path, monkeypatch):
    # File times tick coarsely: a digest taken within SETTLE_S of a write could outlive a second write in the
    # same tick, so it is not stored.
    calls = []
    real = digests._hash
    monkeypatch.setattr(digests, "_hash", lambda p: calls.append(p) or real(p))
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"x")
    file_sha256(path)
    file_sha256(path)
    assert len(calls) == 2
    assert not digests._cache_file().exists() or str(path.resolve()) not in digests._read()


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"%s": {"stat": "x", "sha256": 3}}'])
def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path, hashed, content):
    path = tmp_path / "w.bin"
    path.write_bytes(b"payload")
    cache = digests._cache_file()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(content.replace("%s", str(path.resolve()).replace("\\", "\\\\")))
    assert file_sha256(path) == sha(b"payload")
    assert json.loads(cache.read_text())[str(path.resolve())]["sha256"] == sha(b"payload")


def test_an_unwritable_cache_leaves_the_digest_right(tmp_path, hashed, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setattr(digests, "_cache_file", lambda: blocker / "hubmerge" / "sha256.json")
    path = tmp_path / "w.bin"
    path.write_bytes(b"payload")
    assert file_sha256(path) == file_sha256(path) == sha(b"payload")
    assert len(hashed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir", "w.bin"]  # no temporary left behind


def test_the_cache_keeps_a_bounded_number_of_entries(tmp_path, hashed, monkeypatch):
    monkeypatch.setattr(digests, "MAX_ENTRIES", 3)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(bytes([i]))
        file_sha256(paths[-1])
    assert list(json.loads(digests._cache_file().read_text())) == [str(p.resolve()) for p in paths[2:]]
