"""The Space in a real browser: headless Debian Chromium, driven by Playwright, against spaces/app.py.

The app runs as its own process (``python spaces/app.py``) on 127.0.0.1, talking to the session's local
Hub server with alice's HF_TOKEN, so Gradio's local sign-in mock signs the browser in as alice. The browser
may only reach the app: every other request is refused before it leaves. Screenshots of each finished page
are saved under ``artifacts/`` (or ``$HUBMERGE_ARTIFACTS``). tests/test_space_deploy.py drives the deployed
copy the same way (examples, the public API endpoint).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from hubmerge.serving import ENGINES
from tests.conftest import TOKENS
from tests.factory import make_adapter
from tests.test_hub import base_repo, seed_adapter, unique  # noqa: F401 - base_repo is a fixture

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
TIMEOUT_MS = 30_000
# Advice for the command line: an option, an `hf` command, a token variable, a local path.
CLI_ADVICE = re.compile(r"(?<![\w-])--[a-z][a-z-]+|`hf |HF_TOKEN|local directory")
ENGINE_COMMANDS = tuple(engine.command.split(" --")[0].split(" {")[0] for engine in ENGINES.values())


def require_browser():
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (Debian: apt-get install chromium; `make browser-deps`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright Python package is missing (pip install playwright; no browser download needed)"
    if missing and os.environ.get("HUBMERGE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"HUBMERGE_REQUIRE_BROWSER=1 but {missing}")
    if missing:
        pytest.skip(missing)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("HUBMERGE_ARTIFACTS") or ROOT / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def running_app(
    command: list[str], *, cwd: Path, hub_url: str, home: Path, extra_env=None
) -> Iterator[tuple[str, Path]]:
    """Start a Space process on a free port of 127.0.0.1 (as alice, locally); yield its URL and log file."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SYSTEM", "SPACE_ID", "HF_HUB_OFFLINE")}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # the page shows the Hub's download bars as progress
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN=TOKENS["alice"],
        HF_HOME=str(home / "hf-home"),
        HF_HUB_CACHE=str(home / "hf-home" / "hub"),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(home / "gradio"),
        TMPDIR=str(home),
        PYTHONUNBUFFERED="1",
    )
    log = home / "app.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url} within 120 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.25)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def browser_page(url: str) -> Iterator:
    """A Chromium page that may reach the app only; ``page.refused`` lists what it was refused."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # a shared CI machine: 5 s is too little for a merge
    refused: list[str] = []

    def only_the_app(route):
        if urlsplit(route.request.url).netloc == urlsplit(url).netloc:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.route("**/*", only_the_app)
            page.refused = refused
            page.goto(url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()
    assert not [u for u in refused if "huggingface.co" in u], refused


def error_toast(page) -> str:
    """The text of the error message Gradio shows (gr.Error), once it is there; then it is closed."""
    from playwright.sync_api import expect

    toast = page.locator(".toast-body").last
    expect(toast).to_be_visible()
    text = toast.inner_text()
    page.locator(".toast-close").last.click()
    expect(page.locator(".toast-body")).to_have_count(0)  # gone, so the next call reads the next message
    return text


def slow_adapter(directory: Path, seed: int, *, layers: int = 8, width: int = 768, rank: int = 16) -> Path:
    """A PEFT-format adapter big enough that ties (dense trim, then SVD per module) takes seconds, not ms."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        key = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        tensors[f"{key}.lora_A.weight"] = torch.randn(rank, width, generator=generator) / width**0.5
        tensors[f"{key}.lora_B.weight"] = torch.randn(width, rank, generator=generator) / rank**0.5
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["q_proj"],
        "base_model_name_or_path": "test-org/tiny-llama", "task_type": "CAUSAL_LM",
    }  # fmt: skip
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def adapters(hub_server, tmp_path_factory, request):
    """On the local Hub: two adapters from one seed at different scales (compatible, both interference warnings
    fire), one for another base model, one with pickle weights only, and two slow ones."""
    request.getfixturevalue("base_repo")
    folder = tmp_path_factory.mktemp("browser-adapters")
    refs = {name: f"alice/{unique(name)}" for name in ("first", "second", "gpt2", "pickle", "slow1", "slow2")}
    seed_adapter(hub_server, refs["first"], make_adapter(folder / "first", seed=1))
    seed_adapter(hub_server, refs["second"], make_adapter(folder / "second", seed=1, lora_alpha=16), subfolder="v2")
    refs["second"] += "/v2"
    seed_adapter(hub_server, refs["gpt2"], make_adapter(folder / "gpt2", base="gpt2", seed=3))
    hub_server.create_repo(refs["pickle"], owner_token=TOKENS["alice"])
    config = (folder / "first" / "adapter_config.json").read_bytes()
    hub_server.commit_files(refs["pickle"], {"adapter_config.json": config, "adapter_model.bin": b"\x80\x04."})
    seed_adapter(hub_server, refs["slow1"], slow_adapter(folder / "slow1", seed=1))
    seed_adapter(hub_server, refs["slow2"], slow_adapter(folder / "slow2", seed=2))
    return refs


@pytest.fixture(scope="module")
def space(hub_server, tmp_path_factory):
    """``python spaces/app.py`` from the checkout, as alice; yields its URL and log."""
    require_browser()
    home = tmp_path_factory.mktemp("space-app")
    command = [sys.executable, str(ROOT / "spaces" / "app.py")]
    with running_app(command, cwd=home, hub_url=hub_server.url, home=home) as running:
        yield running


def test_analyse_then_merge_and_push_in_a_browser(hub, adapters, space, tmp_path):
    from playwright.sync_api import expect

    url, log = space
    target_name = unique("browser-merged")
    with browser_page(url) as page:
        # What a signed-out visitor types survives "Sign in", which reloads the page.
        page.get_by_role("button", name="Add an adapter").click()
        page.get_by_label("Adapter 1").fill(adapters["first"])
        page.get_by_label("Adapter 2").fill(adapters["second"])
        page.get_by_label("Weight 2").fill("0.5")
        page.get_by_label("Output repo name").fill(target_name)
        page.get_by_label("Adapter 3").fill("")
        page.wait_for_timeout(500)  # the form is saved in the browser on each change
        page.get_by_role("button", name="Sign in with Hugging Face").click()
        expect(page.get_by_role("button", name="Logout (alice)")).to_be_visible()
        expect(page.get_by_text("Signed in as alice")).to_be_visible()
        expect(page.get_by_label("Adapter 1")).to_have_value(adapters["first"])
        expect(page.get_by_label("Adapter 2")).to_have_value(adapters["second"])
        expect(page.get_by_label("Weight 2")).to_have_value("0.5")
        expect(page.get_by_label("Output repo name")).to_have_value(target_name)
        expect(page.get_by_label("Adapter 3")).to_be_visible()  # the number of rows is kept too
        page.get_by_role("button", name="Remove the last one").click()
        expect(page.get_by_label("Adapter 3")).to_be_hidden()
        page.get_by_label("Weight 2").fill("1")

        page.get_by_role("button", name="Analyse", exact=True).click()
        verdict = page.locator("#verdict")
        expect(verdict).to_contain_text("Compatible: these 2 adapters can be merged exactly (method sum)")
        expect(verdict).to_contain_text("exact: the merged delta equals")
        expect(page.locator("#warnings")).to_contain_text("Warnings (2)")
        expect(page.locator("#warnings")).to_contain_text("probably trained from the same seed")
        heatmap = page.locator("#heatmap img")
        expect(heatmap).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth === 700", arg=heatmap.element_handle())
        expect(page.locator("#matrix")).to_contain_text("RMS cosine")
        expect(page.locator("#target")).to_contain_text(f"alice/{target_name} does not exist yet")

        page.get_by_role("button", name="Merge & push").click()
        status = page.locator("#status")
        expect(status).to_contain_text("Pushed to alice/" + target_name, timeout=60_000)
        expect(status).to_contain_text("New public repository")
        expect(status.get_by_role("link", name=f"alice/{target_name}").first).to_have_attribute(
            "href", f"{hub.url}/alice/{target_name}"
        )
        # Before the next push the page says the repo exists and what a push will do to it.
        expect(page.locator("#target")).to_contain_text(f"alice/{target_name} already exists: Merge & push adds")
        page.get_by_label("Weight 2").fill("0.5")
        page.get_by_role("button", name="Merge & push").click()
        expect(status).to_contain_text("The repository existed: one commit was added", timeout=60_000)
        page.screenshot(path=str(artifacts_dir() / "space.png"), full_page=True)

        # Signed out, Merge & push offers the zip instead, and pushes nothing.
        repos_before = set(hub.list_repos())
        page.get_by_role("button", name="Logout (alice)").click()
        expect(page.get_by_role("button", name="Sign in with Hugging Face")).to_be_visible()
        expect(page.get_by_text("Not signed in")).to_be_visible()
        expect(page.get_by_label("Adapter 1")).to_have_value(adapters["first"])  # kept across sign-out too
        page.get_by_role("button", name="Merge & push").click()
        expect(status).to_contain_text("ready to download", timeout=60_000)
        link = page.locator('#download a[href$=".zip"]')
        expect(link).to_be_visible()
        with page.expect_download() as download_info:
            link.click()
        zip_path = tmp_path / "downloaded.zip"
        download_info.value.save_as(zip_path)  # the browser's copy goes when it closes
        page.screenshot(path=str(artifacts_dir() / "space-signed-out.png"), full_page=True)

    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
    assert names == {f"{target_name}/{n}" for n in ("README.md", "similarity.png", "adapter_config.json",
                     "adapter_model.safetensors", "hubmerge_report.json", "hubmerge_recipe.json")}  # fmt: skip
    assert set(hub.list_repos()) == repos_before

    target = f"alice/{target_name}"
    commits = hub.list_commits(target)
    assert len(commits) == 3, "created (with .gitattributes), pushed, pushed again"
    card = ModelCard(hub.read_file(target, "README.md").decode())
    assert card.data.library_name == "peft"
    assert "similarity.png" in commits[0]["files"]
    assert TOKENS["alice"] not in log.read_text(), "the token is never logged"


def test_progress_exactness_and_messages_in_a_browser(hub, adapters, space):
    from playwright.sync_api import expect

    url, _ = space
    shown: list[str] = []  # every message and verdict the page showed
    with browser_page(url) as page:
        # A weight of 0 (and a huge one) ends in a message, not a bare "Error".
        page.get_by_label("Adapter 1").fill(adapters["first"])
        page.get_by_label("Adapter 2").fill(adapters["second"])
        page.get_by_label("Weight 2").fill("0")
        page.get_by_role("button", name="Analyse", exact=True).click()
        shown.append(error_toast(page))
        assert "is 0, which leaves it out of the merge" in shown[-1]
        page.get_by_label("Weight 2").fill("1e308")
        page.get_by_role("button", name="Analyse", exact=True).click()
        shown.append(error_toast(page))
        assert "Use smaller weights." in shown[-1]

        # Messages in the Space's words: an incompatible pair, a pickle-only adapter.
        page.get_by_label("Weight 2").fill("1")
        page.get_by_label("Adapter 2").fill(adapters["gpt2"])
        page.get_by_role("button", name="Analyse", exact=True).click()
        verdict = page.locator("#verdict")
        expect(verdict).to_contain_text("Not compatible")
        shown.append(verdict.inner_text())
        page.get_by_label("Adapter 2").fill(adapters["pickle"])
        page.get_by_role("button", name="Analyse", exact=True).click()
        shown.append(error_toast(page))
        assert "only reads adapter_model.safetensors" in shown[-1]
        shown.append(page.get_by_label("Merge method").locator("..").inner_text())
        page.get_by_label("Merge method").click()
        shown.append(page.locator("ul[role=listbox]").inner_text())
        page.keyboard.press("Escape")

        # A slow ties merge (seconds): its progress shows while it runs, then how inexact it was.
        page.get_by_label("Adapter 1").fill(adapters["slow1"])
        page.get_by_label("Adapter 2").fill(adapters["slow2"])
        page.get_by_label("Merge method").click()
        page.get_by_role("option", name=re.compile(r"^ties:")).click()
        page.get_by_role("spinbutton", name=re.compile("^Rank per module")).fill("8")
        page.get_by_role("button", name="Merge & push").click()
        # hubmerge's own bar over the modules, through gr.Progress(track_tqdm=True), under the outputs
        expect(page.locator("#status")).to_contain_text(re.compile(r"\d+/8 module.*merging modules"), timeout=60_000)
        page.screenshot(path=str(artifacts_dir() / "space-progress.png"), full_page=True)
        status = page.locator("#status")
        expect(status).to_contain_text("ready to download", timeout=120_000)
        expect(verdict).to_contain_text("merged approximately: method ties is not exact")
        expect(verdict).to_contain_text(re.compile(r"it keeps \d+\.\d\d % of the energy"))
        expect(verdict).to_contain_text(re.compile(r"kept energy: the low-rank result keeps \d+\.\d\d%"))
        shown.append(verdict.inner_text())
        shown.append(page.locator("#warnings").inner_text())
        shown.append(page.locator("body").inner_text())
        page.screenshot(path=str(artifacts_dir() / "space-inexact.png"), full_page=True)
    for text in shown:
        # The serving section shows each engine's own command line (`vllm serve … --enable-lora`): those are the
        # engines' flags, what a visitor runs to serve the result, not hubmerge CLI advice.
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(ENGINE_COMMANDS))
        assert not CLI_ADVICE.search(text), CLI_ADVICE.search(text).group()
