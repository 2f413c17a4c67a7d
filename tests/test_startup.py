"""`hubmerge --help` and usage errors answer without importing torch; the lazy
package still exposes the API functions, not the submodules of the same names."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from hubmerge.cli import main
code = main({argv!r})
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code)
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["--method", "nope", "a", "b"], 2),  # argparse refuses the choice
        (["a", "--dry-run"], 2),  # --dry-run without --push
    ],
)
def test_help_and_usage_errors_do_not_import_torch(argv, code):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-2:] == ["NO-TORCH", str(code)], out.stderr


def test_importing_the_package_does_not_import_torch():
    probe = "import sys, hubmerge; print(sorted(hubmerge.METHODS)[0], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["dare_linear", "False"], out.stderr


def test_no_submodule_shares_a_name_with_a_public_function():
    # A module named like an API function (hubmerge.merge) would rebind the package attribute on import.
    probe = (
        "import pkgutil, hubmerge, hubmerge.api, hubmerge.cli\n"
        "mods = {m.name for m in pkgutil.walk_packages(hubmerge.__path__)}\n"
        "print(sorted(mods & set(hubmerge.__all__)), hubmerge.merge is hubmerge.api.merge,"
        " hubmerge.similarity is hubmerge.api.similarity)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["[]", "True", "True"], out.stderr


MERGE_PROBE = """
import sys
from hubmerge.cli import main
code = main({argv!r})
heavy = ["huggingface_hub.hf_api", "matplotlib", "transformers", "peft"]
print("LOADED", [m for m in heavy if m in sys.modules], code)
"""


def test_a_local_merge_imports_no_hub_client_plotting_or_model_code(tmp_path):
    # A local merge writes README.md through ModelCardData alone: huggingface_hub's ModelCard module imports
    # its whole HfApi, which only a push needs; the figure (matplotlib) is skipped with --no-figure.
    from tests.factory import make_adapter

    a, b = make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)
    argv = [str(a), str(b), "-o", str(tmp_path / "out"), "--no-figure"]
    out = subprocess.run(
        [sys.executable, "-c", MERGE_PROBE.format(argv=argv)], capture_output=True, text=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "LOADED [] 0", out.stdout + out.stderr
    assert (tmp_path / "out" / "README.md").read_text().startswith("---\n")
