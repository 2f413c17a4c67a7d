"""Deploying the Space (hubmerge/space_deploy.py), and the deployed copy built and driven as a visitor would.

The end-to-end test deploys to the local Hub server with ``hubmerge-space deploy``, downloads the Space repo
into an empty folder, builds it as the Space builder does (a fresh virtualenv, ``requirements.txt`` and the
sdk's Gradio; torch from the machine's wheel folder, every package from uv's cache, never a network index),
starts its ``app.py``, calls its public ``analyse`` endpoint with gradio_client, and merges and pushes one of
its examples in Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, snapshot_download
from packaging.version import Version

import hubmerge
from hubmerge import space_deploy
from tests.conftest import TOKENS
from tests.test_hub import unique
from tests.test_space import dense_rms_cosine
from tests.test_space_browser import artifacts_dir, browser_page, require_browser, running_app

try:
    import tomllib  # Python 3.11+: reads pyproject.toml independently of the installed metadata
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces"
EXAMPLES = ROOT / "examples" / "adapters"


def front_matter(readme: bytes) -> dict:
    return yaml.safe_load(readme.decode().split("---\n", 2)[1])


def test_the_bundle_holds_the_space_hubmerge_and_its_dependencies():
    files = space_deploy.space_files(SPACE)
    package = {f"hubmerge/{p.relative_to(ROOT / 'hubmerge').as_posix()}" for p in (ROOT / "hubmerge").rglob("*.py")}
    assert package <= files.keys(), "hubmerge's whole source goes next to app.py"
    for name in ("app.py", "handlers.py", "form.py", "publish.py", "views.py", "messages.py", "README.md"):
        assert name in files
    assert files["app.py"] == (SPACE / "app.py").read_bytes()
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]
    assert "examples.json" not in files

    # The requirements are hubmerge's declared runtime dependencies (pyproject.toml, read independently).
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The Evaluate step needs the eval extra on the Space too.
    declared = project["dependencies"] + project["optional-dependencies"]["eval"]
    lines = [line for line in files["requirements.txt"].decode().splitlines() if line and line[0] != "#"]
    assert sorted(line.replace(" ", "") for line in lines if not line.startswith("--")) == sorted(
        d.replace(" ", "") for d in declared
    )
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert not [line for line in lines if line.lower().startswith(("gradio", "hubmerge"))], "sdk_version pins gradio"


def test_space_metadata():
    meta = front_matter((SPACE / "README.md").read_bytes())
    # the app uses Gradio 6's API (api_visibility, OAuth injection, gr.api); bump sdk_version with the Gradio tested
    assert meta["sdk"] == "gradio" and Version(meta["sdk_version"]) == Version(gr.__version__)
    assert (SPACE / meta["app_file"]).is_file()
    assert meta["hf_oauth"] is True
    assert {"read-repos", "write-repos", "manage-repos"} <= set(meta["hf_oauth_scopes"])
    assert len(meta["short_description"]) <= 60
    body = (SPACE / "README.md").read_text().split("---\n", 2)[2]
    for topic in ("Run it locally", "Sign-in", "Limits", "Deploy", "hubmerge-space deploy", "API"):
        assert topic in body


def test_bad_arguments_stop_before_anything_is_uploaded(hub, tmp_path, capsys):
    before = set(hub.list_repos("space")) | set(hub.list_repos())
    assert space_deploy.main(["deploy", "not a repo"]) == 1
    assert "is not a valid Space id" in capsys.readouterr().err
    assert space_deploy.main(["deploy", "alice/x", "--space-dir", str(tmp_path)]) == 1
    assert "is not the Space's folder" in capsys.readouterr().err
    assert space_deploy.main(["deploy", "alice/x", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "requirements.txt" in listed and "hubmerge/api.py" in listed
    assert set(hub.list_repos("space")) | set(hub.list_repos()) == before


def test_a_redeploy_of_the_same_files_makes_no_commit(hub):
    space = f"alice/{unique('space')}"
    first = space_deploy.deploy(space, examples_dir=None)
    again = space_deploy.deploy(space, examples_dir=None)
    assert again.oid == first.oid and len(hub.list_commits(space, repo_type="space")) == 2
    assert HfApi().space_info(space).sdk == "gradio"


def fresh_space_environment(folder: Path, venv: Path) -> Path:
    """The Space builder's step, offline: a new virtualenv, requirements.txt and the sdk's Gradio with its OAuth
    extra. torch comes from the machine's wheel folder; uv answers from its cache and never asks an index."""
    uv = Path(sys.executable).with_name("uv")
    if not uv.exists():
        uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is missing: `make setup` installs it into .venv")
    gradio = f"gradio[oauth]=={front_matter((folder / 'README.md').read_bytes())['sdk_version']}"
    wheels = os.environ.get("PIP_FIND_LINKS") or "/opt/wheels"
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    install = [str(uv), "pip", "install", "--python", str(venv / "bin" / "python"), "--offline"]
    install += ["--find-links", wheels, "-r", str(folder / "requirements.txt"), gradio]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"building the Space failed:\n{done.stderr[-4000:]}"
    return venv / "bin" / "python"


@pytest.mark.browser
@pytest.mark.slow
def test_the_deployed_space_builds_starts_and_merges(hub, tmp_path):
    require_browser()
    from gradio_client import Client
    from playwright.sync_api import expect

    space = f"alice/{unique('hubmerge')}"
    assert space_deploy.main(["deploy", space]) == 0
    assert HfApi().space_info(space).sdk == "gradio"
    commits = hub.list_commits(space, repo_type="space")
    assert len(commits) == 2, "the Space's initial commit, then everything in one commit"

    folder = Path(snapshot_download(space, repo_type="space", local_dir=tmp_path / "space"))
    downloaded = {
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts
    }
    expected = set(space_deploy.space_files(SPACE, examples=[{}])) | {".gitattributes"}
    assert downloaded == expected
    examples = json.loads((folder / "examples.json").read_text())["examples"]
    assert examples[0]["label"] == "finance + math + medicine"
    repo_id = f"alice/{space_deploy.EXAMPLES_REPO_NAME}"
    sha = hub.refs(repo_id)["refs/heads/main"]
    assert examples[0]["adapters"] == [f"{repo_id}/{name}@{sha}" for name in ("finance", "math", "medicine")]

    python = fresh_space_environment(folder, tmp_path / "venv")
    where = subprocess.run(
        [str(python), "-c", "import hubmerge, torch; print(hubmerge.__file__)"],
        cwd=folder, capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    assert Path(where.stdout.strip()).parent == folder / "hubmerge", "the Space runs the bundled hubmerge"

    home = tmp_path / "home"
    home.mkdir()
    with running_app([str(python), "app.py"], cwd=folder, hub_url=hub.url, home=home) as (url, log):
        # Python callers: the public, read-only endpoint.
        client = Client(url, verbose=False)
        math_ref, medicine_ref = examples[0]["adapters"][1:]
        answer = client.predict([math_ref, medicine_ref], [1.0, 1.0], "sum", api_name="/analyse")
        assert answer["compatible"] is True
        rms = answer["report"]["similarity"]["rms_cosine"][0][1]
        assert rms == pytest.approx(dense_rms_cosine(EXAMPLES / "math", EXAMPLES / "medicine"), rel=1e-3)

        with browser_page(url) as page:
            page.get_by_role("button", name="Example: finance + math + medicine").click()
            expect(page.get_by_label("Adapter 3")).to_have_value(examples[0]["adapters"][2])
            # built with the eval extra from requirements.txt, the Evaluate step is offered, not "not available"
            expect(page.get_by_role("button", name="Evaluate", exact=True)).to_be_visible()
            page.get_by_role("button", name="Analyse", exact=True).click()
            expect(page.locator("#verdict")).to_contain_text("these 3 adapters can be merged exactly", timeout=90_000)
            page.get_by_role("button", name="Sign in with Hugging Face").click()
            expect(page.get_by_role("button", name="Logout (alice)")).to_be_visible()
            expect(page.get_by_label("Adapter 3")).to_have_value(examples[0]["adapters"][2])
            page.get_by_role("button", name="Merge & push").click()
            status = page.locator("#status")
            expect(status).to_contain_text("Pushed to alice/finance-math-medicine-merged", timeout=120_000)
            page.screenshot(path=str(artifacts_dir() / "space-deployed.png"), full_page=True)

    card = ModelCard(hub.read_file("alice/finance-math-medicine-merged", "README.md").decode())
    assert card.data.library_name == "peft" and card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert TOKENS["alice"] not in log.read_text()
    assert hubmerge.__version__ in commits[0]["title"]


@pytest.mark.skipif(tomllib is None, reason="reading pyproject.toml needs Python 3.11's tomllib")
def test_deploy_is_a_command_of_its_own():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hubmerge-space"] == "hubmerge.space_deploy:main", "not a subcommand of hubmerge (sources)"
    done = subprocess.run(
        [sys.executable, "-m", "hubmerge.space_deploy", "deploy", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "USER/SPACE" in done.stdout
