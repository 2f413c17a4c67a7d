"""Network faults, injected by the local Hub server: each ends in a merge that worked (the client retried)
or in one line naming the source or target, with nothing half-written on the Hub or on disk.

What huggingface_hub retries, and what it does not, is measured here from the server's request log, so
the table in docs/hardening.md stays true when the client changes.
"""

from __future__ import annotations

import time
import types
from pathlib import Path

import huggingface_hub.file_download
import huggingface_hub.utils._http
import pytest
from huggingface_hub import constants
from safetensors.torch import load_file

import hubmerge
from hubmerge.cli import main
from tests import test_hub
from tests.conftest import TOKENS
from tests.hub_server import Delay, Drop, first
from tests.test_hub import unique

base_repo, two_repos = test_hub.base_repo, test_hub.two_repos  # the Hub fixtures of test_hub.py

TIMEOUT = 0.5  # seconds, for both HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT
LOCAL_FILES = [
    "README.md", "adapter_config.json", "adapter_model.safetensors", "hubmerge_recipe.json", "hubmerge_report.json",
    "similarity.png",
]  # fmt: skip


@pytest.fixture
def backoff(monkeypatch) -> list[float]:
    """huggingface_hub's retry waits (1, 2, 4, 8 s…), recorded instead of slept: retries stay, tests stay fast."""
    waits: list[float] = []
    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in ("time", "monotonic", "perf_counter")})
    clock.sleep = waits.append
    monkeypatch.setattr(huggingface_hub.utils._http, "time", clock)
    monkeypatch.setattr(huggingface_hub.file_download, "time", clock)
    return waits


@pytest.fixture
def short_timeouts(monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", TIMEOUT)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", TIMEOUT)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def sources(two_repos) -> list[str]:
    return [two_repos["a"][0], f"{two_repos['b'][0]}/sub@v1"]


def on_api_info(fault):
    return lambda method, path: fault if method == "GET" and path.startswith("/api/models/alice/") else None


def on_head(fault):
    return lambda method, path: fault if method == "HEAD" and "/resolve/" in path else None


def on_weights_get(fault):
    return lambda method, path: fault if method == "GET" and path.endswith(".safetensors") else None


def cached_weights(repo_id: str) -> bytes:
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    (path,) = folder.glob("snapshots/*/adapter_model.safetensors")
    return path.read_bytes()


# -- download -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(lambda: first(2, on_head(500)), id="download-500-transient"),
        pytest.param(lambda: first(1, on_weights_get(Drop(after_bytes=100))), id="download-cut-mid-body-transient"),
        pytest.param(lambda: first(1, on_head(Delay(TIMEOUT * 4))), id="download-slow-head-transient"),
    ],
)
def test_transient_download_faults_are_retried(hub, two_repos, backoff, short_timeouts, rule):
    (repo_a, dir_a, sha_a), (_, _, sha_b) = two_repos["a"], two_repos["b"]
    fault = rule()
    with hub.injected(fault):
        result = hubmerge.merge(sources(two_repos), report_only=True)
    assert [s["commit_sha"] for s in result.to_dict()["sources"]] == [sha_a, sha_b]
    weights_path = "/alice/x/resolve/main/adapter_model.safetensors"
    assert fault("GET", weights_path) is None and fault("HEAD", weights_path) is None, "the fault was injected"
    # the retried download is whole: byte for byte what was uploaded
    assert cached_weights(repo_a) == (dir_a / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "rule, needles, retried",
    [
        pytest.param(on_head(500), ("HTTP 500", "try again later"), True, id="download-500-persistent"),
        pytest.param(on_api_info(500), ("HTTP 500", "try again later"), False, id="metadata-500-persistent"),
        pytest.param(on_api_info(Drop()), ("Server disconnected", "try again"), False, id="metadata-dropped"),
        pytest.param(on_head(Drop()), ("Server disconnected", "try again"), False, id="download-head-dropped"),
        pytest.param(
            on_weights_get(Drop(after_bytes=100)), ("received 100 bytes", "try again"), True, id="download-cut-always"
        ),
        pytest.param(on_api_info(Delay(TIMEOUT * 6)), ("did not answer in time",), False, id="metadata-slow"),
        pytest.param(on_weights_get(Delay(TIMEOUT * 4)), ("did not answer in time",), True, id="download-slow"),
    ],
)
def test_persistent_download_faults_are_one_line(
    capsys, hub, two_repos, backoff, short_timeouts, rule, needles, retried
):
    repo_a = two_repos["a"][0]
    before = len(hub.requests)
    started = time.monotonic()
    with hub.injected(rule):
        code, out, err = cli(capsys, *sources(two_repos), "-o", "out")
    elapsed = time.monotonic() - started
    assert code == 1 and out == ""
    assert err.startswith(f"hubmerge: error: {repo_a}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not Path("out").exists()
    hits = [r for r in hub.requests[before:] if rule(*r) is not None]
    # huggingface_hub retries some failures itself (with backoff) and reports others at once
    assert (len(hits) > 1) == retried, hits
    assert elapsed < 30, "a timeout, not a hang"


# -- push ---------------------------------------------------------------------------------------


def on_commit(fault):
    return lambda method, path: fault if method == "POST" and "/commit/" in path else None


def on_lfs_upload(fault):
    return lambda method, path: fault if method == "PUT" and path.startswith("/_lfs/") else None


def on_preupload(fault):
    return lambda method, path: fault if method == "POST" and "/preupload/" in path else None


PUSH_FAULTS = {
    "push-commit-500": (lambda hub, target: on_commit(500), "HTTP 500"),
    "push-commit-dropped": (lambda hub, target: on_commit(Drop()), "did not answer"),
    "push-upload-500": (lambda hub, target: on_lfs_upload(500), "HTTP 500"),
    "push-upload-cut": (lambda hub, target: on_lfs_upload(Drop()), "did not answer"),
    "push-preupload-403": (lambda hub, target: on_preupload(403), "no write access"),
}


@pytest.mark.parametrize("existing", [False, True], ids=["new-repo", "existing-repo"])
@pytest.mark.parametrize("case", list(PUSH_FAULTS))
def test_push_failure_changes_nothing(capsys, hub, two_repos, backoff, tmp_path, case, existing):
    target = f"alice/{unique('flaky')}"
    if existing:
        hub.create_repo(target, owner_token=TOKENS["alice"])
        hub.commit_files(target, {"notes.txt": b"kept"})
    commits = hub.list_commits(target) if existing else None
    make_rule, needle = PUSH_FAULTS[case]
    with hub.injected(make_rule(hub, target)):
        code, out, err = cli(capsys, *sources(two_repos), "-o", tmp_path / "local", "--push", target)
    assert code == 1, (out, err)
    assert err.startswith("hubmerge: error: cannot ") and target in err and needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    if existing:
        assert hub.list_commits(target) == commits, "the Hub commit is all or nothing"
    else:
        assert target not in hub.list_repos(), "the repo created for the push was removed again"
    # the local output, written before the push, is whole
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == LOCAL_FILES
    assert load_file(tmp_path / "local" / "adapter_model.safetensors")


def test_branch_moved_during_the_push_is_refused(capsys, hub, two_repos, tmp_path):
    target = f"alice/{unique('busy')}"
    hub.create_repo(target, owner_token=TOKENS["alice"])

    def someone_else_pushes_first(method, path):
        if method == "POST" and "/commit/" in path and path.startswith(f"/api/models/{target}/"):
            hub.commit_files(target, {"theirs.txt": b"pushed meanwhile"}, message="a concurrent push")
        return None

    with hub.injected(first(1, someone_else_pushes_first)):
        code, _, err = cli(capsys, *sources(two_repos), "-o", tmp_path / "local", "--push", target)
    assert code == 1 and err.count("\n") == 1, err
    assert f"cannot commit to {target}: the branch moved during the push; run the command again" in err
    commits = hub.list_commits(target)
    assert commits[0]["title"] == "a concurrent push" and "README.md" not in commits[0]["files"]
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == LOCAL_FILES
    # run again: it goes on top of the moved branch and keeps the other push's file
    code, _, err = cli(capsys, *sources(two_repos), "--push", target)
    assert code == 0, err
    assert {"theirs.txt", "README.md"} <= set(hub.list_commits(target)[0]["files"])
