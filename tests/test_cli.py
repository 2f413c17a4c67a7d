"""The command line: exit codes, output modes, and what gets written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import hubmerge
from hubmerge.cli import main
from tests.factory import make_adapter

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pair(tmp_path):
    return make_adapter(tmp_path / "math", seed=1), make_adapter(tmp_path / "med", seed=2, r=2)


def test_merge_writes_a_peft_directory_and_prints_the_table(capsys, tmp_path, pair):
    code, out, err = cli(capsys, *pair, "-o", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "hubmerge_recipe.json", "hubmerge_report.json",
        "similarity.png",
    ]  # fmt: skip
    assert "RMS cosine" in out and "math + med" in out and "saved to" in out
    report = json.loads((tmp_path / "out" / "hubmerge_report.json").read_text())
    assert [s["name"] for s in report["sources"]] == ["math", "med"]


def test_default_output_name(capsys, tmp_path, pair):
    code, _, err = cli(capsys, *pair)
    assert code == 0, err
    assert (tmp_path / "merged-math-med" / "adapter_model.safetensors").is_file()


def test_json_mode_prints_only_json(capsys, tmp_path, pair):
    code, out, _ = cli(capsys, *pair, "--report-only", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["output"] is None and report["method"] == "sum"
    assert set(report["similarity"]) >= {
        "rms_cosine",
        "mean_cosine",
        "norm_weighted_cosine",
        "interference_ratio",
    }
    assert report["modules"]["coverage"]["model.layers.0.self_attn.q_proj"] == ["math", "med"]
    assert not any(tmp_path.glob("merged-*")), "--report-only writes nothing"


@pytest.mark.parametrize("flag", ["--weights=-1,0.5", "--weights -1,0.5", "--weights 2,-0.5"])
def test_weights_including_negative(capsys, tmp_path, pair, flag):
    code, out, err = cli(capsys, *pair, *flag.split(" "), "--report-only", "--json")
    assert code == 0, err
    expected = [float(w) for w in flag.replace("=", " ").split(" ")[1].split(",")]
    assert [s["weight"] for s in json.loads(out)["sources"]] == expected


def test_weights_are_applied(capsys, tmp_path, pair):
    cli(capsys, *pair, "--weights", "2,0.5", "-o", tmp_path / "out")
    expected = hubmerge.merge(list(pair), weights=[2, 0.5]).tensors
    written = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert all((written[k] == expected[k]).all() for k in expected)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--weights", "1"], "got 1 weight(s) for 2 adapter(s)"),
        (["--dtype", "int8"], "invalid choice"),
        (["--weights", "a,b"], "comma-separated"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_values_and_usage(capsys, tmp_path, pair, args, needle):
    code, _, err = cli(capsys, *pair, *args, "--report-only")
    assert needle in err
    assert code == (1 if "weight(s)" in needle else 2)


def test_allow_base_mismatch_is_offered_only_where_it_would_let_the_merge_through(capsys, tmp_path, pair):
    make_adapter(tmp_path / "renamed", seed=3)
    config = json.loads((tmp_path / "renamed" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/another-name"
    (tmp_path / "renamed" / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, pair[0], tmp_path / "renamed", "--report-only")
    assert code == 1 and "pass --allow-base-mismatch if they really are the same weights" in err
    assert cli(capsys, pair[0], tmp_path / "renamed", "--report-only", "--allow-base-mismatch")[0] == 0
    # Another base, of other shapes: the flag would lift the base check and leave the shapes, so it is not the step.
    smollm = ROOT / "examples" / "adapters" / "math"
    code, _, err = cli(capsys, pair[0], smollm, "--report-only")
    assert code == 1 and "different model shapes" in err
    assert "pass --allow-base-mismatch" not in err and "the same base model" in err.splitlines()[-1]
    code, _, err = cli(capsys, pair[0], smollm, "--report-only", "--allow-base-mismatch")
    assert code == 1 and "different model shapes" in err


def test_existing_output_is_left_alone_without_overwrite(capsys, tmp_path, pair):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, *pair, "-o", out)
    assert code == 1 and "--overwrite" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code, _, err = cli(capsys, *pair, "-o", out, "--overwrite")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_missing_source_and_hub_reference(capsys, tmp_path, pair):
    code, _, err = cli(capsys, pair[0], "./does-not-exist", "--report-only")
    assert code == 1 and "does-not-exist" in err and "no such directory" in err
    code, _, err = cli(capsys, pair[0], "not a ref", "--report-only")
    assert code == 1 and "'not a ref'" in err


def test_a_full_model_folder_is_said_to_be_one(capsys, tmp_path, pair):
    from tests.factory import tiny_llama

    tiny_llama().save_pretrained(tmp_path / "model")  # config.json and model.safetensors, no adapter_config.json
    code, _, err = cli(capsys, pair[0], tmp_path / "model", "--report-only")
    assert code == 1
    assert err.strip() == (
        f"hubmerge: error: {tmp_path / 'model'}: looks like a full model, not a PEFT adapter: it holds config.json "
        "and model weights (model.safetensors) but no adapter_config.json; give a PEFT LoRA adapter instead, such "
        "as one trained on this model"
    )
    (tmp_path / "other").mkdir()  # a folder of something else: only that the config is missing
    code, _, err = cli(capsys, pair[0], tmp_path / "other", "--report-only")
    assert code == 1 and "no adapter_config.json" in err and "full model" not in err


def test_traceback_only_with_debug(capsys, tmp_path, pair, monkeypatch):
    _, _, err = cli(capsys, pair[0], "./missing", "--report-only")
    assert "Traceback" not in err
    monkeypatch.setenv("HUBMERGE_DEBUG", "1")
    _, _, err = cli(capsys, pair[0], "./missing", "--report-only")
    assert "Traceback" in err and "AdapterNotFoundError" in err


def test_python_dash_m_and_console_script(tmp_path, pair):
    for command in ([sys.executable, "-m", "hubmerge"], [str(Path(sys.executable).with_name("hubmerge"))]):
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and done.stdout.strip() == f"hubmerge {hubmerge.__version__}"
    done = subprocess.run([sys.executable, "-m", "hubmerge"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "SOURCE" in done.stderr


def test_hf_extension_script():
    # `hf extensions install OWNER/hf-merge` runs this console script as `hf merge`.
    script = Path(sys.executable).with_name("hf-merge")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: hf merge")
    assert "--push" in done.stdout


def test_the_run_freezes_torchs_objects_for_the_collector_and_gives_them_back(capsys, tmp_path, pair, monkeypatch):
    """A merge freezes the objects torch's import left (full collections skip them) and unfreezes them on return;
    a process that froze objects of its own keeps its freeze."""
    import gc

    counts = []
    run = hubmerge.cli._run

    def counting(*args):
        code = run(*args)
        counts.append(gc.get_freeze_count())  # while the run's objects are still frozen
        return code

    monkeypatch.setattr(hubmerge.cli, "_run", counting)
    assert gc.get_freeze_count() == 0
    code, _, err = cli(capsys, *pair, "-o", tmp_path / "out", "--no-figure")
    assert code == 0, err
    assert counts[0] > 0  # frozen while the merge ran
    assert gc.get_freeze_count() == 0  # and given back: called in a long-lived process, nothing stays frozen
    gc.freeze()  # a host's own freeze
    try:
        host = gc.get_freeze_count()
        code, _, err = cli(capsys, *pair, "-o", tmp_path / "again", "--no-figure")
        assert code == 0, err
        # nothing added to it (frozen objects freed by reference counting leave it) and nothing unfrozen
        assert 0.99 * host < counts[1] <= host and 0.99 * host < gc.get_freeze_count() <= host
    finally:
        gc.unfreeze()


# A process that runs `hubmerge.cli.run` as the command does, with a finalizer that reports Python's teardown
# and an atexit callback that reports the exit callbacks. argv[1]: "-", or a file that a non-daemon thread
# started first writes half a second later.
RUN_AS_COMMAND = """
import atexit, sys, threading, time
from pathlib import Path

class Teardown:
    def __del__(self):
        sys.stderr.write("torn down\\n")

probe = Teardown()
atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
if sys.argv[1] != "-":
    marker = Path(sys.argv[1])
    threading.Thread(target=lambda: (time.sleep(0.5), marker.write_text("done"))).start()
from hubmerge.cli import run
sys.argv = ["hubmerge", *sys.argv[2:]]
run()
"""


def test_the_command_ends_without_pythons_teardown_after_everything_seen_outside(tmp_path, pair):
    """The command's process skips the interpreter's teardown (a finalizer of a module global does not run) but
    not the atexit callbacks, its output or its exit code; a non-daemon thread still running gets Python's own
    exit, which waits for it."""

    def command(*args):
        argv = [sys.executable, "-c", RUN_AS_COMMAND, *map(str, args)]
        return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)

    done = command("-", *pair, "-o", tmp_path / "out", "--no-figure")
    assert done.returncode == 0, done.stderr
    assert "atexit ran" in done.stderr and "torn down" not in done.stderr
    assert done.stdout.rstrip().endswith(f"PeftModel.from_pretrained(base_model, '{tmp_path / 'out'}')")
    assert (tmp_path / "out" / "adapter_model.safetensors").stat().st_size > 0
    done = command("-", pair[0], tmp_path / "missing", "--report-only")
    assert done.returncode == 1 and "atexit ran" in done.stderr and "torn down" not in done.stderr
    done = command(tmp_path / "marker", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"hubmerge {hubmerge.__version__}"
    assert (tmp_path / "marker").read_text() == "done" and "torn down" in done.stderr


def test_help_says_where_a_default_push_goes_and_every_exit_code():
    text = hubmerge.cli.build_parser().format_help()
    assert "push to <you>/math-med-merged" in text, "the default repo is in the pusher's namespace, not user/"
    assert "130 interrupted" in text and "rank cap" in text
