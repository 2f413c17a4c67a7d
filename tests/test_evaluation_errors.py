"""Evaluation's bad input: one clear line, exit 1, nothing written; and its dependencies stay optional."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hubmerge
from hubmerge.cli import main
from tests.conftest import TOKENS
from tests.eval_factory import domains, make_base

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paths():
    return domains()


def _cli(paths, tmp_path, capsys, *extra, data=None):
    out = tmp_path / "out"
    data = data if data is not None else [f"math={paths['math_qa']}"]
    args = [str(paths["math"]), str(paths["words"]), "-o", str(out), "--eval-samples", "2"]
    for item in data:
        args += ["--eval-data", item]
    code = main([*args, *extra])
    err = capsys.readouterr().err.strip()
    return code, err, out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ('{"title": "no text here"}\n', "has no usable text field (found keys: title)"),
        ('{"text": "x", "split": "train"}\n', "no record of"),
        ("not json\n", "is not JSON"),
    ],
)
def test_bad_data_files(paths, tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    code, err, out = _cli(paths, tmp_path, capsys, data=[f"math={bad}"])
    assert code == 1 and expected in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_unknown_name_and_missing_file(paths, tmp_path, capsys):
    code, err, out = _cli(paths, tmp_path, capsys, data=[f"physics={paths['math_qa']}"])
    assert code == 1 and "physics matches no source" in err and "(math, words)" in err, err
    assert not out.exists()
    code, err, _ = _cli(paths, tmp_path, capsys, data=[f"math={tmp_path / 'nope.jsonl'}"])
    assert code == 1 and "nope.jsonl is not a readable .jsonl or .txt file" in err, err


def test_hub_dataset_without_datasets_names_the_extra(paths, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    code, err, out = _cli(paths, tmp_path, capsys, data=["math=someone/some-dataset"])
    assert code == 1 and "pip install 'hubmerge[eval]'" in err, err
    assert not out.exists()


def test_base_model_missing_offline_and_gated(paths, tmp_path, capsys, hub_server, monkeypatch):
    code, err, out = _cli(paths, tmp_path, capsys, "--base-model", "test-org/no-such-base")
    assert code == 1 and "not in the local cache" in err and "local model directory" in err, err
    assert not out.exists()
    gated = "bob/gated-base"
    if gated not in hub_server.list_repos():
        hub_server.create_repo(gated, owner_token=TOKENS["bob"], gated=True)
        files = {p.name: p.read_bytes() for p in paths["base"].iterdir() if p.is_file()}
        hub_server.commit_files(gated, files)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", TOKENS["alice"])
    code, err, out = _cli(paths, tmp_path, capsys, "--base-model", gated)
    assert code == 1 and "is gated" in err, err
    code, err, out = _cli(paths, tmp_path, capsys, "--base-model", "test-org/no-such-base")
    assert code == 1 and "not found" in err, err
    assert not out.exists()


def test_base_model_pulled_from_the_hub_records_its_commit(paths, hub, tmp_path):
    repo_id = "alice/eval-base"
    if repo_id not in hub.list_repos():
        hub.create_repo(repo_id, owner_token=TOKENS["alice"])
    files = {p.name: p.read_bytes() for p in paths["base"].iterdir() if p.is_file()}
    sha = hub.commit_files(repo_id, files)
    result = hubmerge.merge([paths["math"], paths["words"]])
    section = hubmerge.evaluate(
        result,
        sources=[paths["math"], paths["words"]],
        eval_data={"math": paths["math_qa"]},
        base_model=repo_id,
        samples=2,
    ).report.evaluation
    assert section["base_model"]["id"] == repo_id and section["base_model"]["revision"] == sha
    local = hubmerge.evaluate(
        result, sources=[paths["math"], paths["words"]], eval_data={"math": paths["math_qa"]}, samples=2
    ).report.evaluation
    assert section["domains"]["math"]["loss"] == local["domains"]["math"]["loss"]  # the same weights


def test_base_that_does_not_fit_is_refused_before_any_forward_pass(paths, tmp_path, capsys, monkeypatch):
    other = make_base(tmp_path / "wider", hidden=48)
    from transformers import LlamaForCausalLM

    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(LlamaForCausalLM, "forward", forbidden)
    code, err, out = _cli(paths, tmp_path, capsys, "--base-model", str(other))
    assert code == 1 and "does not fit the adapters" in err, err
    assert "down_proj is 64→48 in the base model but 64→32 in the adapter" in err, err
    assert not out.exists()


def test_out_of_memory_names_the_setting_to_lower(paths, tmp_path, capsys, monkeypatch):
    from peft import PeftModelForCausalLM

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(PeftModelForCausalLM, "forward", exhausted)
    code, err, out = _cli(paths, tmp_path, capsys)
    assert code == 1 and "out of memory" in err and "lower batch_size" in err and "--eval-batch-size" in err, err
    assert not out.exists()
    with pytest.raises(hubmerge.EvaluationMemoryError) as caught:
        hubmerge.merge([paths["math"], paths["words"]], eval_data={"math": paths["math_qa"]}, eval_batch_size=1)
    assert caught.value.setting == "max_length"


def test_tune_weights_needs_eval_data(paths, tmp_path, capsys):
    code, err, _ = _cli(paths, tmp_path, capsys, "--tune-weights", data=[])
    assert code == 2 and "--tune-weights tunes on the evaluation data" in err


PROBE = """
import sys
{block}
from hubmerge.cli import main
code = main({argv!r})
print("LOADED" if {{"transformers", "peft"}} & set(sys.modules) else "NOT-LOADED", code)
"""


def _probe(argv, block="", cwd=None):
    code = PROBE.format(argv=argv, block=block)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_help_and_a_plain_merge_do_not_import_transformers_or_peft(tmp_path):
    adapters = [str(REPO / "examples" / "adapters" / name) for name in ("math", "medicine")]
    for argv in (["--help"], [*adapters, "-o", str(tmp_path / "out")]):
        out = _probe(argv)
        assert out.stdout.split()[-2:] == ["NOT-LOADED", "0"], out.stderr


def test_without_the_eval_extra_one_line_says_how_to_install_it(tmp_path):
    adapters = [str(REPO / "examples" / "adapters" / name) for name in ("math", "medicine")]
    data = tmp_path / "m.jsonl"
    data.write_text(json.dumps({"text": "1+1=2"}) + "\n")
    block = "sys.modules['peft'] = None"  # as if peft were not installed
    out = _probe([*adapters, "-o", str(tmp_path / "out"), "--eval-data", f"math={data}"], block=block)
    assert out.stdout.split()[-1] == "1"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'hubmerge[eval]'" in lines[0], out.stderr
    assert not (tmp_path / "out").exists()
