"""Test isolation, the local Hub server, and fixtures for tiny real models and adapters.

huggingface_hub reads HF_ENDPOINT, HF_HOME and friends when it is imported,
so they are set here, at conftest import, before any test module imports it:
every Hub request of the whole suite goes to 127.0.0.1, never to the real
Hub, and no token or cache of the machine is seen. Per test, the HF cache is
a fresh tmp directory and offline mode is on unless the test asks for the
local Hub server (``hub`` fixture).
"""

from __future__ import annotations

import os
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
os.environ.update(
    HF_ENDPOINT=HUB_URL,
    HF_HOME=tempfile.mkdtemp(prefix="hubmerge-tests-hf-home-"),
    HF_HUB_DISABLE_XET="1",  # the local server takes plain LFS uploads, not Xet
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUBMERGE_DEBUG", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402
from huggingface_hub import constants  # noqa: E402

from tests.hub_server import HubServer  # noqa: E402

# Tokens of the users the local Hub knows. They look like real tokens on
# purpose: the secret-scanning tests grep every output for them.
TOKENS = {
    "alice": "hf_aliceSECRETmarker0123456789abcdefXYZ",
    "bob": "hf_bobSECRETmarker0123456789abcdefXYZ",
}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUBMERGE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    server = HubServer(tmp_path_factory.mktemp("hub"), port=HUB_PORT)
    for name, token in TOKENS.items():
        server.add_user(name, token, orgs=["test-org"] if name == "alice" else ())
    with server:
        yield server


@pytest.fixture
def hub(hub_server, monkeypatch):
    """The local Hub server, online, with alice logged in through HF_TOKEN."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", TOKENS["alice"])
    return hub_server
