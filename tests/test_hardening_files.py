"""Hostile and broken adapters: each is refused with a message that names the source, and nothing is written.

Every case starts from a real PEFT adapter and breaks one thing, the way a stranger's upload (or a
disk) can. docs/hardening.md lists them; tests/test_hardening_doc.py keeps the two in step.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hubmerge
from hubmerge.cli import main
from hubmerge.config import MAX_CONFIG_BYTES
from hubmerge.errors import (
    AdapterFormatError,
    AdapterNotFoundError,
    IncompatibleAdaptersError,
    SourceError,
    UnsafeAdapterError,
)
from tests.factory import make_adapter

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    return make_adapter(root / "good", seed=1), make_adapter(root / "victim", seed=2)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- ways to break an adapter ------------------------------------------------------------------


def _raw_safetensors(directory: Path, header: bytes, data: bytes = b"", *, length: int | None = None) -> None:
    size = len(header) if length is None else length
    (directory / WEIGHTS).write_bytes(struct.pack("<Q", size) + header + data)


def _header(entries: dict) -> bytes:
    return json.dumps(entries).encode()


def _tensors(directory: Path, change: Callable[[dict], dict | None]) -> None:
    tensors = load_file(directory / WEIGHTS)
    tensors = change(tensors) or tensors
    save_file(tensors, directory / WEIGHTS)


def _config(directory: Path, **changes) -> None:
    config = json.loads((directory / CONFIG).read_text())
    for key, value in changes.items():
        if value is _DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / CONFIG).write_text(json.dumps(config))


_DELETE = object()


def _truncate(d: Path) -> None:
    data = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(data[: len(data) // 2])


def _drop_b(tensors: dict) -> None:
    del tensors[f"{Q0}.lora_B.weight"]


def _foreign_key(tensors: dict) -> None:
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(4, 4)
    tensors[f"{Q0}.lora_C.weight"] = torch.zeros(4, 4)


def _linear_and_embedding(tensors: dict) -> None:
    # The same module twice: once as a linear LoRA, once as an embedding LoRA.
    tensors[f"{Q0}.lora_embedding_A"] = tensors[f"{Q0}.lora_A.weight"].clone()
    tensors[f"{Q0}.lora_embedding_B"] = tensors[f"{Q0}.lora_B.weight"].clone()


def _duplicate_header_key(d: Path) -> None:
    # json.dumps cannot write a key twice; the header is spelled out by hand.
    key = f'"{Q0}.lora_A.weight"'
    entry = '{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}}'
    header = f"{{{key}:{entry.format(0, 4)},{key}:{entry.format(4, 8)}}}"
    _raw_safetensors(d, header.encode(), b"\0" * 8)


def _fifo(d: Path) -> None:
    (d / WEIGHTS).unlink()
    os.mkfifo(d / WEIGHTS)


def _symlink_to_fifo(d: Path) -> None:
    os.mkfifo(d / "pipe")
    (d / CONFIG).unlink()
    (d / CONFIG).symlink_to(d / "pipe")


def _pickle_only(d: Path) -> None:
    torch.save(load_file(d / WEIGHTS), d / "adapter_model.bin")
    (d / WEIGHTS).unlink()


def _huge_config(d: Path) -> None:
    with open(d / CONFIG, "r+b") as f:  # sparse: no disk is used for the hole
        f.truncate(MAX_CONFIG_BYTES + 1)


def _empty(d: Path) -> None:
    shutil.rmtree(d)
    d.mkdir()


@dataclass(frozen=True)
class Case:
    breaks: Callable[[Path], None]
    error: type[hubmerge.HubmergeError]
    needles: tuple[str, ...]


CASES: dict[str, Case] = {
    # the tensor file
    "truncated-safetensors": Case(_truncate, AdapterFormatError, ("not a readable safetensors file",)),
    "empty-safetensors": Case(
        lambda d: (d / WEIGHTS).write_bytes(b""), AdapterFormatError, ("not a readable safetensors file",)
    ),
    "header-size-absurd": Case(
        lambda d: _raw_safetensors(d, b"{}", length=2**62), AdapterFormatError, ("header too large",)
    ),
    "header-offsets-past-the-end": Case(
        lambda d: _raw_safetensors(
            d, _header({f"{Q0}.lora_A.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 2**40]}})
        ),
        AdapterFormatError,
        ("not a readable safetensors file",),
    ),
    "header-shape-absurd": Case(
        lambda d: _raw_safetensors(
            d,
            _header({f"{Q0}.lora_A.weight": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 128]}}),
            b"\0" * 128,
        ),
        AdapterFormatError,
        ("not a readable safetensors file",),
    ),
    "header-not-json": Case(
        lambda d: _raw_safetensors(d, b"\x00\xff not json at all"), AdapterFormatError, ("not a readable",)
    ),
    "header-duplicate-key": Case(_duplicate_header_key, AdapterFormatError, ("not a readable safetensors file",)),
    "integer-tensors": Case(
        lambda d: _tensors(d, lambda t: {k: (v * 100).to(torch.int32) for k, v in t.items()}),
        IncompatibleAdaptersError,
        ("torch.int32", "LoRA factors are floats"),
    ),
    "boolean-tensors": Case(
        lambda d: _tensors(d, lambda t: {k: v > 0 for k, v in t.items()}),
        IncompatibleAdaptersError,
        ("torch.bool", "LoRA factors are floats"),
    ),
    "float8-tensors": Case(
        lambda d: _tensors(d, lambda t: {k: v.to(torch.float8_e4m3fn) for k, v in t.items()}),
        AdapterFormatError,
        ("F8_E4M3", "convert the adapter"),
    ),
    "nan-in-a-factor": Case(
        lambda d: _tensors(d, lambda t: t[f"{Q0}.lora_A.weight"].__setitem__((0, 0), float("nan"))),
        IncompatibleAdaptersError,
        ("NaN/Inf", "lora_A"),
    ),
    "three-dimensional-factor": Case(
        lambda d: _tensors(d, lambda t: t.update({f"{Q0}.lora_A.weight": t[f"{Q0}.lora_A.weight"][None]})),
        IncompatibleAdaptersError,
        ("LoRA factors are 2-D",),
    ),
    "shape-contradicts-config": Case(
        lambda d: _config(d, r=8), IncompatibleAdaptersError, ("has rank 4 but adapter_config.json", "rank 8")
    ),
    "b-contradicts-a": Case(
        lambda d: _tensors(d, lambda t: t.update({f"{Q0}.lora_B.weight": torch.zeros(32, 3)})),
        IncompatibleAdaptersError,
        ("B's second dimension must equal A's first",),
    ),
    "a-without-b": Case(lambda d: _tensors(d, _drop_b), IncompatibleAdaptersError, ("has lora_A but no lora_B",)),
    "keys-matching-no-peft-name": Case(
        lambda d: _tensors(d, _foreign_key), IncompatibleAdaptersError, ("does not follow PEFT's naming", "lora_C")
    ),
    "module-twice-linear-and-embedding": Case(
        lambda d: _tensors(d, _linear_and_embedding), IncompatibleAdaptersError, ("mixes linear and embedding",)
    ),
    "no-tensors": Case(lambda d: save_file({}, d / WEIGHTS), IncompatibleAdaptersError, ("holds no LoRA factors",)),
    "weights-is-a-fifo": Case(_fifo, AdapterFormatError, ("not a regular file",)),
    "pickle-only": Case(_pickle_only, UnsafeAdapterError, ("pickle", "--allow-pickle")),
    # the config
    "config-not-json": Case(lambda d: (d / CONFIG).write_text("{not json"), AdapterFormatError, ("not valid JSON",)),
    "config-binary": Case(
        lambda d: (d / CONFIG).write_bytes(b"\xff\xfe\x00\x01"), AdapterFormatError, ("not valid JSON",)
    ),
    "config-not-an-object": Case(lambda d: (d / CONFIG).write_text("[1, 2]"), AdapterFormatError, ("JSON object",)),
    "config-nested-too-deep": Case(
        lambda d: (d / CONFIG).write_text("[" * 100_000 + "]" * 100_000), AdapterFormatError, ("nested too deeply",)
    ),
    "config-number-too-long": Case(
        lambda d: (d / CONFIG).write_text('{"r": 1' + "0" * 5000 + "}"), AdapterFormatError, ("too long to read",)
    ),
    "config-huge": Case(_huge_config, AdapterFormatError, ("not an adapter config",)),
    "config-symlink-to-fifo": Case(_symlink_to_fifo, AdapterFormatError, ("not a regular file",)),
    "rank-a-word": Case(lambda d: _config(d, r="four"), AdapterFormatError, ("'r' = 'four'", "an integer")),
    "rank-negative": Case(lambda d: _config(d, r=-4), AdapterFormatError, ("'r' = -4",)),
    "rank-huge": Case(lambda d: _config(d, r=10**9), AdapterFormatError, ("'r' = 1000000000",)),
    "rank-missing": Case(lambda d: _config(d, r=_DELETE), AdapterFormatError, ("has no 'r'",)),
    "alpha-not-finite": Case(lambda d: _config(d, lora_alpha=float("nan")), AdapterFormatError, ("'lora_alpha'",)),
    "alpha-a-string": Case(lambda d: _config(d, lora_alpha="16"), AdapterFormatError, ("'lora_alpha'",)),
    "flag-not-boolean": Case(lambda d: _config(d, use_rslora="yes"), AdapterFormatError, ("'use_rslora'",)),
    "rank-pattern-exponential-regex": Case(
        lambda d: _config(d, rank_pattern={"(a|a)*b": 2}), AdapterFormatError, ("exponential time",)
    ),
    "rank-pattern-invalid-regex": Case(
        lambda d: _config(d, alpha_pattern={"(": 2}), AdapterFormatError, ("a valid regular expression",)
    ),
    # the directory
    "empty-directory": Case(_empty, AdapterNotFoundError, ("no adapter_config.json",)),
    "no-weights": Case(lambda d: (d / WEIGHTS).unlink(), AdapterNotFoundError, ("no adapter_model.safetensors",)),
}


@pytest.mark.parametrize("case", [pytest.param(name, id=name) for name in CASES])
def test_hostile_adapter_is_refused(capsys, tmp_path, templates, case):
    good, template = templates
    bad = tmp_path / "bad"
    shutil.copytree(template, bad)
    CASES[case].breaks(bad)
    out_dir = tmp_path / "out"

    code, out, err = cli(capsys, good, bad, "-o", out_dir)
    assert code == 1, (out, err)
    assert err.startswith("hubmerge: error:") and "Traceback" not in err
    lines = err.strip().splitlines()
    # One line, or (incompatible adapters) a head line and one line per problem, each naming the source.
    assert len(lines) == 1 or all(str(bad) in line for line in lines[1:]), err
    assert str(bad) in err, "the message names the source"
    for needle in CASES[case].needles:
        assert needle in err, (needle, err)
    if "holds no LoRA factors" not in CASES[case].needles:
        assert "holds no LoRA factors" not in err, "no misleading extra problem"
    assert not out_dir.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    with pytest.raises(CASES[case].error):
        hubmerge.merge([good, bad])


def test_pickle_with_non_string_keys_is_refused(tmp_path, templates):
    bad = tmp_path / "bad"
    shutil.copytree(templates[1], bad)
    torch.save({1: torch.zeros(2, 2)}, bad / "adapter_model.bin")
    (bad / WEIGHTS).unlink()
    with pytest.raises(AdapterFormatError, match="flat dict of name → tensor") as info:
        hubmerge.merge([templates[0], bad], allow_pickle=True)
    assert str(bad) in str(info.value)


def test_symlinked_files_are_followed_like_the_hf_cache(tmp_path, templates):
    # The HF cache stores every file as a symlink to a blob: regular files behind symlinks must load.
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in (CONFIG, WEIGHTS):
        (linked / name).symlink_to(templates[1] / name)
    result = hubmerge.merge([templates[0], linked], report_only=True)
    assert [s["name"] for s in result.to_dict()["sources"]] == ["good", "linked"]


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param("alice/repo/../other", id="dotdot-segment"),
        pytest.param("alice/repo/sub/..", id="dotdot-last"),
        pytest.param("alice/repo/./sub", id="dot-segment"),
        pytest.param("alice/repo//sub", id="empty-segment"),
        pytest.param("alice/repo/.hidden", id="hidden-segment"),
        pytest.param("alice/repo/sub%2F..%2Fx", id="encoded-slash"),
        pytest.param("alice/../repo", id="dotdot-repo-id"),
    ],
)
def test_path_escapes_in_hub_references_are_refused(capsys, reference):
    with pytest.raises(SourceError) as info:
        hubmerge.parse_source(reference)
    assert repr(reference) in str(info.value)
    code, _, err = cli(capsys, reference, "--report-only")
    assert code == 1 and err.count("\n") == 1 and repr(reference) in err
