"""The Space's handlers (spaces/handlers.py) called directly, against the local Hub server.

The page itself is driven by tests/test_space_browser.py and tests/test_space_deploy.py; here each handler
is a function: references and weights in, what the page shows out. ``app.py`` is loaded too, for what only
the page decides (which token a request gets, the layout, the limits it was built with).
"""

from __future__ import annotations

import html
import importlib.util
import io
import json
import math
import re
import sys
import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from peft import PeftModel
from safetensors.torch import load_file

import hubmerge
from tests.conftest import HUB_URL, TOKENS
from tests.factory import input_ids, make_adapter, reference_logits, tiny_llama
from tests.test_hub import base_repo, seed_adapter, unique  # noqa: F401 - base_repo is a fixture

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces"
MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio's local sign-in mock hands handlers
CLI_FLAG = re.compile(r"(?<![\w-])--?[a-z][a-z-]+\b|`hf |HF_TOKEN|local directory")
# Python's names for what the page offers differently, or not at all: hubmerge.merge()'s keyword arguments.
PYTHON_ARGUMENT = re.compile(r"\b(allow_pickle|allow_base_mismatch|max_adapters|max_download_bytes|report_only)\b")
PUSHED_FILES = [
    "README.md", "adapter_config.json", "adapter_model.safetensors",
    "hubmerge_recipe.json", "hubmerge_report.json", "similarity.png",
]  # fmt: skip

sys.path.insert(0, str(SPACE))  # the Space's modules import each other as top-level modules, as on a Space
import handlers  # noqa: E402
import messages  # noqa: E402
from handlers import Limits  # noqa: E402
from messages import SpaceError  # noqa: E402


def load_app():
    """spaces/app.py as a module (it is a Space's entry point, not part of a package)."""
    spec = importlib.util.spec_from_file_location("hubmerge_space_app", SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def repos(hub_server, tmp_path_factory, request):
    """Adapters on the local Hub: two compatible (b in a subfolder), one for another base, one private to bob."""
    request.getfixturevalue("base_repo")  # the tiny Llama they name, so the base model resolves on the Hub
    folder = tmp_path_factory.mktemp("space-adapters")
    dirs = {
        "a": make_adapter(folder / "a", seed=1),
        "b": make_adapter(folder / "b", seed=2, r=2),
        "gpt2": make_adapter(folder / "gpt2", base="gpt2", seed=3),
    }
    refs = {"a": f"alice/{unique('space-a')}", "b": f"alice/{unique('space-b')}", "gpt2": f"alice/{unique('gpt')}"}
    seed_adapter(hub_server, refs["a"], dirs["a"])
    seed_adapter(hub_server, refs["b"], dirs["b"], subfolder="sub")
    refs["b"] += "/sub"
    seed_adapter(hub_server, refs["gpt2"], dirs["gpt2"])
    refs["bob_private"] = f"bob/{unique('private')}"
    seed_adapter(hub_server, refs["bob_private"], dirs["a"], owner="bob", private=True)
    refs["pickle"] = f"alice/{unique('pickle')}"
    hub_server.create_repo(refs["pickle"], owner_token=TOKENS["alice"])
    hub_server.commit_files(
        refs["pickle"],
        {"adapter_config.json": (dirs["a"] / "adapter_config.json").read_bytes(), "adapter_model.bin": b"\x80\x04."},
    )
    return {"refs": refs, "dirs": dirs}


def on_space(monkeypatch, *, space_token: str | None = None) -> None:
    """Behave as on a Space (what gradio.utils.get_space checks); ``space_token`` is the Space's HF_TOKEN secret."""
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "hubmerge/hubmerge")
    if space_token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", space_token)


def oauth(user: str) -> gr.OAuthToken:
    """The token Gradio hands a handler for a visitor signed in on a Space."""
    return gr.OAuthToken(token=TOKENS[user], scope="openid profile read-repos write-repos manage-repos", expires_at=0)


def dense_rms_cosine(dir_a: Path, dir_b: Path) -> float:
    """The RMS cosine of two adapters' dense deltas s·B·A over their shared modules: an independent reference."""

    def deltas(directory: Path) -> dict[str, torch.Tensor]:
        config = json.loads((directory / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / config["r"]
        tensors = load_file(directory / "adapter_model.safetensors")
        return {
            key.removesuffix(".lora_A.weight"): scale
            * tensors[key.replace("lora_A", "lora_B")].double()
            @ tensors[key].double()
            for key in tensors
            if key.endswith(".lora_A.weight")
        }

    first, second = deltas(dir_a), deltas(dir_b)
    cosines = [
        float((first[k] * second[k]).sum() / (first[k].norm() * second[k].norm())) for k in first.keys() & second.keys()
    ]
    return math.sqrt(sum(c * c for c in cosines) / len(cosines))


def test_analyse_compatible_pair(hub, repos):
    refs, dirs = repos["refs"], repos["dirs"]
    result = handlers.analyse([refs["a"], refs["b"], ""], [1.0, 0.5, 1.0], "sum")
    assert "✓ Compatible: these 2 adapters can be merged exactly (method sum)" in result.verdict
    assert f"[{refs['b']}]" in result.verdict, "each source is listed, linked as in the card"
    assert result.heatmap.size == (700, 600)
    names = list(result.matrix.columns[1:])
    assert names == [refs["a"].split("/")[1], "sub"]
    assert [row[0] for row in result.matrix.values] == names
    cells = result.matrix.iloc[:, 1:].values  # column 0 names the row
    assert cells[0, 0] == cells[1, 1] == "1" and cells[0, 1] == cells[1, 0]
    expected = dense_rms_cosine(dirs["a"], dirs["b"])
    assert float(cells[0, 1]) == pytest.approx(expected, rel=1e-3)
    # both adapters adapt q_proj and v_proj of 2 layers
    assert len(result.per_module) == 4
    assert set(result.per_module["adapters"]) == {", ".join(names)}
    assert result.warnings.startswith("### Warnings")
    assert result.default_name == f"{names[0]}-sub-merged"
    assert result.default_name == hubmerge.merge([refs["a"], refs["b"]]).default_repo_name(), "the library's name"


def test_analyse_shows_warnings(hub, repos):
    refs = repos["refs"]
    result = handlers.analyse([refs["a"], refs["a"]], [1.0, 1.0], "sum")
    # one repo twice: the same commit, so one adapter counted twice, not two "probably from the same seed"
    assert "### Warnings (1)" in result.warnings
    assert "are the same files" in result.warnings and "same seed" not in result.warnings
    assert result.matrix.iloc[0, 2] == "1", "an adapter and itself point the same way"


def test_analyse_incompatible_pair_lists_every_problem_without_cli_advice(hub, repos):
    refs = repos["refs"]
    with pytest.raises(hubmerge.IncompatibleAdaptersError) as info:
        hubmerge.merge([refs["a"], refs["gpt2"]], report_only=True)
    problems = [problem.message for problem in info.value.problems]
    assert problems
    result = handlers.analyse([refs["a"], refs["gpt2"]], [1.0, 1.0], "sum")
    assert f"✗ Not compatible: {len(problems)} problem" in result.verdict
    for problem in problems:
        assert html.escape(problem).replace("|", "&#124;") in result.verdict
    assert not CLI_FLAG.search(result.verdict), result.verdict
    assert result.heatmap is None and result.matrix is None and result.per_module is None


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("garbage", "is not an existing directory nor a Hub reference"),
        ("missing", "not found"),
        ("revision", "revision 'no-such-branch' not found"),
        ("path", "is not a Hub reference"),
        ("one", "Give at least two adapters"),
        ("weight", "Give a weight for"),
        ("zero", "is 0, which leaves it out of the merge"),
        ("huge", "Use smaller weights."),
        ("nan", "must be a finite number"),
        ("method", "Unknown merge method"),
        ("pickle", "only reads adapter_model.safetensors"),
        ("rank", "must be a whole number of at least 1"),
    ],
)
def test_bad_input_is_one_readable_line_without_cli_advice(hub, repos, case, needle):
    good = repos["refs"]["a"]
    references, weights, method, extra = {
        "garbage": ([good, "not a reference"], [1, 1], "sum", {}),
        "missing": ([good, f"alice/{unique('missing')}"], [1, 1], "sum", {}),
        "revision": ([good, f"{good}@no-such-branch"], [1, 1], "sum", {}),
        "path": ([good, str(SPACE)], [1, 1], "sum", {}),
        "one": ([good, "", "  "], [1, 1, 1], "sum", {}),
        "weight": ([good, good], [1, None], "sum", {}),
        "zero": ([good, good], [1, 0], "sum", {}),
        "huge": ([good, repos["refs"]["b"]], [1e308, 1], "sum", {}),
        "nan": ([good, good], [1, float("nan")], "sum", {}),
        "method": ([good, good], [1, 1], "frankenmerge", {}),
        "pickle": ([good, repos["refs"]["pickle"]], [1, 1], "sum", {}),
        "rank": ([good, good], [1, 1], "svd", {"rank": 0.5}),
    }[case]
    repos_before = set(hub.list_repos())
    for handler in (handlers.analyse, handlers.merge_and_push):
        with pytest.raises(SpaceError) as info:
            handler(references, weights, method, **extra)
        text = info.value.message
        assert needle in text
        assert "\n" not in text and "Traceback" not in text
        assert not CLI_FLAG.search(text), text
        assert not PYTHON_ARGUMENT.search(text), text
    assert set(hub.list_repos()) == repos_before


def test_cli_advice_is_taken_out_of_every_library_message():
    """The library's messages (until they drop flags) lose the clause with a flag, and keep what is wrong."""
    cases = {
        "bases differ; pass --allow-base-mismatch if they really are the same weights": "bases differ",
        "only adapter_model.bin: Convert it to adapter_model.safetensors, or pass --allow-pickle (allow_pickle=True) "
        "if you trust it": "only adapter_model.bin: Convert it to adapter_model.safetensors",
        "'x' is not a Hub reference; the form is user/repo[/subfolder][@revision] or a path to a local directory": (
            "'x' is not a Hub reference; the form is user/repo[/subfolder][@revision]"
        ),
        "not logged in: run `hf auth login`, set HF_TOKEN, or give --push a full repo id (user/name)": "not logged in",
        "a/b exists and is public; --private does not change an existing repo's visibility: make it private in its "
        "settings first, or push to a new repo": "a/b exists and is public; make it private in its settings first, "
        "or push to a new repo",
        "a (allowed by --allow-base-mismatch)": "a",
        "x: only adapter_model.bin (a pickle) is present; unpickling a file can run arbitrary code, so pickles are "
        "read only where they are allowed (allow_pickle)": "x: only adapter_model.bin (a pickle) is present; "
        "unpickling a file can run arbitrary code, so pickles are read only where they are allowed",
        "keys under base_model.model. and the base_model field stay": "keys under base_model.model. and the "
        "base_model field stay",
        "no advice here: keep it, or not": "no advice here: keep it, or not",
    }
    for text, expected in cases.items():
        assert messages.without_cli_advice(text) == expected
    for name, description in handlers.MERGE_METHODS.items():
        assert not CLI_FLAG.search(description), (name, description)
    assert messages.space_words("truncated to --rank per module") == "truncated to the chosen rank per module"


def test_every_exception_type_has_a_hint_in_the_spaces_words():
    for name in hubmerge.__all__:
        kind = getattr(hubmerge, name)
        if isinstance(kind, type) and issubclass(kind, hubmerge.HubmergeError) and kind is not hubmerge.HubmergeError:
            if kind is hubmerge.OutputExistsError:
                continue  # the Space writes no directory
            if kind is hubmerge.IncompatibleAdaptersError:
                err = kind(["x; pass --allow-base-mismatch if you must", "y"])
            else:
                err = kind("x", limit="max_adapters") if kind is hubmerge.LimitExceededError else kind("x")
            said = messages.explain(err, limits_text="at most 2 adapters").message
            assert said.startswith("x.") or said.endswith(": x · y. " + messages.hint_for(err)), (name, said)
            if kind is not hubmerge.LimitExceededError:  # that one says what this Space allows instead
                assert messages.hint_for(err), f"{name} has no hint of the Space's own"
            assert len(said) > 10 and "\n" not in said
            assert not CLI_FLAG.search(said), (name, said)


def test_signed_out_merge_gives_a_zip_with_what_a_push_uploads(hub, repos, tmp_path):
    refs, dirs = repos["refs"], repos["dirs"]
    repos_before = set(hub.list_repos())
    steps = []
    result = handlers.merge_and_push(
        [refs["a"], refs["b"]], [1.0, 0.5], "sum", repo_name="my-merge", progress=lambda f, d: steps.append((f, d))
    )
    assert set(hub.list_repos()) == repos_before, "signed out, nothing is pushed"
    assert "not signed in" in result.status and "merged exactly" in result.verdict
    assert [d.split()[0] for _, d in steps] == ["Downloading", "Merging", "Writing"]
    assert [f for f, _ in steps] == sorted(f for f, _ in steps)
    with zipfile.ZipFile(result.download) as archive:
        names = sorted(archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    assert Path(result.download).name == "my-merge.zip"
    assert names == [f"my-merge/{name}" for name in PUSHED_FILES]
    card = ModelCard((tmp_path / "unzipped" / "my-merge" / "README.md").read_text())
    assert card.data.library_name == "peft" and "# my-merge" in card.text
    with torch.no_grad():
        merged = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "unzipped" / "my-merge"))(input_ids()).logits
    expected = reference_logits("llama", [(dirs["a"], 1.0), (dirs["b"], 0.5)])
    torch.testing.assert_close(merged, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["svd", "ties"])
def test_inexact_methods_say_so_with_the_kept_energy(hub, repos, method):
    refs = repos["refs"]
    analysed = handlers.analyse([refs["a"], refs["b"]], [1.0, 0.5], method, rank=2)
    assert "can be summed exactly, but method" in analysed.verdict and "merged exactly" not in analysed.verdict
    assert "Merge measures how much of the energy it keeps" in analysed.verdict
    result = handlers.merge_and_push([refs["a"], refs["b"]], [1.0, 0.5], method, rank=2, density=0.5)
    with zipfile.ZipFile(result.download) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("adapter_config.json"))
        report_name = next(n for n in archive.namelist() if n.endswith("hubmerge_report.json"))
        card_name = next(n for n in archive.namelist() if n.endswith("README.md"))
        config = json.loads(archive.read(config_name))
        report = json.loads(archive.read(report_name))
        card = archive.read(card_name).decode()
    kept = report["kept_energy"]["overall"]
    assert config["r"] == 2 and report["method"] == method and report["exact"] is False and 0 < kept < 1
    assert f"merged approximately: method {method} is not exact" in result.verdict
    assert f"it keeps {100 * kept:.2f} %" in result.verdict
    assert f"keeps {100 * kept:.2f}%" in result.verdict and f"keeps {100 * kept:.2f}%" in card, "as the card says"
    assert "merged exactly" not in result.verdict and "not exact" in card


@pytest.mark.parametrize("private", [False, True])
def test_signed_in_push_on_a_space_uses_the_visitors_token(app, hub, repos, monkeypatch, private):
    on_space(monkeypatch)  # no HF_TOKEN at all: only the OAuth token can push
    refs = repos["refs"]
    name = unique("space-merge")
    steps = []
    result = handlers.merge_and_push(
        [refs["a"], refs["b"]], [1.0, 1.0], "sum", repo_name=name, private=private, username="alice",
        token=app.hub_token(oauth("alice")), progress=lambda f, d: steps.append(d),
    )  # fmt: skip
    target = f"alice/{name}"
    assert result.download is None
    assert f"[{target}]({HUB_URL}/{target})" in result.status
    assert f"New {'private' if private else 'public'} repository" in result.status
    assert steps[-1] == f"Pushing to {target}"
    assert sorted(hub.list_commits(target)[0]["files"]) == [".gitattributes", *PUSHED_FILES]
    card = ModelCard(hub.read_file(target, "README.md").decode())
    assert card.data.library_name == "peft"
    assert card.data.base_model == "test-org/tiny-llama"
    if private:
        with pytest.raises(RepositoryNotFoundError):
            HfApi().model_info(target, token=False)
    else:
        assert HfApi().model_info(target, token=False).id == target


def test_pushing_into_an_existing_repo_is_said_before_and_after(hub, repos):
    refs = repos["refs"]
    name = unique("again")
    target = f"alice/{name}"
    token = TOKENS["alice"]
    assert "does not exist yet: Merge & push creates it" in handlers.push_target(name, None, "alice", token)
    first = handlers.merge_and_push([refs["a"], refs["b"]], [1, 1], repo_name=name, username="alice", token=token)
    assert "New public repository" in first.status
    before = handlers.push_target(name, None, "alice", token)
    assert f"**{target}** already exists: Merge & push adds one commit to it" in before
    assert "does not exist" in handlers.push_target("", unique("other"), "alice", token), "the default name"
    assert "Signed out" in handlers.push_target(name, None, None, None)

    commits = len(hub.list_commits(target))
    same = handlers.merge_and_push([refs["a"], refs["b"]], [1, 1], repo_name=name, username="alice", token=token)
    assert len(hub.list_commits(target)) == commits, "identical content: the Hub made no commit"
    assert "already holds this merge" in same.status and "no commit was made" in same.status
    head = hub.refs(target)["refs/heads/main"]
    assert f"/commit/{head})" in same.status and "one commit" not in same.status

    changed = handlers.merge_and_push([refs["a"], refs["b"]], [1, 0.5], repo_name=name, username="alice", token=token)
    new_head = hub.refs(target)["refs/heads/main"]
    assert len(hub.list_commits(target)) == commits + 1
    assert "one commit was added" in changed.status and f"/commit/{new_head})" in changed.status


def test_default_repo_name_and_namespace(hub, repos):
    refs = repos["refs"]
    token = TOKENS["alice"]
    result = handlers.merge_and_push([refs["a"], refs["b"]], [1.0, 1.0], repo_name="  ", username="alice", token=token)
    target = f"alice/{refs['a'].split('/')[1]}-sub-merged"
    assert f"[{target}]" in result.status and target in hub.list_repos()
    with pytest.raises(SpaceError) as info:
        handlers.merge_and_push([refs["a"], refs["b"]], [1, 1], repo_name="bob/mine", username="alice", token=token)
    assert "pushes to your own account" in info.value.message and "alice/mine" in info.value.message
    with pytest.raises(SpaceError) as info:
        handlers.merge_and_push([refs["a"], refs["b"]], [1, 1], repo_name="no spaces", username="alice", token=token)
    assert "is not a valid repo name" in info.value.message
    assert "is not a valid repo name" in handlers.push_target("no spaces", None, "alice", token)


def test_local_sign_in_mock_acts_as_the_machines_login(app, hub, repos):
    """Locally gradio signs the page in as the machine's account but hands handlers a placeholder token."""
    from gradio.oauth import _get_mocked_oauth_info

    info = _get_mocked_oauth_info()
    assert info["access_token"] == MOCK_TOKEN, "gradio changed its mock: see hub_token() in spaces/app.py"
    token = gr.OAuthToken(token=info["access_token"], scope=info["scope"], expires_at=info["expires_at"])
    profile = gr.OAuthProfile(info["userinfo"])
    assert profile.username == "alice"
    name = unique("local")
    result = handlers.merge_and_push(
        [repos["refs"]["a"], repos["refs"]["b"]], [1, 1], repo_name=name, username=profile.username,
        token=app.hub_token(token),
    )  # fmt: skip
    assert f"alice/{name}" in result.status and f"alice/{name}" in hub.list_repos()


def test_the_spaces_own_token_never_acts_for_a_visitor(app, hub, repos, monkeypatch):
    private, good = repos["refs"]["bob_private"], repos["refs"]["a"]
    monkeypatch.setenv("HF_TOKEN", TOKENS["bob"])
    assert "✓ Compatible" in handlers.analyse([good, private], [1, 1], token=app.hub_token(None)).verdict, "locally"
    on_space(monkeypatch, space_token=TOKENS["bob"])  # the Space's secret could read bob's private repo
    with pytest.raises(SpaceError) as info:
        handlers.analyse([good, private], [1, 1], token=app.hub_token(None))
    assert "not found" in info.value.message and "sign in with Hugging Face" in info.value.message
    with pytest.raises(SpaceError) as info:
        handlers.analyse([good, private], [1, 1], "sum", token=app.hub_token(oauth("alice")))
    assert "not found" in info.value.message
    with pytest.raises(SpaceError):
        handlers.analyse_api([good, private])  # the public endpoint is anonymous, whatever the machine has


def test_limits_are_clear_errors_before_any_download(hub, repos):
    refs = repos["refs"]
    before = len(hub.requests)
    with pytest.raises(SpaceError) as info:
        handlers.merge_and_push([refs["a"], refs["b"], refs["a"]], [1, 1, 1], limits=Limits(max_adapters=2))
    assert "3 adapters given; at most 2 can be merged here" in info.value.message
    assert "This Space allows at most 2 adapters per merge" in info.value.message
    with pytest.raises(SpaceError) as info:
        handlers.analyse([refs["a"], refs["b"]], [1, 1], limits=Limits(max_download_bytes=1000))
    assert "more than the 1,000 bytes allowed" in info.value.message
    assert info.value.title == "Over the limit"
    assert not [r for r in hub.requests[before:] if "/resolve/" in r[1]], "nothing was downloaded"


def test_an_unexpected_failure_is_a_short_message_and_a_logged_traceback(hub, repos, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("internal detail the visitor should not see")

    monkeypatch.setattr(handlers.hubmerge, "merge", broken)
    with pytest.raises(SpaceError) as info:
        handlers.analyse([repos["refs"]["a"], repos["refs"]["b"]], [1, 1])
    assert info.value.message.startswith("Something went wrong on our side (RuntimeError)")
    assert "internal detail" not in info.value.message
    assert "internal detail" in caplog.text, "the traceback is in the server log"


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("HUBMERGE_SPACE_MAX_ADAPTERS", "3")
    monkeypatch.setenv("HUBMERGE_SPACE_MAX_DOWNLOAD_MB", "5")
    assert Limits.from_env() == Limits(max_adapters=3, max_download_bytes=5 * 1024**2)
    monkeypatch.setenv("HUBMERGE_SPACE_MAX_ADAPTERS", "1")
    with pytest.raises(ValueError, match="HUBMERGE_SPACE_MAX_ADAPTERS"):
        Limits.from_env()


def test_the_public_analyse_endpoint_returns_the_report(hub, repos):
    refs = repos["refs"]
    answer = handlers.analyse_api([refs["a"], refs["b"]], [1, 0.5])
    assert answer["compatible"] is True and answer["problems"] == []
    expected = hubmerge.merge([refs["a"], refs["b"]], weights=[1, 0.5], report_only=True).to_dict()
    assert answer["report"]["similarity"]["rms_cosine"] == expected["similarity"]["rms_cosine"]
    json.dumps(answer)  # what the API sends must be JSON
    incompatible = handlers.analyse_api([refs["a"], refs["gpt2"]])
    assert incompatible["compatible"] is False and incompatible["problems"]


def test_tokens_appear_in_no_returned_value(app, hub, repos, monkeypatch, capsys, caplog):
    refs = repos["refs"]
    on_space(monkeypatch, space_token=TOKENS["bob"])
    token = app.hub_token(oauth("alice"))
    returned = [
        handlers.analyse([refs["a"], refs["b"]], [1, 1], "sum", token=token),
        handlers.merge_and_push(
            [refs["a"], refs["b"]], [1, 1], repo_name=unique("secret"), private=True, username="alice", token=token
        ),
        handlers.merge_and_push([refs["a"], refs["b"]], [1, 1], token=app.hub_token(None)),
    ]
    errors = []
    for args in (([refs["a"], refs["bob_private"]], [1, 1]), ([refs["a"], f"{refs['a']}@nope"], [1, 1])):
        with pytest.raises(SpaceError) as info:
            handlers.analyse(*args, token=token)
        errors.append(info.value.message)
    with pytest.raises(SpaceError) as info:
        handlers.merge_and_push([refs["a"], refs["b"]], [1, 1], repo_name="bob/x", username="alice", token=token)
    errors.append(info.value.message)
    errors.append(handlers.push_target("x", None, "alice", token))

    blobs = [text.encode() for text in errors]
    for value in returned:
        for field in value:
            if field is None:
                continue
            if hasattr(field, "to_csv"):
                blobs.append(field.to_csv().encode())
            elif hasattr(field, "tobytes"):
                blobs.append(field.tobytes())
            else:
                blobs.append(str(field).encode())
                if isinstance(field, str) and field.endswith(".zip"):
                    blobs.append(Path(field).read_bytes())
                    with zipfile.ZipFile(field) as archive:
                        blobs.extend(archive.read(name) for name in archive.namelist())
    out, err = capsys.readouterr()
    blobs.append((out + err + caplog.text).encode())
    blobs.append(repr(vars(app)).encode() + repr(vars(handlers)).encode())  # no module-level state kept a token
    for secret in (TOKENS["alice"], TOKENS["bob"]):
        for blob in blobs:
            assert secret.encode() not in blob
            assert secret[3:20].encode() not in blob, "not even a fragment"


def test_the_page_builds_with_sign_in_one_method_list_and_the_limits_given(app, hub):
    demo = app.build_demo(limits=Limits(max_adapters=3))
    blocks = list(demo.blocks.values())
    assert any(isinstance(b, gr.LoginButton) for b in blocks)
    (dropdown,) = [b for b in blocks if isinstance(b, gr.Dropdown)]
    assert [value for _, value in dropdown.choices] == list(handlers.MERGE_METHODS)
    assert not [label for label, _ in dropdown.choices if CLI_FLAG.search(label)]
    # (Gradio's LoginButton adds its own "_check_login_status")
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public" and fn.api_name[0] != "_"}
    assert public == {"analyse"}, "Analyse is the one public endpoint; the rest is the page's"
    (endpoint,) = [fn for fn in demo.fns.values() if fn.api_name == "analyse"]
    assert len(endpoint.inputs) == 3 and len(endpoint.outputs) == 1, "adapters, weights, method -> the answer"
    assert demo._queue is not None and demo._queue.max_size == 32
    textboxes = [b.label for b in blocks if isinstance(b, gr.Textbox)]
    assert [label for label in textboxes if label.startswith("Adapter ")] == ["Adapter 1", "Adapter 2", "Adapter 3"]
    markdown = " ".join(str(b.value) for b in blocks if isinstance(b, gr.Markdown))
    assert "at most 3 adapters per merge" in markdown
    examples = [{"label": "math + medicine", "adapters": ["u/a", "u/b"], "weights": [1, 1], "method": "sum"}]
    with_examples = app.build_demo(sign_in=False, examples=examples)
    buttons = [b.value for b in with_examples.blocks.values() if isinstance(b, gr.Button)]
    assert "Example: math + medicine" in buttons
    assert not any(isinstance(b, gr.LoginButton) for b in with_examples.blocks.values())
    assert isinstance(app.demo, gr.Blocks), "gradio's reload mode reads the module-level demo"


@pytest.mark.parametrize(
    ("login", "button", "said"),
    [
        (None, False, "no Hugging Face login on this machine"),
        ("hf_unknownTOKENmarker0123456789", False, "sign-in mock could not read the account (HfHubHTTPError"),
        ("alice", True, None),
    ],
)
def test_a_local_run_signs_in_only_with_a_usable_login(app, hub, monkeypatch, capsys, login, button, said):
    if login is None:
        monkeypatch.delenv("HF_TOKEN")
    else:
        monkeypatch.setenv("HF_TOKEN", TOKENS.get(login, login))
    demo = app.make_demo(Limits())
    assert any(isinstance(b, gr.LoginButton) for b in demo.blocks.values()) is button
    err = capsys.readouterr().err
    if said:
        assert said in err and "Merge & push offers a zip" in err
        assert "TOKENmarker" not in err
    else:
        assert "hubmerge Space" not in err


def test_heatmap_is_the_png_hubmerge_renders(hub, repos):
    from PIL import Image

    from hubmerge.figures import render_heatmap

    refs = repos["refs"]
    result = handlers.analyse([refs["a"], refs["b"]], [1, 1])
    report = hubmerge.merge([refs["a"], refs["b"]], report_only=True)
    expected = render_heatmap(report.similarity)
    assert result.heatmap.tobytes() == Image.open(io.BytesIO(expected)).tobytes()


def test_the_form_reads_an_empty_rank_as_the_methods_default():
    # gr.Number(precision=0) sends 0 for an empty box
    assert handlers.read_form(["a/b", "c/d"], [1, 1], "svd", 0, 0.5).rank is None
    assert handlers.read_form(["a/b", "c/d"], [1, 1], "svd", None, 0.5).rank is None
    assert handlers.read_form(["a/b", "c/d"], [1, -2.5], "svd", 3, 0.25) == handlers.Form(
        [hubmerge.parse_source("a/b"), hubmerge.parse_source("c/d")], [1.0, -2.5], "svd", 3, 0.25
    )
    for rank, density in ((-1, 0.5), (2.5, 0.5), (2, 0), (2, 1.5), (2, float("nan"))):
        with pytest.raises(SpaceError):
            handlers.read_form(["a/b", "c/d"], [1, 1], "svd", rank, density)
