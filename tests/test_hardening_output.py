"""Local writes through the CLI: atomic, never over a non-empty directory without --overwrite, and a crash
in the middle of writing (disk full, Ctrl-C) leaves the directory as it was, with no leftovers."""

from __future__ import annotations

import errno

import pytest

import hubmerge.result
from hubmerge.cli import main
from tests.factory import make_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return make_adapter(root / "a", seed=1), make_adapter(root / "b", seed=2)


def snapshot(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def old_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"an earlier merge")
    (out / "notes.txt").write_text("mine")
    return out


def test_non_empty_output_is_refused_without_overwrite(capsys, tmp_path, adapters):
    out = old_output(tmp_path)
    before = snapshot(out)
    code = main([*map(str, adapters), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err == f"hubmerge: error: {out}: directory exists and is not empty; " + (
        "choose another output (-o) or pass --overwrite\n"
    )
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    code = main([*map(str, adapters), "-o", str(out), "--overwrite"])
    assert code == 0 and "notes.txt" not in snapshot(out), "--overwrite replaces the directory whole"


def test_output_that_is_a_file_is_refused(capsys, tmp_path, adapters):
    (tmp_path / "out").write_text("a file")
    assert main([*map(str, adapters), "-o", str(tmp_path / "out"), "--overwrite"]) == 1
    assert "exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "a file"


def disk_full(tensors, path, metadata=None):
    with open(path, "wb") as f:
        f.write(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device", path)


def interrupted(tensors, path, metadata=None):
    with open(path, "wb") as f:
        f.write(b"half a file")
    raise KeyboardInterrupt


@pytest.mark.parametrize("existing", [True, False], ids=["over-an-old-output", "new-output"])
@pytest.mark.parametrize(
    "crash, code, message",
    [
        pytest.param(disk_full, 1, "hubmerge: error: No space left on device (", id="write-disk-full"),
        pytest.param(interrupted, 130, "hubmerge: interrupted; nothing was left half-written", id="write-interrupted"),
    ],
)
def test_crash_mid_write_leaves_the_old_state(capsys, tmp_path, adapters, monkeypatch, crash, code, message, existing):
    out = old_output(tmp_path) if existing else tmp_path / "out"
    before = snapshot(out) if existing else None
    monkeypatch.setattr(hubmerge.result, "save_file", crash)
    assert main([*map(str, adapters), "-o", str(out), "--overwrite"]) == code
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err
    if existing:
        assert snapshot(out) == before
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else []), "no staging leftovers"
