"""The typed report: its JSON round-trips, matches the committed schema, and is read back strictly."""

from __future__ import annotations

import json

import jsonschema
import pytest

import hubmerge
from hubmerge.report import MergeReport, render_text
from tests.factory import make_adapter
from tests.report_schema import SCHEMA_PATH, render


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    return make_adapter(root / "a", seed=1), make_adapter(root / "b", seed=2, r=2, lora_alpha=4)


@pytest.fixture(scope="module")
def schema():
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def test_committed_schema_is_the_one_the_dataclasses_give():
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), "run: python -m tests.report_schema"


@pytest.mark.parametrize(
    "options",
    [{}, {"report_only": True}, {"method": "svd", "rank": 2}, {"weights": [1.0, 0.0]}],
    ids=["sum", "report-only", "svd", "zero-weight"],
)
def test_report_json_round_trips_and_matches_the_schema(pair, schema, options):
    result = hubmerge.merge(list(pair), **options)
    report = result if options.get("report_only") else result.report
    assert isinstance(report, MergeReport)
    data = json.loads(json.dumps(report.to_dict()))
    jsonschema.validate(data, schema)
    again = MergeReport.from_dict(data)
    assert again == report
    assert again.to_dict() == data
    assert data["schema_version"] == 1 and data["method"] == data["method_info"]["name"]


def test_written_report_file_matches_the_schema(pair, schema, tmp_path):
    out = hubmerge.merge(list(pair)).save_pretrained(tmp_path / "out")
    data = json.loads((out / "hubmerge_report.json").read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)
    assert MergeReport.from_dict(data).names == ("a", "b")


def test_schema_rejects_what_the_reader_rejects(pair, schema):
    data = hubmerge.merge(list(pair), report_only=True).to_dict()
    broken = {**data, "surprise": 1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    with pytest.raises(ValueError, match="unknown field"):
        MergeReport.from_dict(broken)
    wrong = json.loads(json.dumps(data))
    wrong["sources"][0]["weight"] = "heavy"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)
    with pytest.raises(ValueError, match=r"report\.sources\[0\]\.weight"):
        MergeReport.from_dict(wrong)
    with pytest.raises(ValueError, match="schema_version"):
        MergeReport.from_dict({**data, "schema_version": 99})


def test_report_is_frozen(pair):
    report = hubmerge.merge(list(pair), report_only=True)
    with pytest.raises(AttributeError):
        report.exact = False  # type: ignore[misc]
    assert isinstance(report.sources, tuple) and isinstance(report.warnings, tuple)


def test_terminal_table_shows_each_source_and_pair(pair):
    text = render_text(hubmerge.merge(list(pair), weights=[1.0, 0.5], report_only=True))
    lines = text.splitlines()
    assert lines[0].startswith(f"hubmerge {hubmerge.__version__} — method: sum (exact: True)")
    header = next(i for i, line in enumerate(lines) if line.startswith("adapter "))
    assert set(lines[header + 1]) <= {"-", " "}
    assert lines[header + 2].split()[:3] == ["a", "1", "4"] and lines[header + 3].split()[:3] == ["b", "0.5", "2"]
    assert any(line.startswith("a + b ") for line in lines)
