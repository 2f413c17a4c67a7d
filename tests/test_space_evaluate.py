"""The Space's Evaluate step (spaces/evaluation.py), called as a function against the local Hub server.

The base is the tiny character-level Llama of ``tests/eval_factory.py`` with its two trained adapters, put on
the local Hub; the base row's loss is checked against PEFT's forward written in the test (``reference_nll``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import TOKENS
from tests.eval_factory import domains, reference_nll
from tests.test_hub import seed_adapter, unique

SPACE = Path(__file__).resolve().parents[1] / "spaces"
sys.path.insert(0, str(SPACE))
import evaluation as space_evaluate  # noqa: E402
from messages import SpaceError  # noqa: E402

CLI_FLAG = "--"


@pytest.fixture(scope="module")
def eval_repos(hub_server, tmp_path_factory):
    """The tiny base and the math / words adapters on the local Hub, the adapters naming that base."""
    paths = domains()
    base_id = f"alice/{unique('eval-base')}"
    hub_server.create_repo(base_id, owner_token=TOKENS["alice"])
    files = {p.name: p.read_bytes() for p in Path(paths["base"]).iterdir() if p.is_file()}
    hub_server.commit_files(base_id, files)
    folder = tmp_path_factory.mktemp("space-eval")
    refs = {}
    for name in ("math", "words"):
        copy = folder / name
        shutil.copytree(paths[name], copy)
        config = json.loads((copy / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_id
        (copy / "adapter_config.json").write_text(json.dumps(config))
        refs[name] = f"alice/{name}"
        seed_adapter(hub_server, refs[name], copy)
    data = folder / "data"
    data.mkdir()
    shutil.copy(paths["math_qa"], data / "math.jsonl")
    shutil.copy(paths["words_text"], data / "words.jsonl")
    return {"paths": paths, "base": base_id, "refs": refs, "data": data}


def _run(eval_repos, **options):
    refs = eval_repos["refs"]
    options.setdefault("files", [str(eval_repos["data"] / "math.jsonl"), str(eval_repos["data"] / "words.jsonl")])
    return space_evaluate.evaluate([refs["math"], refs["words"]], [1.0, 1.0], "sum", token=False, **options)


def test_evaluate_shows_the_measured_table(hub, eval_repos):
    shown = _run(eval_repos, samples=4)
    table = shown.table.set_index("domain")
    assert list(table.index) == ["math", "words"]
    assert {"base", "math alone", "words alone", "merged", "retention"} <= set(table.columns)
    paths = eval_repos["paths"]
    texts = [json.loads(line)["text"] for line in paths["words_text"].read_text().splitlines()[:4]]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths["base"])
    examples = [(tokenizer(t)["input_ids"][:256], 1) for t in texts]
    assert table.loc["words", "base"] == pytest.approx(reference_nll(paths["base"], None, examples), abs=1e-5)
    assert table.loc["words", "words alone"] < table.loc["words", "base"]  # the adapter learned its domain
    for name in ("math", "words"):
        row = table.loc[name]
        kept = (row["base"] - row["merged"]) / (row["base"] - row[f"{name} alone"])
        assert row["retention"] == pytest.approx(kept, abs=1e-6)
    assert eval_repos["base"] in shown.summary and "words.jsonl" in shown.summary and "| merged |" in shown.summary
    assert "/tmp" not in shown.summary and str(Path.home()) not in shown.summary  # no folder of the server


def test_a_base_over_the_size_limit_is_refused_before_any_scoring(hub, eval_repos, monkeypatch):
    import hubmerge

    def never(*args, **kwargs):
        raise AssertionError("scored a base over the limit")

    monkeypatch.setattr(hubmerge, "evaluate", never)
    limits = space_evaluate.EvalLimits(max_base_mb=0.001)
    with pytest.raises(SpaceError) as caught:
        _run(eval_repos, samples=2, eval_limits=limits)
    message = caught.value.message
    assert "MB of weights" in message and "at most 0 MB" in message and eval_repos["base"] in message
    assert CLI_FLAG not in message


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"samples": 33}, "at most 32"),
        ({"samples": 0}, "at least 1"),
        ({"files": []}, "Give evaluation data"),
        ({"files": [], "datasets": "math=/etc/passwd"}, "is not NAME=user/dataset"),
        ({"files": [], "datasets": "math=../x/y"}, "is not NAME=user/dataset"),
    ],
)
def test_requests_over_the_limits_or_without_data_get_one_line(eval_repos, options, words):
    with pytest.raises(SpaceError) as caught:
        _run(eval_repos, **options)
    assert words in caught.value.message and "\n" not in caught.value.message
    assert CLI_FLAG not in caught.value.message


def test_data_named_after_no_adapter_is_refused_in_the_spaces_words(hub, eval_repos, tmp_path):
    other = tmp_path / "chemistry.jsonl"
    other.write_text(json.dumps({"text": "H2O"}) + "\n")
    with pytest.raises(SpaceError) as caught:
        _run(eval_repos, files=[str(other)], samples=2)
    assert "chemistry" in caught.value.message and "math" in caught.value.message
    assert CLI_FLAG not in caught.value.message


def test_the_page_has_a_private_evaluate_step_with_its_limits(monkeypatch):
    from tests.test_space import load_app

    monkeypatch.setenv("HUBMERGE_SPACE_EVAL_MAX_SAMPLES", "5")
    app = load_app()
    demo = app.build_demo(sign_in=False)
    blocks = list(demo.blocks.values())
    import gradio as gr

    assert "Evaluate" in [b.value for b in blocks if isinstance(b, gr.Button)]
    (samples,) = [b for b in blocks if isinstance(b, gr.Number) and str(b.label).startswith("Examples per domain")]
    assert samples.maximum == 5
    markdown = " ".join(str(b.value) for b in blocks if isinstance(b, gr.Markdown))
    assert "at most 5 examples per domain" in markdown and "MB of weights" in markdown
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public" and fn.api_name[0] != "_"}
    assert public == {"analyse"}, "the Evaluate button is the page's, not a public endpoint"
