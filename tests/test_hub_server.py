"""Tests for the local Hub look-alike in tests/hub_server.py, driven by the real huggingface_hub client."""

from __future__ import annotations

import json
import socket
import struct
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:  # tests/ is on sys.path (pytest's rootdir-relative import) unless it becomes a package
    from hub_server import HubServer, git_sha1
except ImportError:
    from tests.hub_server import HubServer, git_sha1

ALICE, BOB = "alice-token", "bob-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    outside = []  # hosts something tried to resolve: nothing may leave this machine
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            outside.append(host)
            raise OSError(f"tests must not reach {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        # Xet uploads cannot go through a plain HTTP server; telemetry would fetch the agent registry from
        # constants.ENDPOINT (huggingface.co) rather than from the endpoint= passed to each call.
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        mp.delenv("HF_TOKEN", raising=False)
        mp.setattr(socket, "getaddrinfo", local_only)
        with HubServer(tmp_path_factory.mktemp("hub")) as hub:
            hub.add_user("alice", ALICE, orgs=["acme"])
            hub.add_user("bob", BOB)
            yield hub
    assert outside == []


@pytest.fixture(autouse=True)
def online(monkeypatch):
    # conftest turns offline mode on for every test; these tests talk to their own server.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    # Every call passes cache_dir=; the default cache is redirected too, in case one forgets.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default_cache"))
    return tmp_path / "cache"


@pytest.fixture
def alice(server):
    return HfApi(endpoint=server.url, token=ALICE)


def safetensors_bytes(n: int = 16) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack(f"<{n}f", *range(n))


@pytest.fixture(scope="module")
def model(server, tmp_path_factory):
    """alice/model: one upload_folder commit with an LFS file, a regular file and a subfolder; tag v1."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "adapter_model.safetensors").write_bytes(safetensors_bytes())
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("hello")
    api = HfApi(endpoint=server.url, token=ALICE)
    api.create_repo("alice/model")
    info = api.upload_folder(repo_id="alice/model", folder_path=folder, commit_message="add adapter")
    server.create_tag("alice/model", "v1")
    return info.oid


def test_whoami(server):
    me = HfApi(endpoint=server.url).whoami(token=ALICE)
    assert me["name"] == "alice" and [o["name"] for o in me["orgs"]] == ["acme"]
    assert me["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=server.url).whoami(token="wrong")
    assert exc.value.response.status_code == 401


def test_create_repo(server, alice):
    url = alice.create_repo("alice/fresh")
    assert url.repo_id == "alice/fresh" and url == f"{server.url}/alice/fresh"
    assert server.list_commits("alice/fresh")[0]["title"] == "initial commit"
    assert b"*.safetensors filter=lfs" in server.read_file("alice/fresh", ".gitattributes")
    assert alice.create_repo("alice/fresh", exist_ok=True).repo_id == "alice/fresh"
    with pytest.raises(HfHubHTTPError) as exc:
        alice.create_repo("alice/fresh")
    assert exc.value.response.status_code == 409
    alice.create_repo("acme/org-repo", private=True)  # as an org member
    assert "acme/org-repo" in server.list_repos()
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=server.url, token=BOB).create_repo("acme/not-bob")
    assert exc.value.response.status_code == 403


def test_upload_folder_makes_one_commit_with_lfs_and_regular_files(server, model):
    commits = server.list_commits("alice/model")
    assert [c["title"] for c in commits] == ["add adapter", "initial commit"] and commits[0]["id"] == model
    files = commits[0]["files"]
    assert files["adapter_model.safetensors"]["lfs"] and not files["adapter_config.json"]["lfs"]
    assert server.read_file("alice/model", "adapter_model.safetensors") == safetensors_bytes()
    # The LFS file went through batch + PUT + verify, not inline base64.
    assert any(p == "/alice/model.git/info/lfs/objects/batch" for _, p in server.requests)


def test_model_info(server, model):
    api = HfApi(endpoint=server.url, token=False)
    info = api.model_info("alice/model", files_metadata=True)
    assert info.id == "alice/model" and info.sha == model and info.private is False
    siblings = {s.rfilename: s for s in info.siblings}
    assert sorted(siblings) == [".gitattributes", "adapter_config.json", "adapter_model.safetensors", "sub/notes.txt"]
    assert siblings["adapter_config.json"].blob_id == git_sha1(b'{"r": 8}')
    assert siblings["adapter_model.safetensors"].lfs.size == len(safetensors_bytes())
    assert api.model_info("alice/model", revision="v1").sha == model
    assert sorted(api.list_repo_files("alice/model")) == sorted(siblings)
    assert [f.path for f in api.list_repo_tree("alice/model", path_in_repo="sub")] == ["sub/notes.txt"]


def test_snapshot_download_with_patterns_and_subfolder(server, model, cache):
    kw = dict(endpoint=server.url, token=False, cache_dir=cache)
    path = snapshot_download("alice/model", allow_patterns=["*.json", "sub/*"], **kw)
    names = sorted(p.relative_to(path).as_posix() for p in Path(path).rglob("*") if p.is_file())
    assert names == ["adapter_config.json", "sub/notes.txt"]
    assert path.endswith(model)


@pytest.mark.parametrize("revision", ["main", "v1", "sha"])
def test_hf_hub_download_by_revision(server, model, cache, revision):
    revision = model if revision == "sha" else revision
    kw = dict(endpoint=server.url, token=False, cache_dir=cache, revision=revision)
    path = hf_hub_download("alice/model", "adapter_model.safetensors", **kw)
    assert Path(path).read_bytes() == safetensors_bytes()
    assert Path(hf_hub_download("alice/model", "notes.txt", subfolder="sub", **kw)).read_text() == "hello"


def test_range_request(server, model):
    url = f"{server.url}/alice/model/resolve/main/adapter_config.json"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=1-3"})) as resp:
        assert resp.status == 206 and resp.read() == b'"r"'
        assert resp.headers["Content-Range"] == "bytes 1-3/8" and resp.headers["X-Repo-Commit"] == model


def test_create_pr_and_download_pr_ref(server, model, cache):
    api = HfApi(endpoint=server.url, token=BOB)  # not a member of alice's namespace: may still open a PR
    op = CommitOperationAdd("adapter_config.json", b'{"r": 16}')
    info = api.create_commit("alice/model", [op], commit_message="bump r", create_pr=True)
    assert info.pr_url == f"{server.url}/alice/model/discussions/1" and info.pr_revision == "refs/pr/1"
    assert server.refs("alice/model")["refs/pr/1"] == info.oid
    kw = dict(revision="refs/pr/1", endpoint=server.url, token=False, cache_dir=cache)
    assert Path(hf_hub_download("alice/model", "adapter_config.json", **kw)).read_text() == '{"r": 16}'
    assert server.read_file("alice/model", "adapter_config.json") == b'{"r": 8}'  # main untouched
    with pytest.raises(HfHubHTTPError) as exc:  # but bob cannot write to main
        api.create_commit("alice/model", [CommitOperationAdd("x.txt", b"x")], commit_message="direct")
    assert exc.value.response.status_code == 403


def test_unchanged_upload_creates_no_commit(server, alice, model):
    before = server.list_commits("alice/model")
    kw = dict(repo_id="alice/model")
    info = alice.upload_file(path_or_fileobj=b'{"r": 8}', path_in_repo="adapter_config.json", **kw)
    info2 = alice.upload_file(path_or_fileobj=safetensors_bytes(), path_in_repo="adapter_model.safetensors", **kw)
    assert info.oid == info2.oid == before[0]["id"]
    assert server.list_commits("alice/model") == before


def test_stale_parent_commit_is_412(server, alice):
    alice.create_repo("alice/race")
    first = server.list_commits("alice/race")[0]["id"]
    server.commit_files("alice/race", {"a.txt": b"a"})
    op = CommitOperationAdd("b.txt", b"b")
    with pytest.raises(HfHubHTTPError) as exc:
        alice.create_commit("alice/race", [op], commit_message="late", parent_commit=first)
    assert exc.value.response.status_code == 412


def test_not_found_errors(server, model, cache):
    kw = dict(endpoint=server.url, token=False, cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/missing", "x.json", **kw)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/model", "adapter_config.json", revision="nope", **kw)
    with pytest.raises(RemoteEntryNotFoundError) as exc:
        hf_hub_download("alice/model", "missing.json", **kw)
    assert exc.value.response.headers["X-Repo-Commit"] == model
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=server.url, token=False).model_info("alice/model", revision="nope")


def test_private_repo(server, cache):
    server.create_repo("alice/secret", private=True)
    server.commit_files("alice/secret", {"config.json": b"{}"})
    kw = dict(endpoint=server.url, cache_dir=cache)
    for token in (False, BOB):  # anonymous: 401, other user: 404 -- both RepositoryNotFoundError
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=server.url, token=token).model_info("alice/secret")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/secret", "config.json", token=token, **kw)
    assert Path(hf_hub_download("alice/secret", "config.json", token=ALICE, **kw)).read_text() == "{}"


def test_gated_repo(server, cache):
    server.create_repo("acme/gated", gated=True)
    server.commit_files("acme/gated", {"config.json": b"{}"})
    assert HfApi(endpoint=server.url, token=False).model_info("acme/gated").gated == "manual"
    kw = dict(endpoint=server.url, cache_dir=cache)
    for token in (False, BOB):  # anonymous: 401, without access: 403
        with pytest.raises(GatedRepoError):
            hf_hub_download("acme/gated", "config.json", token=token, **kw)
    server.grant_access("acme/gated", "bob")
    assert Path(hf_hub_download("acme/gated", "config.json", token=BOB, **kw)).read_text() == "{}"


def test_redirected_alias_reports_canonical_id(server, model, cache):
    server.add_redirect("gpt2", "alice/model")
    assert HfApi(endpoint=server.url, token=False).model_info("gpt2").id == "alice/model"
    path = hf_hub_download("gpt2", "adapter_config.json", endpoint=server.url, token=False, cache_dir=cache)
    assert Path(path).read_text() == '{"r": 8}'


def test_dataset_branch_refs_and_commits(server, alice, model, cache):
    alice.create_repo("acme/data", repo_type="dataset", private=True)
    alice.create_branch("acme/data", repo_type="dataset", branch="dev")
    kw = dict(repo_type="dataset", revision="dev")
    alice.upload_file(path_or_fileobj=b"a,b\n", path_in_repo="t.csv", repo_id="acme/data", **kw)
    kw.update(endpoint=server.url, token=ALICE, cache_dir=cache)
    assert Path(hf_hub_download("acme/data", "t.csv", **kw)).read_text() == "a,b\n"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("acme/data", "t.csv", **{**kw, "revision": "main"})
    refs = alice.list_repo_refs("alice/model", include_pull_requests=True)
    assert [t.name for t in refs.tags] == ["v1"] and refs.branches[0].target_commit == model
    assert [c.title for c in alice.list_repo_commits("alice/model")] == ["add adapter", "initial commit"]


def test_agent_harnesses_and_fault_injection(server):
    with urllib.request.urlopen(f"{server.url}/api/agent-harnesses") as resp:
        assert json.load(resp) == {"standardEnvVars": [], "harnesses": {}}
    server.faults.append(lambda method, path: 503 if path.startswith("/api/models/") else None)
    try:
        with pytest.raises(HfHubHTTPError) as exc:
            HfApi(endpoint=server.url, token=False).model_info("alice/model")
        assert exc.value.response.status_code == 503 and exc.value.response.headers["X-Error-Code"]
    finally:
        server.faults.clear()


def test_a_gradio_space_is_created_uploaded_and_downloaded(server, tmp_path):
    api = HfApi(endpoint=server.url, token=ALICE)
    url = api.create_repo("alice/space", repo_type="space", space_sdk="gradio")
    assert str(url) == f"{server.url}/spaces/alice/space"
    files = {"app.py": b"import gradio\n", "pkg/mod.py": b"x = 1\n", "README.md": b"---\nsdk: gradio\n---\n"}
    operations = [CommitOperationAdd(path, data) for path, data in files.items()]
    commit = api.create_commit("alice/space", operations=operations, commit_message="one", repo_type="space")
    assert commit.commit_url.startswith(f"{server.url}/spaces/alice/space/commit/")
    info = api.space_info("alice/space")
    assert info.sdk == "gradio" and info.sha == commit.oid
    assert "alice/space" in server.list_repos("space") and "alice/space" not in server.list_repos()
    folder = snapshot_download("alice/space", repo_type="space", local_dir=tmp_path / "s", endpoint=server.url)
    downloaded = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in Path(folder).rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }
    attributes = server.read_file("alice/space", ".gitattributes", repo_type="space")
    assert downloaded == {**files, ".gitattributes": attributes}
