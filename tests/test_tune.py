"""--tune-weights: the sources active together at their scalings are the merge, and tuning lowers held-out loss."""

from __future__ import annotations

import json

import pytest

import hubmerge
from hubmerge.cli import main
from hubmerge.evaluation.data import read_eval_data, tokenise
from hubmerge.evaluation.model import Evaluator, load_base_model
from hubmerge.evaluation.tune import tune_weights
from tests.eval_factory import domains


@pytest.fixture(scope="module")
def paths():
    return domains()


@pytest.mark.parametrize("method", ["sum", "mean"])
def test_all_sources_active_at_their_scalings_score_exactly_the_merged_adapter(paths, method):
    weights = [0.7, -0.4]
    adapters = hubmerge.load_adapters([paths["math"], paths["words"]])
    result = hubmerge.merge(adapters, weights=weights, method=method)
    evaluator = Evaluator(load_base_model(str(paths["base"]), device="cpu"), adapters, batch_size=4)
    try:
        examples = {}
        for name, key in (("math", "math_qa"), ("words", "words_text")):
            data = read_eval_data(name, paths[key])
            examples[name] = tokenise(data, evaluator.base.tokenizer, samples=6, max_length=40)["examples"]
        scale = hubmerge.get_method(method).weight_scale
        found = tune_weights(evaluator, examples, weights, weight_scale=scale, steps=0)
        evaluator.add_merge("merged", result)
        merged = []
        for items in examples.values():
            nll, tokens = evaluator.score("merged", items)
            merged.append(nll / tokens)
    finally:
        evaluator.close()
    assert found["start_objective"] == pytest.approx(sum(merged) / len(merged), abs=1e-5)
    assert found["weights"] == weights


def test_tuning_lowers_held_out_loss_from_a_bad_start(paths, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(paths["math"]), str(paths["words"]), "--weights=-0.5,0.1", "--tune-weights", "-o", str(out)]
    args += ["--eval-data", f"math={paths['math_qa']}", "--eval-data", f"words={paths['words_text']}"]
    args += ["--eval-samples", "8", "--eval-max-length", "40"]
    assert main(args) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "hubmerge_report.json").read_text())
    tuning = report["evaluation"]["tuning"]
    assert tuning["start_weights"] == [-0.5, 0.1]
    assert tuning["tuning_examples"] == {"math": 8, "words": 8}  # records 9-16, never the 8 reported
    assert tuning["tuning_objective"]["tuned"] < tuning["tuning_objective"]["start"]
    held = tuning["held_out_mean_loss"]
    assert held["tuned"] < held["start"] - 0.05 and tuning["tuned_beats_start"] is True
    # the merge written is the tuned one, and the recipe and the report say so
    recipe = json.loads((out / "hubmerge_recipe.json").read_text())
    assert [s["weight"] for s in recipe["sources"]] == pytest.approx(tuning["weights"], rel=1e-5)
    assert [s["weight"] for s in report["sources"]] == pytest.approx(tuning["weights"], rel=1e-5)
    for name in ("math", "words"):
        assert tuning["held_out"][name]["loss"]["tuned"] == report["evaluation"]["domains"][name]["loss"]["merged"]
    assert "tuned beats the start" in text
