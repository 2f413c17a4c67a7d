"""The Python API's contract: inputs unchanged, edge values answered, local output = what a push uploads."""

from __future__ import annotations

import ast
import copy
import inspect
import json
import os
import re
import stat
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import hubmerge
from hubmerge.cli import HINTS, build_parser
from hubmerge.provenance import HubOrigin, same_files
from tests.factory import make_adapter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pair(tmp_path):
    return make_adapter(tmp_path / "math", seed=1), make_adapter(tmp_path / "med", seed=2, r=2)


def test_merge_leaves_the_callers_adapters_unchanged(pair):
    a = hubmerge.load_adapter(pair[0])
    before = copy.copy(vars(a))
    result = hubmerge.merge([a, a], weights=[1.0, 2.0])
    assert a.name == "math" and vars(a).keys() == before.keys()
    assert all(vars(a)[k] is before[k] for k in before if k != "_local_origin")
    assert result.report.names == ("math", "math-2")
    codes = [w.code for w in result.report.warnings]
    assert "same_files" in codes and "shared_init" not in codes and "high_cosine" not in codes
    again = hubmerge.merge([a, a])
    assert again.report.names == ("math", "math-2")  # not math-2-2: nothing stuck to the object
    # the doubled adapter is the adapter at weight 3: one delta, exactly
    single = hubmerge.merge([a], weights=[3.0]).tensors
    key = next(k for k in single if k.endswith("lora_B.weight"))
    a_key = key.replace("lora_B", "lora_A")
    dense = lambda t: t[key].double() @ t[a_key].double()  # noqa: E731
    torch.testing.assert_close(dense(result.tensors), dense(single), rtol=1e-5, atol=1e-6)


def test_huge_weights_give_finite_cosines_or_a_clear_error(pair, tmp_path):
    # 1e30: the deltas fit float32, their Gram products do not; the analysis redoes them in float64.
    report = hubmerge.merge(list(pair), weights=[1e30, 1.0], report_only=True)
    assert report.similarity.rms_cosine[0][1] is not None
    assert report.similarity.interference_ratio is not None
    reference = hubmerge.merge(list(pair), report_only=True)
    assert report.similarity.rms_cosine[0][1] == pytest.approx(reference.similarity.rms_cosine[0][1], rel=1e-4)
    # 1e39 is beyond float32 itself: stored in float32 the factors overflow, which is said, not written.
    with pytest.raises(hubmerge.InvalidArgumentError, match="overflow float32") as info:
        hubmerge.merge(list(pair), weights=[1e39, 1.0], dtype="float32")
    assert info.value.reason == "dtype_overflow" and info.value.module
    # in float64 the same merge is representable, and exact
    result = hubmerge.merge(list(pair), weights=[1e39, 1.0], dtype="float64")
    assert result.report.similarity.rms_cosine[0][1] is not None
    assert all(torch.isfinite(t).all() for t in result.tensors.values())


def test_a_folder_given_twice_is_named_as_one_adapter_counted_twice(pair, tmp_path):
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for f in pair[0].iterdir():
        (copy_dir / f.name).write_bytes(f.read_bytes())
    notes = hubmerge.merge([pair[0], copy_dir, pair[1]], report_only=True).warnings
    same = [w.message for w in notes if w.code == "same_files"]
    assert same == ["math and copy are the same files: the merge counts that adapter twice, and their cosines are 1 "
                    "by construction, not a measurement of two adapters"]  # fmt: skip
    # Hub sources: the same repo, folder and commit (however the revision was asked for); unknown commits never match
    assert same_files(HubOrigin("u/m", None, None, "abc"), HubOrigin("u/m", None, "main", "abc"))
    assert not same_files(HubOrigin("u/m", "x", None, "abc"), HubOrigin("u/m", None, None, "abc"))
    assert not same_files(HubOrigin("u/m", None, None, None), HubOrigin("u/m", None, None, None))
    # a retrained copy (another seed) is two adapters
    other = make_adapter(tmp_path / "math-again", seed=5)
    assert "same_files" not in [w.code for w in hubmerge.merge([pair[0], other], report_only=True).warnings]


def test_tiny_weights_give_the_cosines_of_any_other_positive_weight(pair):
    # 1e-30: the deltas fit float32, their squared norms do not (below float32's smallest normal number); the
    # analysis redoes them in float64 rather than calling the delta zero and its cosines undefined.
    report = hubmerge.merge(list(pair), weights=[1e-30, 1.0], report_only=True)
    reference = hubmerge.merge(list(pair), report_only=True)
    assert "zero_delta" not in [w.code for w in report.warnings]
    assert report.similarity.rms_cosine[0][1] == pytest.approx(reference.similarity.rms_cosine[0][1], rel=1e-6)
    result = hubmerge.merge(list(pair), weights=[1e-30, 1.0], dtype="float32")
    assert all(module.norms[0] for module in result.report.similarity.per_module.values())
    # the merged deltas are exact at that scale too
    single = hubmerge.merge([pair[0]], weights=[1.0], dtype="float64").tensors
    key = next(k for k in single if k.endswith("lora_B.weight"))
    a_key = key.replace("lora_B", "lora_A")
    rank = hubmerge.load_adapter(pair[0]).config.r
    merged = result.tensors[key][:, :rank].double() @ result.tensors[a_key][:rank].double()
    expected = 1e-30 * (single[key].double() @ single[a_key].double())
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    # an adapter whose B really is zero is still a zero delta, at a tiny weight too
    untrained = make_adapter(pair[0].parent / "untrained", seed=3, init_lora_weights=True)
    report = hubmerge.merge([untrained, pair[1]], weights=[1e-30, 1.0], report_only=True)
    assert "zero_delta" in [w.code for w in report.warnings]


def test_huge_weight_in_the_cli_is_one_clear_line(capsys, pair, tmp_path):
    code = hubmerge.cli.main([*map(str, pair), "--weights=1e39,1", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "overflow float32" in err
    # The next step names a dtype that holds the values, not the one that just overflowed; following it works.
    assert "--dtype float32 or" not in err and "float64" in err
    assert not (tmp_path / "out").exists()
    code = hubmerge.cli.main([*map(str, pair), "--weights=1e39,1", "-o", str(tmp_path / "out"), "--dtype", "float64"])
    assert code == 0, capsys.readouterr().err


def test_zero_weight_says_so_instead_of_calling_the_adapter_untrained(pair):
    report = hubmerge.merge(list(pair), weights=[1.0, 0.0], report_only=True)
    codes = [w.code for w in report.warnings]
    assert "zero_weight" in codes and "zero_delta" not in codes
    assert report.similarity.rms_cosine[0][1] is None
    # an adapter whose B really is zero still gets the untrained warning
    untrained = make_adapter(pair[0].parent / "untrained", seed=3, init_lora_weights=True)
    assert "zero_delta" in [w.code for w in hubmerge.merge([pair[0], untrained], report_only=True).warnings]


def test_save_pretrained_writes_what_a_push_uploads_with_normal_modes(pair, tmp_path):
    result = hubmerge.merge(list(pair))
    old = os.umask(0o022)
    try:
        out = result.save_pretrained(tmp_path / "out")
    finally:
        os.umask(old)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(result.files())
    assert {"README.md", "similarity.png"} <= set(names)
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    # no absolute path of the machine in any text file: local sources appear by folder name
    for path in out.iterdir():
        if path.suffix in (".json", ".md"):
            text = path.read_text(encoding="utf-8")
            assert str(tmp_path) not in text and "/tmp/" not in text, path.name
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "similarity.png" in card and "`math`" in card
    assert (out / "README.md").read_bytes() == result.files()["README.md"]


def test_warnings_name_local_sources_by_their_names_never_their_paths(tmp_path):
    """The warnings go into the report and the card: a source given by its absolute path appears there by its
    display name (a modules_to_save copy, task types that differ, an unnamed base model)."""
    a = make_adapter(tmp_path / "math", seed=1)
    b = make_adapter(tmp_path / "med", seed=2, modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    config = json.loads((a / "adapter_config.json").read_text())
    (a / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    result = hubmerge.merge([str(a.resolve()), str(b.resolve())], allow_base_mismatch=True)
    codes = {w.code for w in result.report.warnings}
    assert {"modules_to_save", "task_type_mismatch", "unknown_base_model"} <= codes, codes
    assert any(w.message.startswith("med saves a full copy") for w in result.report.warnings)
    for name, data in result.files().items():
        if name.endswith((".json", ".md")):
            assert str(tmp_path) not in data.decode("utf-8"), name


def test_the_figure_can_be_skipped(pair, tmp_path):
    out = hubmerge.merge(list(pair)).save_pretrained(tmp_path / "out", figure=False)
    assert not (out / "similarity.png").exists()
    assert "similarity.png" not in (out / "README.md").read_text(encoding="utf-8")


def test_progress_over_modules_follows_hf_hub_disable_progress_bars(pair):
    # huggingface_hub reads HF_HUB_DISABLE_PROGRESS_BARS at import: each setting needs its own process.
    def stderr(setting: str) -> str:
        env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": setting}
        command = [sys.executable, "-m", "hubmerge", *map(str, pair), "--report-only"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert re.search(r"merging modules: 100%.*\b4/4\b", stderr("0"))
    assert "merging modules" not in stderr("1")


def test_every_cli_hint_names_only_flags_the_cli_has():
    flags = {option for action in build_parser()._actions for option in action.option_strings}
    for hint in HINTS.values():
        for flag in re.findall(r"(?<![\w-])--?[a-z][a-z-]*", hint):
            assert flag in flags, f"hint names {flag}, which hubmerge does not have: {hint}"


def test_library_messages_name_no_cli_flag():
    # The CLI's words (flags) belong to cli*.py; the library says what is wrong in API terms. Every string
    # in a raised error, a Notice or a Problem outside cli.py is checked.
    def called(node: ast.AST) -> str:
        func = node.func if isinstance(node, ast.Call) else None
        return getattr(func, "id", getattr(func, "attr", "")) if func is not None else ""

    checked = 0
    for path in sorted((ROOT / "hubmerge").rglob("*.py")):
        if path.name.startswith("cli"):  # cli.py, cli_parser.py, cli_hints.py: the CLI's own words
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        messages = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and re.search(r"(Error|Notice|Problem)$", called(node))
        ]
        for message in messages:
            for node in ast.walk(message):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    assert not re.search(r"(?<![\w-])--[a-z]", node.value), f"{path.name}: {node.value!r}"
                    checked += 1
    assert checked > 100  # the walk found the messages it checks


def test_hub_errors_keep_the_hub_s_cause(hub, tmp_path):
    with pytest.raises(hubmerge.RepoNotFoundError) as info:
        hubmerge.merge(["alice/no-such-repo-here"], report_only=True)
    err = info.value
    assert err.__cause__ is not None and err.repo_id == "alice/no-such-repo-here"
    assert err.source == "alice/no-such-repo-here" and err.reason == "repo_not_found"


def test_report_json_of_the_cli_is_the_report(capsys, pair):
    code = hubmerge.cli.main([*map(str, pair), "--report-only", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data == hubmerge.merge(list(pair), report_only=True).to_dict()


def test_the_same_merge_gives_the_same_bytes(pair):
    # A re-push of identical content must be recognised as unchanged: every file byte-identical, every time
    # (safetensors writes its metadata map in a random order, so two keys there would differ half the time).
    first = hubmerge.merge(list(pair)).files(figure=False)
    for _ in range(4):
        assert hubmerge.merge(list(pair)).files(figure=False) == first


def test_an_analysis_claims_exactness_only_where_it_is_certain(pair):
    # Without building the factors nobody knows whether svd's cut or a rank cap will drop anything.
    assert hubmerge.merge(list(pair), report_only=True).exact is True
    assert hubmerge.merge(list(pair), method="svd", rank=64, report_only=True).exact is False
    assert hubmerge.merge(list(pair), method="svd", rank=64).report.exact is True


@pytest.mark.skipif(not hasattr(typing, "get_overloads"), reason="typing.get_overloads is Python 3.11+")
def test_every_overload_of_merge_takes_every_keyword_merge_takes():
    # mypy checks a call against the overloads alone: a keyword they lack (eval_data, which the README shows) is a
    # type error in the caller's code, as is report_only held in a variable when only literals are overloaded.
    implementation = inspect.signature(hubmerge.merge)
    overloads = [inspect.signature(o) for o in typing.get_overloads(hubmerge.merge)]
    assert overloads and all(o.parameters.keys() == implementation.parameters.keys() for o in overloads)
    assert {o.parameters["report_only"].annotation for o in overloads} == {"Literal[False]", "Literal[True]", "bool"}
