"""The JSON schema of ``hubmerge_report.json``, derived from the report's dataclasses.

``python -m tests.report_schema`` rewrites ``hubmerge/schemas/report.schema.json``;
``tests/test_report.py`` fails when the committed file and the dataclasses disagree,
and checks real reports against the committed file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hubmerge.report import SCHEMA_VERSION, MergeReport

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "hubmerge" / "schemas" / "report.schema.json"


def _schema(kind: Any, definitions: dict) -> dict:
    origin = typing.get_origin(kind)
    if kind is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema(option, definitions) for option in typing.get_args(kind)]}
    if kind is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(kind):
        name = kind.__name__
        if name not in definitions:
            definitions[name] = {}  # placeholder against recursion
            hints = typing.get_type_hints(kind)
            fields = dataclasses.fields(kind)
            definitions[name] = {
                "type": "object",
                "properties": {f.metadata.get("json", f.name): _schema(hints[f.name], definitions) for f in fields},
                "required": [
                    f.metadata.get("json", f.name)
                    for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                ],
                "additionalProperties": False,
            }
        return {"$ref": f"#/$defs/{name}"}
    if origin is tuple:
        return {"type": "array", "items": _schema(typing.get_args(kind)[0], definitions)}
    if origin in (Mapping, dict, typing.get_origin(Mapping[str, int])):
        return {"type": "object", "additionalProperties": _schema(typing.get_args(kind)[1], definitions)}
    simple = {float: "number", int: "integer", str: "string", bool: "boolean"}
    return {"type": simple[kind]}


def report_schema() -> dict:
    definitions: dict = {}
    body = _schema(MergeReport, definitions)
    report = dict(definitions.pop("MergeReport"))
    properties = dict(report["properties"])
    method = properties.pop("method")
    properties = {
        "schema_version": {"const": SCHEMA_VERSION},
        "hubmerge_version": properties.pop("hubmerge_version"),
        "method": {"type": "string"},
        "method_info": method,
        **properties,
    }
    required = ["schema_version", "hubmerge_version", "method_info", *report["required"]]
    assert body == {"$ref": "#/$defs/MergeReport"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hubmerge merge report (hubmerge_report.json)",
        "type": "object",
        "properties": properties,
        "required": sorted(set(required)),
        "additionalProperties": False,
        "$defs": dict(sorted(definitions.items())),
    }


def render() -> str:
    return json.dumps(report_schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
