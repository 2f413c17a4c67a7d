"""``--eval-data NAME=DATASET_ID``: a dataset repo served by the local Hub, read with the ``datasets`` package."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import HfApi

import hubmerge
from hubmerge.evaluation.data import read_eval_data
from tests.eval_factory import domains

pytest.importorskip("datasets")


def _upload(tmp_path, repo_id: str, files: dict[str, list[dict]]) -> str:
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset")
    for path, rows in files.items():
        local = tmp_path / path.replace("/", "_")
        local.write_text("".join(json.dumps(row) + "\n" for row in rows))
        api.upload_file(path_or_fileobj=str(local), path_in_repo=path, repo_id=repo_id, repo_type="dataset")
    return api.dataset_info(repo_id).sha


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_hub_dataset_split_is_read_pinned_to_its_commit(hub, tmp_path):
    rows = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(6)]
    sha = _upload(tmp_path, "alice/sums", {"data/test.jsonl": rows[:4], "data/train.jsonl": rows[4:]})
    data = read_eval_data("math", "alice/sums", split="test")
    assert (data.kind, data.revision, data.split, data.formats) == ("hub", sha, "test", ("question_answer",))
    assert [r.prompt for r in data.records] == [f"Question: {i}+1\nAnswer:" for i in range(4)]
    assert [r.completion for r in data.records] == [f" {i + 1}" for i in range(4)]
    assert len(read_eval_data("math", "alice/sums", split="train").records) == 2


def test_a_missing_hub_dataset_or_split_is_one_clear_error(hub, tmp_path):
    with pytest.raises(hubmerge.EvaluationDataError, match="alice/nothing-here"):
        read_eval_data("math", "alice/nothing-here", split="test")
    _upload(tmp_path, "alice/only-train", {"data/train.jsonl": [{"text": "a b c"}]})
    with pytest.raises(hubmerge.EvaluationDataError, match="split 'test'"):
        read_eval_data("math", "alice/only-train", split="test")


def test_evaluating_on_a_hub_dataset_equals_the_same_rows_from_a_file(hub, tmp_path):
    paths = domains()
    test_rows = [row for row in _rows(paths["math_qa"]) if row["split"] == "test"]
    sha = _upload(tmp_path, "alice/math-qa", {"data/test.jsonl": test_rows})
    result = hubmerge.merge([paths["math"], paths["words"]])
    settings = {"sources": [paths["math"], paths["words"]], "samples": 4, "max_length": 24, "device": "cpu"}
    from_hub = hubmerge.evaluate(result, {"math": "alice/math-qa"}, **settings).report.evaluation
    from_file = hubmerge.evaluate(result, {"math": paths["math_qa"]}, **settings).report.evaluation
    assert from_hub["domains"]["math"]["loss"] == from_file["domains"]["math"]["loss"]
    assert from_hub["domains"]["math"]["tokens"] == from_file["domains"]["math"]["tokens"] > 0
    assert from_hub["domains"]["math"]["data"]["revision"] == sha
