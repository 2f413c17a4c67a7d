"""The Space in a real browser: headless Debian Chromium, driven by Playwright, against spaces/app.py.

The app runs as its own process (``python spaces/app.py``) on 127.0.0.1, talking to the session's local
Hub server with alice's HF_TOKEN, so Gradio's local sign-in mock signs the browser in as alice. The browser
may only reach the app: every other request is refused before it leaves. A screenshot of the finished page
is saved to ``artifacts/space.png`` (or ``$HUBMERGE_ARTIFACTS/space.png``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import ModelCard

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


@pytest.fixture
def adapters(hub, tmp_path, request):
    """Two adapters from the same seed at different scales: compatible, and both interference warnings fire."""
    request.getfixturevalue("base_repo")
    first = make_adapter(tmp_path / "first", seed=1)
    second = make_adapter(tmp_path / "second", seed=1, lora_alpha=16)
    refs = [f"alice/{unique('first')}", f"alice/{unique('second')}"]
    seed_adapter(hub, refs[0], first)
    seed_adapter(hub, refs[1], second, subfolder="v2")
    return [refs[0], f"{refs[1]}/v2"]


@pytest.fixture
def space(hub, tmp_path, monkeypatch):
    """``python spaces/app.py`` on a free port of 127.0.0.1; yields its URL, stops it afterwards."""
    require_browser()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SYSTEM", "SPACE_ID", "HF_HUB_OFFLINE")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN=TOKENS["alice"],
        HF_HOME=str(tmp_path / "app-hf-home"),
        HF_HUB_CACHE=str(tmp_path / "app-hf-home" / "hub"),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
        TMPDIR=str(tmp_path),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "app.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "spaces" / "app.py")], cwd=tmp_path, env=env, stdout=sink, stderr=sink
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
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
                pytest.fail(f"the app did not answer on {url} within 90 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.25)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("HUBMERGE_ARTIFACTS") or ROOT / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_analyse_then_merge_and_push_in_a_browser(hub, adapters, space, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, log = space
    target_name = unique("browser-merged")
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
            page.goto(url, wait_until="domcontentloaded")

            # Sign in: locally Gradio's mock signs the browser in as the machine's account (alice).
            page.get_by_role("button", name="Sign in with Hugging Face").click()
            expect(page.get_by_role("button", name="Logout (alice)")).to_be_visible()
            expect(page.get_by_text("Signed in as alice")).to_be_visible()

            # A third row comes and goes.
            page.get_by_role("button", name="Add an adapter").click()
            expect(page.get_by_label("Adapter 3")).to_be_visible()
            page.get_by_role("button", name="Remove the last one").click()
            expect(page.get_by_label("Adapter 3")).to_be_hidden()

            page.get_by_label("Adapter 1").fill(adapters[0])
            page.get_by_label("Adapter 2").fill(adapters[1])
            page.get_by_role("button", name="Analyse", exact=True).click()

            expect(page.locator("#verdict")).to_contain_text("Compatible: these 2 adapters can be merged exactly")
            expect(page.locator("#warnings")).to_contain_text("Warnings (2)")
            expect(page.locator("#warnings")).to_contain_text("probably trained from the same seed")
            heatmap = page.locator("#heatmap img")
            expect(heatmap).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth === 700", arg=heatmap.element_handle())
            expect(page.locator("#matrix")).to_contain_text("RMS cosine")

            page.get_by_label("Output repo name").fill(target_name)
            page.get_by_role("button", name="Merge & push").click()
            status = page.locator("#status")
            expect(status).to_contain_text("Pushed to alice/" + target_name, timeout=60_000)
            expect(status.get_by_role("link", name=f"alice/{target_name}")).to_have_attribute(
                "href", f"{hub.url}/alice/{target_name}"
            )
            page.screenshot(path=str(artifacts_dir() / "space.png"), full_page=True)

            # Signed out, Merge & push offers the zip instead, and pushes nothing.
            repos_before = set(hub.list_repos())
            page.get_by_role("button", name="Logout (alice)").click()
            expect(page.get_by_role("button", name="Sign in with Hugging Face")).to_be_visible()
            expect(page.get_by_text("Not signed in")).to_be_visible()
            page.get_by_label("Adapter 1").fill(adapters[0])
            page.get_by_label("Adapter 2").fill(adapters[1])
            page.get_by_role("button", name="Merge & push").click()
            expect(status).to_contain_text("ready to download", timeout=60_000)
            link = page.locator('#download a[href$=".zip"]')
            expect(link).to_be_visible()
            with page.expect_download() as download_info:
                link.click()
            zip_path = tmp_path / "downloaded.zip"
            download_info.value.save_as(zip_path)  # the browser's copy goes when it closes
            page.screenshot(path=str(artifacts_dir() / "space-signed-out.png"), full_page=True)
        finally:
            browser.close()

    with zipfile.ZipFile(zip_path) as archive:
        names = {name.split("/", 1)[1] for name in archive.namelist()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert set(hub.list_repos()) == repos_before

    target = f"alice/{target_name}"
    assert target in hub.list_repos()
    card = ModelCard(hub.read_file(target, "README.md").decode())
    assert card.data.library_name == "peft"
    assert "similarity.png" in hub.list_commits(target)[0]["files"]
    assert not [u for u in refused if "huggingface.co" in u], refused
    assert TOKENS["alice"] not in log.read_text(), "the token is never logged"
