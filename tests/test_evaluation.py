"""Evaluation: the losses hubmerge reports equal PEFT's forward with cross-entropy written here.

Adapters are trained in the test process on two synthetic domains (sums and
sentences; ``tests/eval_factory.py``), so each lowers the loss on its own
domain and retention measures something.
"""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoTokenizer

import hubmerge
from hubmerge.card import build_card
from hubmerge.cli import main
from tests.eval_factory import domains, reference_nll

TOL = 1e-5


@pytest.fixture(scope="module")
def paths():
    return domains()


@pytest.fixture(scope="module")
def tokenizer(paths):
    return AutoTokenizer.from_pretrained(paths["base"])


def _rows(path, split=None):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]


def _text_examples(tokenizer, texts, max_length):
    return [(tokenizer(t)["input_ids"][:max_length], 1) for t in texts]


def _pair_examples(tokenizer, pairs, max_length):
    examples = []
    for prompt, completion in pairs:
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        p = p[max(0, len(p) - (max_length - len(c))) :]  # the start of the prompt goes, never the completion
        examples.append((p + c, len(p)))
    return examples


@pytest.fixture(scope="module")
def measured(paths, tmp_path_factory):
    result = hubmerge.merge([paths["math"], paths["words"]])
    result = hubmerge.evaluate(
        result,
        sources=[paths["math"], paths["words"]],
        eval_data={"math": paths["math_qa"], "words": paths["words_text"]},
        samples=8,
        max_length=24,
        batch_size=3,
    )
    merged_dir = result.save_pretrained(tmp_path_factory.mktemp("merged") / "out")
    return result, result.report.evaluation, merged_dir


def test_text_and_question_answer_losses_equal_an_independent_computation(paths, tokenizer, measured):
    result, section, merged_dir = measured
    texts = [r["text"] for r in _rows(paths["words_text"])[:8]]
    qa = [(f"Question: {r['question']}\nAnswer:", " " + r["answer"]) for r in _rows(paths["math_qa"], "test")[:8]]
    expected = {
        "words": _text_examples(tokenizer, texts, 24),
        "math": _pair_examples(tokenizer, qa, 24),
    }
    rows = {"base": None, "merged": merged_dir, "math": paths["math"], "words": paths["words"]}
    for domain, examples in expected.items():
        got = section["domains"][domain]
        assert got["examples"] == 8
        assert got["tokens"] == sum(len(ids) - start for ids, start in examples)
        for row, adapter in rows.items():
            reference = reference_nll(paths["base"], adapter, examples)
            value = got["loss"][row] if row in ("base", "merged") else got["loss"]["sources"][row]
            assert abs(value - reference) < TOL, (domain, row, value, reference)
        assert got["perplexity"]["base"] == pytest.approx(math.exp(got["loss"]["base"]), rel=1e-5)
    assert any(len(ids) == 24 for ids, _ in expected["words"])  # the text cut really happened
    assert result.report.to_dict()["evaluation"] == section
    assert any(w.code == "merge_loses" for w in result.report.warnings) == any(
        d["retention"][domain] < 0.5 for domain, d in section["domains"].items()
    )


def test_each_adapter_learned_its_domain_and_retention_is_the_formula(measured):
    _, section, _ = measured
    for domain in ("math", "words"):
        d = section["domains"][domain]
        base, merged, own = d["loss"]["base"], d["loss"]["merged"], d["loss"]["sources"][domain]
        assert own < base - 0.3  # trained on it: a real gain
        assert d["retention"] == {domain: pytest.approx((base - merged) / (base - own), abs=1e-6)}
        best = min(d["loss"]["sources"].values())
        assert d["cost"]["loss_delta"] == pytest.approx(merged - best, abs=1e-6)
    other = section["domains"]["math"]["loss"]["sources"]["words"]
    assert other > section["domains"]["math"]["loss"]["sources"]["math"]  # distinct domains


def test_prompt_completion_loses_the_start_of_the_prompt_never_the_completion(paths, tokenizer):
    result = hubmerge.merge([paths["math"], paths["words"]])
    section = hubmerge.evaluate(
        result,
        sources=[paths["math"], paths["words"]],
        eval_data={"words": paths["words_pc"]},
        samples=4,
        max_length=64,
        batch_size=2,
    ).report.evaluation
    pairs = [(r["prompt"], r["completion"]) for r in _rows(paths["words_pc"])[:4]]
    examples = _pair_examples(tokenizer, pairs, 64)
    d = section["domains"]["words"]
    assert d["examples"] == 4 and d["truncated"] >= 1
    assert d["tokens"] == sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for _, c in pairs)
    assert abs(d["loss"]["sources"]["words"] - reference_nll(paths["base"], paths["words"], examples)) < TOL


def test_chat_messages_score_the_last_assistant_turn(paths, tokenizer, tmp_path):
    data = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": "add 12+30"}, {"role": "assistant", "content": "42"}]
    data.write_text(json.dumps({"messages": messages}) + "\n")
    result = hubmerge.merge([paths["math"], paths["words"]])
    section = hubmerge.evaluate(
        result, sources=[paths["math"], paths["words"]], eval_data={"math": data}, samples=1
    ).report.evaluation
    prompt = "user: add 12+30\nassistant:"  # the test's template, rendered by hand
    completion = " 42\n"
    examples = _pair_examples(tokenizer, [(prompt, completion)], 512)
    d = section["domains"]["math"]
    assert d["tokens"] == len(completion)
    assert abs(d["loss"]["base"] - reference_nll(paths["base"], None, examples)) < TOL


def test_txt_lines_and_the_split_field(paths):
    result = hubmerge.merge([paths["math"], paths["words"]])
    section = hubmerge.evaluate(
        result,
        sources=[paths["math"], paths["words"]],
        eval_data={"words": paths["words_txt"], "math": paths["math_qa"]},
        samples=32,
        split="train",
    ).report.evaluation
    assert section["domains"]["words"]["examples"] == 6  # one per line
    assert section["domains"]["words"]["data"]["split"] is None
    assert section["domains"]["math"]["examples"] == 8  # the 8 train rows, not the 16 test rows
    assert section["domains"]["math"]["data"]["split"] == "train"


def test_cli_reports_the_table_json_and_card(paths, tmp_path, capsys):
    args = [str(paths["math"]), str(paths["words"]), "-o", str(tmp_path / "out"), "--eval-samples", "4"]
    args += ["--eval-data", f"math={paths['math_qa']}", "--eval-data", f"words={paths['words_text']}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "evaluation — mean NLL per predicted token" in out and "retention" in out
    report = json.loads((tmp_path / "out" / "hubmerge_report.json").read_text())
    evaluation = report["evaluation"]
    assert set(evaluation["domains"]) == {"math", "words"}
    assert evaluation["base_model"]["id"] == str(paths["base"]) and evaluation["device"] == "cpu"
    assert evaluation["dtype"] == "float32"
    math_row = evaluation["domains"]["math"]
    assert set(math_row["loss"]) == {"base", "merged", "sources"} and set(math_row["loss"]["sources"]) == {
        "math",
        "words",
    }
    card = build_card(report, repo_id="me/m", command="hubmerge …")
    text = str(card)
    assert "## Evaluation" in text
    assert math_row["data"]["sha256"] in text and "on 4 examples" in text
    assert f"{math_row['loss']['merged']:.4f}" in text
    section = text.split("## Evaluation")[1].split("## Usage")[0]
    assert str(paths["base"]) not in section and str(paths["math_qa"]) not in section  # no local paths
    assert "a local model (local directory, weights sha256" in section


def test_report_only_measures_and_writes_nothing(paths, tmp_path, capsys):
    args = [str(paths["math"]), str(paths["words"]), "--report-only", "--json", "--eval-samples", "2"]
    assert main([*args, "--eval-data", f"words={paths['words_text']}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] is None and report["evaluation"]["domains"]["words"]["examples"] == 2
    assert list(tmp_path.iterdir()) == []  # the working directory (tmp_path) stays empty
