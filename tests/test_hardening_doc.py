"""docs/hardening.md stays true: every test its tables name exists, and every hardening test is named there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "hardening.md"
# `test_file.py::test_name` or `test_file.py::test_name[param-id]`, in backticks
_REFERENCE = re.compile(r"`(test_\w+\.py::\w+(?:\[[^\]`]+\])?)`")


def collected(files: list[str]) -> list[str]:
    """The node ids pytest collects from ``files`` (relative to tests/)."""
    found = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + [f"tests/{name}" for name in files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    ids = [line.strip().removeprefix("tests/") for line in found.stdout.splitlines() if "::" in line]
    assert ids, found.stdout + found.stderr
    return ids


def covers(reference: str, node: str) -> bool:
    # A reference without a parameter covers every parametrization of that test.
    return node == reference or ("[" not in reference and node.startswith(reference + "["))


def test_the_hardening_table_and_the_tests_agree():
    references = _REFERENCE.findall(DOC.read_text(encoding="utf-8"))
    hardening = sorted(p.name for p in (ROOT / "tests").glob("test_hardening_*.py") if p.name != Path(__file__).name)
    files = sorted({reference.split("::")[0] for reference in references} | set(hardening))
    nodes = collected(files)
    missing = [r for r in references if not any(covers(r, node) for node in nodes)]
    assert not missing, f"docs/hardening.md names tests that do not exist: {missing}"
    unlisted = [
        node for node in nodes if node.split("::")[0] in hardening and not any(covers(r, node) for r in references)
    ]
    assert not unlisted, f"hardening tests missing from docs/hardening.md: {unlisted}"
    assert len(references) == len(set(references)), "each test is named once"
