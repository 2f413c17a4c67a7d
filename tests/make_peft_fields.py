"""Regenerate ``hubmerge/data/peft_lora_fields.json``: each PEFT release's ``LoraConfig`` fields and defaults.

PEFT 0.6 to 0.13 build the config with ``LoraConfig(**json)``, so one key the
release does not know is a ``TypeError`` at load. hubmerge keeps, as data, the
fields (and their defaults) of every release, read from the wheels on PyPI
with :mod:`ast` (nothing is installed or imported):

    python tests/make_peft_fields.py 0.3.0 0.4.0 ... 0.21.2      # downloads into a temp dir
    python tests/make_peft_fields.py --wheels DIR                 # wheels already downloaded

A default that is not a literal is recorded as its source text (``"<factory: list>"``).
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "hubmerge" / "data" / "peft_lora_fields.json"
# Where LoraConfig and its bases lived over the releases.
LORA_FILES = ("peft/tuners/lora/config.py", "peft/tuners/lora.py")
BASE_FILES = ("peft/config.py", "peft/utils/config.py")


def _classes(source: str) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)}


def _default(value: ast.expr | None) -> object:
    if value is None:
        return "<required>"
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return _default(keyword.value)
            if keyword.arg == "default_factory":
                return f"<factory: {ast.unparse(keyword.value)}>"
        return "<required>"
    try:
        return ast.literal_eval(value)
    except ValueError:
        return f"<expr: {ast.unparse(value)}>"


def _fields(cls: ast.ClassDef) -> dict[str, object]:
    found = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = _default(node.value)
    return found


def release_fields(wheel: Path) -> dict[str, object]:
    """The dataclass fields of ``LoraConfig`` (its bases' first) in one PEFT wheel, with defaults."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        classes: dict[str, ast.ClassDef] = {}
        for path in (*BASE_FILES, *LORA_FILES):
            if path in names:
                classes.update(_classes(archive.read(path).decode()))
    fields: dict[str, object] = {}

    def collect(name: str) -> None:
        cls = classes.get(name)
        if cls is None:
            return
        for base in cls.bases:
            if isinstance(base, ast.Name):
                collect(base.id)
        fields.update(_fields(cls))

    collect("LoraConfig")
    if not fields:
        raise SystemExit(f"{wheel.name}: no LoraConfig found")
    return dict(sorted(fields.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", help="PEFT releases to download from PyPI")
    parser.add_argument("--wheels", type=Path, help="a folder of peft-*.whl files instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.wheels or Path(tmp)
        for version in args.versions:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", f"peft=={version}", "--no-deps", "-q", "-d", str(folder)],
                check=True,
            )
        releases = {}
        for wheel in sorted(folder.glob("peft-*.whl")):
            version = wheel.name.split("-")[1]
            releases[version] = release_fields(wheel)
    ordered = dict(sorted(releases.items(), key=lambda kv: tuple(int(p) for p in kv[0].split("."))))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"source": "PyPI wheels, peft/tuners/lora/config.py read with ast", "releases": ordered}, indent=1)
        + "\n"
    )
    print(f"wrote {OUT} ({len(ordered)} releases)")


if __name__ == "__main__":
    main()
