"""The Hub round trip, through the real huggingface_hub client and the local Hub server."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants, snapshot_download
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import hubmerge
from hubmerge.cli import main
from hubmerge.cli_hints import hint_for
from tests.conftest import TOKENS
from tests.factory import LLAMA_ID, input_ids, make_adapter, reference_logits, tiny_llama

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def seed_adapter(server, repo_id: str, directory: Path, *, subfolder: str = "", owner="alice", **repo) -> str:
    if repo_id not in server.list_repos():
        server.create_repo(repo_id, owner_token=TOKENS[owner], **repo)
    prefix = f"{subfolder}/" if subfolder else ""
    files = {f"{prefix}{name}": (directory / name).read_bytes() for name in ADAPTER_FILES}
    return server.commit_files(repo_id, files, message=f"add adapter {directory.name}")


@pytest.fixture(scope="session")
def base_repo(hub_server):
    """The tiny Llama every factory adapter names as its base, as a Hub repo."""
    folder = Path(hub_server.root) / "_base_model"
    tiny_llama().save_pretrained(folder)
    if LLAMA_ID not in hub_server.list_repos():
        hub_server.create_repo(LLAMA_ID, owner_token=TOKENS["alice"])
        hub_server.commit_files(LLAMA_ID, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
    return LLAMA_ID


@pytest.fixture
def two_repos(hub, base_repo, tmp_path):
    """alice/a-…: an adapter at the root; alice/b-…: an adapter in sub/, tagged v1, then changed on main."""
    a = make_adapter(tmp_path / "src-a", seed=1)
    b = make_adapter(tmp_path / "src-b", seed=2, r=2)
    later = make_adapter(tmp_path / "src-b-later", seed=3)
    repo_a, repo_b = f"alice/{unique('a')}", f"alice/{unique('b')}"
    sha_a = seed_adapter(hub, repo_a, a)
    sha_b = seed_adapter(hub, repo_b, b, subfolder="sub")
    hub.create_tag(repo_b, "v1")
    seed_adapter(hub, repo_b, later, subfolder="sub")  # main moves on; v1 must still be used
    return {"a": (repo_a, a, sha_a), "b": (repo_b, b, sha_b)}


def test_push_round_trip(capsys, hub, two_repos, tmp_path):
    (repo_a, dir_a, sha_a), (repo_b, dir_b, sha_b) = two_repos["a"], two_repos["b"]
    target = f"alice/{unique('merged')}"
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", target)
    assert code == 0, err
    assert f"pushed to {constants.ENDPOINT}/{target}" in out
    commits = hub.list_commits(target)
    assert len(commits) == 2, "the initial commit, then everything in one commit"
    assert sorted(commits[0]["files"]) == [
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
        "hubmerge_recipe.json", "hubmerge_report.json", "similarity.png",
    ]  # fmt: skip

    pushed = Path(snapshot_download(target))
    base = AutoModelForCausalLM.from_pretrained(snapshot_download(LLAMA_ID))
    with torch.no_grad():
        merged = PeftModel.from_pretrained(base, str(pushed))(input_ids()).logits
    torch.testing.assert_close(merged, reference_logits("llama", [(dir_a, 1.0), (dir_b, 1.0)]), atol=2e-5, rtol=1e-5)

    card = ModelCard.load(pushed / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == LLAMA_ID
    recipe = json.loads((pushed / "hubmerge_recipe.json").read_text())
    assert [s["revision"] for s in recipe["sources"]] == [sha_a, sha_b]
    assert [s["source"] for s in recipe["sources"]] == [f"{repo_a}@{sha_a}", f"{repo_b}/sub@{sha_b}"]
    assert sha_a in card.text and sha_b in card.text
    assert recipe["command"] in card.text

    code, _, err = cli(capsys, "--recipe", pushed / "hubmerge_recipe.json", "-o", tmp_path / "again")
    assert code == 0, err
    again = load_file(tmp_path / "again" / "adapter_model.safetensors")
    original = load_file(pushed / "adapter_model.safetensors")
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in again)


def test_default_repo_name_comes_from_whoami_and_existing_repo_keeps_its_files(capsys, hub, two_repos):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    name = f"{repo_a.split('/')[1]}-sub-merged"
    hub.create_repo(f"alice/{name}", owner_token=TOKENS["alice"])
    hub.commit_files(f"alice/{name}", {"notes.txt": b"keep me"})
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push")
    assert code == 0, err
    assert f"alice/{name}" in out
    assert hub.read_file(f"alice/{name}", "notes.txt") == b"keep me"
    assert hub.read_file(f"alice/{name}", "adapter_config.json")
    # The serving commands name where the adapter went, as the card does, not a placeholder.
    assert f"--lora-adapters alice/{name}\n" in out and "ADAPTER" not in out


def test_create_pr_leaves_main_alone(capsys, hub, two_repos):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    target = f"alice/{unique('pr')}"
    hub.create_repo(target, owner_token=TOKENS["alice"])
    before = hub.list_commits(target)
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", target, "--create-pr", "--commit-message", "hi")
    assert code == 0, err
    assert f"pull request: {constants.ENDPOINT}/{target}/discussions/1" in out
    assert hub.list_commits(target) == before
    assert "refs/pr/1" in hub.refs(target)


def test_dry_run_pushes_nothing(capsys, hub, two_repos):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    repos = set(hub.list_repos())
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", "--dry-run")
    assert code == 0, err
    assert "dry run: would push to alice/" in out
    for name in ("README.md", "adapter_model.safetensors", "hubmerge_recipe.json", "similarity.png"):
        assert name in out
    assert "library_name: peft" in out, "the card is printed"
    assert "ADAPTER" not in out, "the serving commands name the repo it would push to"
    assert "note:" not in out + err, "logged in: nothing stands in the way of the real push"
    assert set(hub.list_repos()) == repos


@pytest.fixture
def error_repos(hub, base_repo, tmp_path):
    adapter = make_adapter(tmp_path / "src", seed=1)
    good = f"alice/{unique('good')}"
    seed_adapter(hub, good, adapter)
    private = f"bob/{unique('private')}"
    seed_adapter(hub, private, adapter, owner="bob", private=True)
    gated = f"bob/{unique('gated')}"
    seed_adapter(hub, gated, adapter, owner="bob", gated=True)
    empty = f"alice/{unique('empty')}"
    hub.create_repo(empty, owner_token=TOKENS["alice"])
    hub.commit_files(empty, {"README.md": b"# nothing here"})
    nested = f"alice/{unique('nested')}"
    seed_adapter(hub, nested, adapter, subfolder="adapters/math")
    model = f"alice/{unique('model')}"  # a full model where an adapter was meant
    hub.create_repo(model, owner_token=TOKENS["alice"])
    hub.commit_files(model, {"config.json": b"{}", "model.safetensors": b"weights", "README.md": b"# a model"})
    return {"good": good, "private": private, "gated": gated, "empty": empty, "nested": nested, "model": model}


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ["not found", "check the name"]),
        ("private", ["not found", "private", "hf auth login"]),
        ("gated", ["gated", "request access"]),
        ("revision", ["revision 'no-such-branch' not found", "branch, tag or commit"]),
        ("empty", ["no adapter_config.json anywhere in", "holds no PEFT adapter"]),
        (
            "model",
            [
                "looks like a full model, not a PEFT adapter",
                "config.json and model weights (model.safetensors)",
                "give a PEFT LoRA adapter instead",
            ],
        ),
        ("nested", ["no adapter_config.json", "adapters/math"]),
        ("no-write", ["no write access", "bob/"]),
    ],
)
def test_hub_errors_are_one_line_and_create_nothing(capsys, hub, error_repos, monkeypatch, case, needles):
    good = error_repos["good"]
    target = f"alice/{unique('never')}"
    bad = {
        "missing": f"alice/{unique('missing')}",
        "private": error_repos["private"],
        "gated": error_repos["gated"],
        "revision": f"{good}@no-such-branch",
        "empty": error_repos["empty"],
        "nested": error_repos["nested"],
        "model": error_repos["model"],
        "no-write": good,
    }[case]
    push = ["--push", target]
    if case == "private":
        monkeypatch.delenv("HF_TOKEN")
        push = ["--report-only"]  # anonymous: a push would stop first, for want of a token
    if case == "no-write":
        target = f"bob/{unique('target')}"
        push = ["--push", target]
    repos = set(hub.list_repos())
    commits = {r: len(hub.list_commits(r)) for r in repos}
    code, out, err = cli(capsys, good, bad, *push)
    assert code == 1
    message = err.strip()
    assert message.count("\n") == 0, message
    assert message.startswith("hubmerge: error:")
    assert bad.split("@")[0].split("/")[1] in message or target in message
    for needle in needles:
        assert needle in message, (needle, message)
    if case in ("empty", "model"):
        assert message.count("adapter_config.json") == 1, "said once: " + message
    assert set(hub.list_repos()) == repos, "no repo created"
    assert {r: len(hub.list_commits(r)) for r in repos} == commits, "no commit created"


def test_gated_repo_works_once_access_is_granted(capsys, hub, error_repos):
    hub.grant_access(error_repos["gated"], "alice")
    code, _, err = cli(capsys, error_repos["good"], error_repos["gated"], "--report-only")
    assert code == 0, err


def test_token_appears_nowhere(capsys, caplog, hub, two_repos, tmp_path):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    token = TOKENS["alice"]
    target = f"alice/{unique('secret')}"
    outputs = []
    for args in (
        [repo_a, f"{repo_b}/sub@v1", "--push", target, "-o", tmp_path / "local", "--token", token],
        [repo_a, f"{repo_b}/sub@v1", "--push", "--dry-run", "--json"],
        [repo_a, f"{repo_b}/sub@v1", "--push", f"bob/{unique('refused')}"],
        [repo_a, f"{repo_b}/sub@nope", "--report-only"],
    ):
        outputs.append(cli(capsys, *args))
    text = "\n".join(out + err for _, out, err in outputs) + caplog.text
    assert outputs[0][0] == 0 and outputs[1][0] == 0 and outputs[2][0] == 1 and outputs[3][0] == 1
    assert token not in text
    assert token[3:20] not in text, "not even a fragment"
    for path in (tmp_path / "local").iterdir():
        assert token.encode() not in path.read_bytes(), path
    pushed = Path(snapshot_download(target))
    for path in pushed.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_offline_from_a_warm_cache(capsys, hub, two_repos, monkeypatch, tmp_path):
    (repo_a, _, sha_a), (repo_b, _, sha_b) = two_repos["a"], two_repos["b"]
    code, _, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--report-only")
    assert code == 0, err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests_before = len(hub.requests)
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "-o", tmp_path / "offline", "--json")
    assert code == 0, err
    assert len(hub.requests) == requests_before, "offline means no request at all"
    report = json.loads(out)
    assert [s["commit_sha"] for s in report["sources"]] == [sha_a, sha_b]
    assert report["base_model"]["resolved"] is False
    code, _, err = cli(capsys, repo_a, f"alice/{unique('cold')}", "--report-only")
    assert code == 1 and "HF_HUB_OFFLINE" in err and "cache" in err


def test_base_model_aliases_resolve_on_the_hub(hub, base_repo, tmp_path, monkeypatch):
    hub.add_redirect("tiny-llama-old-name", LLAMA_ID)
    a = make_adapter(tmp_path / "a", seed=1)
    b = make_adapter(tmp_path / "b", seed=2)
    config = json.loads((b / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny-llama-old-name"
    (b / "adapter_config.json").write_text(json.dumps(config))
    result = hubmerge.merge([a, b], report_only=True)
    assert result.to_dict()["base_model"]["resolved"] is True
    assert result.to_dict()["base_model"]["canonical"] == LLAMA_ID

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hubmerge.IncompatibleAdaptersError, match="tiny-llama-old-name"):
        hubmerge.merge([a, b], report_only=True)


def test_pickle_only_hub_adapter_is_refused_before_download(capsys, hub, base_repo, tmp_path):
    adapter = make_adapter(tmp_path / "src", seed=1)
    repo = f"alice/{unique('pickled')}"
    hub.create_repo(repo, owner_token=TOKENS["alice"])
    tensors = load_file(adapter / "adapter_model.safetensors")
    torch.save(tensors, tmp_path / "adapter_model.bin")
    hub.commit_files(
        repo,
        {"adapter_config.json": (adapter / "adapter_config.json").read_bytes(),
         "adapter_model.bin": (tmp_path / "adapter_model.bin").read_bytes()},
    )  # fmt: skip
    before = len(hub.requests)
    code, _, err = cli(capsys, repo, "--report-only")
    assert code == 1 and "pickle" in err and "--allow-pickle" in err
    assert not [r for r in hub.requests[before:] if "adapter_model.bin" in r[1]], "the pickle was not fetched"
    code, _, err = cli(capsys, repo, "--report-only", "--allow-pickle")
    assert code == 0, err


def test_private_push_and_commit_message(capsys, hub, two_repos):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    target = f"alice/{unique('private')}"
    code, _, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", target, "--private", "--commit-message", "hello")
    assert code == 0, err
    assert hub.list_commits(target)[0]["title"] == "hello"
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(target, token=False)


def test_failing_card_creates_no_repo(hub, two_repos, monkeypatch):
    import hubmerge.card

    def broken(*args, **kwargs):
        raise RuntimeError("card renderer failed")

    monkeypatch.setattr(hubmerge.card, "card_text", broken)  # what save_pretrained and a push render
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    result = hubmerge.merge([repo_a, f"{repo_b}/sub@v1"])
    repos = set(hub.list_repos())
    with pytest.raises(RuntimeError, match="card renderer failed"):
        result.push_to_hub(f"alice/{unique('never')}")
    assert set(hub.list_repos()) == repos


def test_download_and_count_limits_stop_before_downloading(hub, two_repos):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    before = len(hub.requests)
    with pytest.raises(hubmerge.LimitExceededError, match="bytes allowed") as info:
        hubmerge.merge([repo_a, f"{repo_b}/sub@v1"], max_download_bytes=1000)
    assert repo_a in str(info.value)
    assert not [r for r in hub.requests[before:] if "/resolve/" in r[1]], "nothing was downloaded"
    with pytest.raises(hubmerge.LimitExceededError, match="at most 1"):
        hubmerge.merge([repo_a, f"{repo_b}/sub@v1"], max_adapters=1)
    result = hubmerge.merge([repo_a, f"{repo_b}/sub@v1"], max_download_bytes=10**6, report_only=True)
    assert result.to_dict()["sources"][1]["commit_sha"]


def test_push_that_would_swallow_a_source_is_refused(capsys, hub, two_repos):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    repos = set(hub.list_repos())
    commits = len(hub.list_commits(repo_a))
    # "--push" before the sources takes the first source as the target
    code, _, err = cli(capsys, "--push", repo_a, f"{repo_b}/sub@v1")
    assert code == 2 and "--push=REPO_ID" in err
    code, _, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", repo_a)
    assert code == 2 and "is also a source" in err
    code, _, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", "alice/bad name")
    assert code == 2 and "not a valid repo id" in err
    assert set(hub.list_repos()) == repos and len(hub.list_commits(repo_a)) == commits


@pytest.mark.parametrize(
    ("token", "reason", "words"),
    [(None, "not_logged_in", "not logged in"), ("hf_notAtokenTHEhubKNOWS0123456789", "token_rejected", "rejected")],
)
def test_a_push_without_a_valid_token_says_so_not_that_the_token_cannot_write(
    hub, two_repos, monkeypatch, token, reason, words
):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    result = hubmerge.merge([repo_a, f"{repo_b}/sub@v1"])
    monkeypatch.delenv("HF_TOKEN")
    repos = set(hub.list_repos())
    target = f"alice/{unique('anonymous')}"
    with pytest.raises(hubmerge.PushError) as caught:
        result.push_to_hub(target, token=token)
    message = str(caught.value)
    assert caught.value.reason == reason and words in message and target in message
    assert "no write access" not in message
    assert "hf auth login" in hint_for(caught.value) and "full repo id" not in hint_for(caught.value)
    assert set(hub.list_repos()) == repos


@pytest.mark.parametrize("target", [[], ["alice/never-pushed"]])
def test_push_without_a_token_stops_before_anything_is_downloaded(capsys, hub, two_repos, monkeypatch, target):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    monkeypatch.delenv("HF_TOKEN")
    before = len(hub.requests)
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", *target)
    assert code == 1 and out == ""
    assert err.strip() == (
        "hubmerge: error: not logged in: no Hub token is set, and a push needs one; "
        "run `hf auth login`, set HF_TOKEN, or pass --token"
    )
    assert hub.requests[before:] == [], "no request: not a source resolved, not a byte downloaded"
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", *target, "--dry-run")
    assert code == 0, "a dry run needs no token"
    assert f"dry run: would push to {target[0] if target else '<your-username>/'}" in out
    # ...but says, last, that the real push needs one, and how to give it
    assert out.rstrip().splitlines()[-1] == (
        "note: not logged in: no Hub token is set, and a push needs one; "
        "run `hf auth login`, set HF_TOKEN, or pass --token"
    )
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", *target, "--dry-run", "--json")
    assert code == 0 and json.loads(out)["push"]["dry_run"] is True
    assert "note: not logged in" in err and "--token" in err


def test_private_never_flips_an_existing_public_repo(capsys, hub, two_repos):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    target = f"alice/{unique('public')}"
    hub.create_repo(target, owner_token=TOKENS["alice"])
    before = hub.list_commits(target)
    code, _, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", target, "--private")
    assert code == 1 and "is public" in err
    assert hub.list_commits(target) == before


def test_failed_commit_leaves_no_new_repo(capsys, hub, two_repos):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    target = f"alice/{unique('flaky')}"

    def refuse_commits(method, path):
        return 500 if method == "POST" and "/commit/" in path else None

    hub.faults.append(refuse_commits)
    try:
        code, _, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", target)
    finally:
        hub.faults.remove(refuse_commits)
    assert code == 1 and f"cannot commit to {target}" in err and "HTTP 500" in err
    assert target not in hub.list_repos(), "the repo created for the push was removed again"


def test_pushing_unchanged_content_says_no_commit_was_made(capsys, hub, two_repos):
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    target = f"alice/{unique('twice')}"
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", target, "--json")
    assert code == 0, err
    first = json.loads(out)["push"]
    assert first["created_repo"] is True and first["changed"] is True
    assert f"created and pushed to {constants.ENDPOINT}/{target}" in err
    commits = len(hub.list_commits(target))
    code, out, err = cli(capsys, repo_a, f"{repo_b}/sub@v1", "--push", target)
    assert code == 0, err
    assert "already holds exactly these files: no commit was made" in out
    assert "/commit/" not in out
    assert len(hub.list_commits(target)) == commits


def test_the_installed_command_pushes_everything_before_its_process_ends(hub, two_repos):
    """`python -m hubmerge … --push` (the command's own exit, without Python's teardown) has made its one commit
    with every file by the time the process is gone, and says so; `--no-figure` leaves the heatmap out of the
    push as it does out of the dry run and a local save."""
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    target = f"alice/{unique('merged')}"
    command = [sys.executable, "-m", "hubmerge", repo_a, f"{repo_b}/sub@v1", "--push", target, "--no-figure"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"pushed to {constants.ENDPOINT}/{target}" in done.stdout
    commits = hub.list_commits(target)
    assert len(commits) == 2 and sorted(commits[0]["files"]) == [
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
        "hubmerge_recipe.json", "hubmerge_report.json",
    ]  # fmt: skip
    # --no-figure: no heatmap pushed, and the card does not link one (as the dry run lists it)
    assert "similarity.png" not in (Path(snapshot_download(target)) / "README.md").read_text()


BAD_TOKEN = "hf_notAtokenTHEhubKNOWS0123456789"


def test_a_rejected_token_from_the_token_flag_is_that_values_to_check(capsys, hub, two_repos, tmp_path, monkeypatch):
    """With --token, the next step is the value given (a login would not change what --token sends); a token from
    HF_TOKEN or `hf auth login` keeps the login's. Downloading with a rejected token is not "try again later"."""
    (repo_a, _, _), (repo_b, _, _) = two_repos["a"], two_repos["b"]
    local = make_adapter(tmp_path / "local", seed=4)
    check_value = "check the --token value, or leave it out to use your `hf auth login` token"
    runs = {
        "download": [repo_a, f"{repo_b}/sub@v1", "--report-only", "--token", BAD_TOKEN],
        "push": [local, "--push", f"alice/{unique('never')}", "--token", BAD_TOKEN],
    }
    for name, args in runs.items():
        code, out, err = cli(capsys, *args)
        assert code == 1 and out == "" and err.count("\n") == 1, (name, err)
        assert "rejected the token" in err and err.rstrip().endswith(f"; {check_value}"), (name, err)
        assert "try again" not in err and "log in again" not in err, (name, err)
        assert BAD_TOKEN not in err and BAD_TOKEN[3:20] not in err
    code, out, _ = cli(capsys, local, "--push", "--dry-run", "--token", BAD_TOKEN)
    assert code == 0 and out.rstrip().endswith(f"; {check_value}") and "note: the Hub rejected the token" in out
    monkeypatch.setenv("HF_TOKEN", BAD_TOKEN)  # the same token from the environment: the login's hint stays
    code, _, err = cli(capsys, repo_a, "--report-only")
    assert code == 1 and err.rstrip().endswith("; log in again with `hf auth login`"), err
    assert BAD_TOKEN not in err
