"""The Space (spaces/app.py): its handlers called directly, against the local Hub server.

The page itself is driven by tests/test_space_browser.py; here each handler is
a function: references and weights in, what the page shows out.
"""

from __future__ import annotations

import html
import importlib.util
import io
import json
import math
import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from packaging.version import Version
from peft import PeftModel
from safetensors.torch import load_file

import hubmerge
from tests.conftest import HUB_URL, TOKENS
from tests.factory import input_ids, make_adapter, reference_logits, tiny_llama
from tests.test_hub import base_repo, seed_adapter, unique  # noqa: F401 - base_repo is a fixture

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces"
MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio's local sign-in mock hands handlers


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
    return {"refs": refs, "dirs": dirs}


def on_space(monkeypatch, *, space_token: str | None = None) -> None:
    """Behave as on a Space (what gradio.utils.get_space checks); ``space_token`` is the Space's HF_TOKEN secret."""
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "hubmerge/hubmerge")
    if space_token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", space_token)


def signed_in(user: str) -> tuple[gr.OAuthToken, gr.OAuthProfile]:
    """What Gradio hands a handler for a visitor signed in on a Space."""
    token = gr.OAuthToken(token=TOKENS[user], scope="openid profile read-repos write-repos manage-repos", expires_at=0)
    profile = gr.OAuthProfile(
        {"name": user.title(), "preferred_username": user, "profile": f"{HUB_URL}/{user}", "picture": ""}
    )
    return token, profile


def message(info: pytest.ExceptionInfo) -> str:
    return html.unescape(info.value.message)


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


def test_analyse_compatible_pair(app, hub, repos):
    refs, dirs = repos["refs"], repos["dirs"]
    result = app.analyse([refs["a"], refs["b"], ""], [1.0, 0.5, 1.0], "sum")
    assert "✓ Compatible" in result.verdict
    assert refs["b"] in html.unescape(result.verdict), "each source is listed"
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


def test_analyse_shows_warnings(app, hub, repos):
    refs = repos["refs"]
    result = app.analyse([refs["a"], refs["a"]], [1.0, 1.0], "sum")
    assert "### Warnings (2)" in result.warnings
    assert "probably trained from the same seed" in result.warnings
    assert "may interfere" in result.warnings
    assert result.matrix.iloc[0, 2] == "1", "an adapter and itself point the same way"


def test_analyse_incompatible_pair_lists_every_problem(app, hub, repos):
    refs = repos["refs"]
    with pytest.raises(hubmerge.IncompatibleAdaptersError) as info:
        hubmerge.merge([refs["a"], refs["gpt2"]], report_only=True)
    problems = info.value.problems
    assert problems
    result = app.analyse([refs["a"], refs["gpt2"]], [1.0, 1.0], "sum")
    verdict = html.unescape(result.verdict)
    assert f"✗ Not compatible: {len(problems)} problem" in verdict
    for problem in problems:
        assert problem.message in verdict
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
        ("method", "Unknown merge method"),
    ],
)
def test_bad_input_is_a_readable_error(app, hub, repos, case, needle):
    good = repos["refs"]["a"]
    references, weights, method = {
        "garbage": ([good, "not a reference"], [1, 1], "sum"),
        "missing": ([good, f"alice/{unique('missing')}"], [1, 1], "sum"),
        "revision": ([good, f"{good}@no-such-branch"], [1, 1], "sum"),
        "path": ([good, str(SPACE)], [1, 1], "sum"),
        "one": ([good, "", "  "], [1, 1, 1], "sum"),
        "weight": ([good, good], [1, None], "sum"),
        "method": ([good, good], [1, 1], "frankenmerge"),
    }[case]
    repos_before = set(hub.list_repos())
    for handler in (app.analyse, app.merge_and_push):
        with pytest.raises(gr.Error) as info:
            handler(references, weights, method)
        assert needle in message(info)
        assert "\n" not in message(info) and "Traceback" not in message(info)
    assert set(hub.list_repos()) == repos_before


def test_signed_out_merge_gives_a_zip_that_peft_loads(app, hub, repos, tmp_path):
    refs, dirs = repos["refs"], repos["dirs"]
    repos_before = set(hub.list_repos())
    result = app.merge_and_push([refs["a"], refs["b"]], [1.0, 0.5], "sum", "ignored-when-signed-out", True)
    assert set(hub.list_repos()) == repos_before, "signed out, nothing is pushed"
    assert "not signed in" in result.status and "✓ Compatible" in result.verdict
    with zipfile.ZipFile(result.download) as archive:
        names = sorted(archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    folder = f"{refs['a'].split('/')[1]}-sub-merged"
    assert names == [
        f"{folder}/{name}"
        for name in (
            "README.md", "adapter_config.json", "adapter_model.safetensors", "hubmerge_recipe.json",
            "hubmerge_report.json", "similarity.png",
        )
    ]  # fmt: skip
    with torch.no_grad():
        merged = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "unzipped" / folder))(input_ids()).logits
    expected = reference_logits("llama", [(dirs["a"], 1.0), (dirs["b"], 0.5)])
    torch.testing.assert_close(merged, expected, atol=2e-5, rtol=1e-5)


def test_method_and_its_parameters_reach_the_merge(app, hub, repos, tmp_path):
    refs = repos["refs"]
    result = app.merge_and_push([refs["a"], refs["b"]], [1.0, 0.5], "svd", "", False, rank=2, density=0.5)
    with zipfile.ZipFile(result.download) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("adapter_config.json"))
        report_name = next(n for n in archive.namelist() if n.endswith("hubmerge_report.json"))
        config = json.loads(archive.read(config_name))
        report = json.loads(archive.read(report_name))
    assert config["r"] == 2 and report["method"] == "svd" and report["exact"] is False
    assert 0 < report["kept_energy"]["overall"] < 1


@pytest.mark.parametrize("private", [False, True])
def test_signed_in_push_on_a_space_uses_the_visitors_token(app, hub, repos, monkeypatch, private):
    on_space(monkeypatch)  # no HF_TOKEN at all: only the OAuth token can push
    refs = repos["refs"]
    token, profile = signed_in("alice")
    name = unique("space-merge")
    result = app.merge_and_push([refs["a"], refs["b"]], [1.0, 1.0], "sum", name, private, token, profile)
    target = f"alice/{name}"
    assert result.download is None
    assert f"[{target}]({HUB_URL}/{target})" in result.status
    assert ("Private" if private else "Public") in result.status
    assert sorted(hub.list_commits(target)[0]["files"]) == [
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
        "hubmerge_recipe.json", "hubmerge_report.json", "similarity.png",
    ]  # fmt: skip
    card = ModelCard(hub.read_file(target, "README.md").decode())
    assert card.data.library_name == "peft"
    assert card.data.base_model == "test-org/tiny-llama"
    if private:
        with pytest.raises(RepositoryNotFoundError):
            HfApi().model_info(target, token=False)
    else:
        assert HfApi().model_info(target, token=False).id == target


def test_default_repo_name_and_namespace(app, hub, repos, monkeypatch):
    on_space(monkeypatch)
    refs = repos["refs"]
    token, profile = signed_in("alice")
    result = app.merge_and_push([refs["a"], refs["b"]], [1.0, 1.0], "sum", "  ", False, token, profile)
    target = f"alice/{refs['a'].split('/')[1]}-sub-merged"
    assert f"[{target}]" in result.status and target in hub.list_repos()
    with pytest.raises(gr.Error) as info:
        app.merge_and_push([refs["a"], refs["b"]], [1, 1], "sum", "bob/mine", False, token, profile)
    assert "pushes to your own account" in message(info) and "alice/mine" in message(info)
    with pytest.raises(gr.Error) as info:
        app.merge_and_push([refs["a"], refs["b"]], [1, 1], "sum", "no spaces allowed", False, token, profile)
    assert "is not a valid repo name" in message(info)


def test_local_sign_in_mock_acts_as_the_machines_login(app, hub, repos, monkeypatch):
    """Locally gradio signs the page in as the machine's account but hands handlers a placeholder token."""
    from gradio.oauth import _get_mocked_oauth_info

    info = _get_mocked_oauth_info()
    assert info["access_token"] == MOCK_TOKEN, "gradio changed its mock: see hub_token() in spaces/app.py"
    token = gr.OAuthToken(token=info["access_token"], scope=info["scope"], expires_at=info["expires_at"])
    profile = gr.OAuthProfile(info["userinfo"])
    assert profile.username == "alice"
    name = unique("local")
    result = app.merge_and_push([repos["refs"]["a"], repos["refs"]["b"]], [1, 1], "sum", name, False, token, profile)
    assert f"alice/{name}" in result.status and f"alice/{name}" in hub.list_repos()


def test_the_spaces_own_token_never_acts_for_a_visitor(app, hub, repos, monkeypatch):
    private, good = repos["refs"]["bob_private"], repos["refs"]["a"]
    monkeypatch.setenv("HF_TOKEN", TOKENS["bob"])
    assert "✓ Compatible" in app.analyse([good, private], [1, 1]).verdict, "locally the machine's login is used"
    on_space(monkeypatch, space_token=TOKENS["bob"])  # the Space's secret could read bob's private repo
    with pytest.raises(gr.Error) as info:
        app.analyse([good, private], [1, 1])
    assert "not found" in message(info) and "sign in with Hugging Face" in message(info)
    with pytest.raises(gr.Error) as info:
        app.analyse([good, private], [1, 1], "sum", signed_in("alice")[0])
    assert "not found" in message(info)


def test_limits_are_clear_errors_before_any_download(app, hub, repos, monkeypatch):
    refs = repos["refs"]
    before = len(hub.requests)
    monkeypatch.setattr(app, "LIMITS", app.Limits(max_adapters=2, max_download_bytes=10**9))
    with pytest.raises(gr.Error) as info:
        app.merge_and_push([refs["a"], refs["b"], refs["a"]], [1, 1, 1])
    assert "3 adapters given; at most 2 can be merged here" in message(info)
    assert "This Space allows at most 2 adapters per merge" in message(info)
    monkeypatch.setattr(app, "LIMITS", app.Limits(max_adapters=8, max_download_bytes=1000))
    with pytest.raises(gr.Error) as info:
        app.analyse([refs["a"], refs["b"]], [1, 1])
    assert "more than the 1,000 bytes allowed" in message(info)
    assert info.value.title == "Over the limit"
    assert not [r for r in hub.requests[before:] if "/resolve/" in r[1]], "nothing was downloaded"


def test_an_unexpected_failure_is_a_short_message_and_a_logged_traceback(app, hub, repos, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("internal detail the visitor should not see")

    monkeypatch.setattr(app.hubmerge, "merge", broken)
    with pytest.raises(gr.Error) as info:
        app.analyse([repos["refs"]["a"], repos["refs"]["b"]], [1, 1])
    assert message(info).startswith("Something went wrong on our side (RuntimeError)")
    assert "internal detail" not in message(info)
    assert "internal detail" in caplog.text, "the traceback is in the server log"


def test_limits_from_the_environment(app, monkeypatch):
    monkeypatch.setenv("HUBMERGE_SPACE_MAX_ADAPTERS", "3")
    monkeypatch.setenv("HUBMERGE_SPACE_MAX_DOWNLOAD_MB", "5")
    assert app.Limits.from_env() == app.Limits(max_adapters=3, max_download_bytes=5 * 1024**2)
    monkeypatch.setenv("HUBMERGE_SPACE_MAX_ADAPTERS", "1")
    with pytest.raises(ValueError, match="HUBMERGE_SPACE_MAX_ADAPTERS"):
        app.Limits.from_env()


def test_tokens_appear_in_no_returned_value(app, hub, repos, monkeypatch, capsys, caplog):
    refs = repos["refs"]
    on_space(monkeypatch, space_token=TOKENS["bob"])
    token, profile = signed_in("alice")
    returned = [
        app.analyse([refs["a"], refs["b"]], [1, 1], "sum", token),
        app.merge_and_push([refs["a"], refs["b"]], [1, 1], "sum", unique("secret"), True, token, profile),
        app.merge_and_push([refs["a"], refs["b"]], [1, 1], "sum", "", False, None, None),
    ]
    errors = []
    for args in (
        ([refs["a"], refs["bob_private"]], [1, 1], "sum", token),
        ([refs["a"], f"{refs['a']}@nope"], [1, 1], "sum", token),
    ):
        with pytest.raises(gr.Error) as info:
            app.analyse(*args)
        errors.append(info.value.message)
    with pytest.raises(gr.Error) as info:
        app.merge_and_push([refs["a"], refs["b"]], [1, 1], "sum", "bob/x", False, token, profile)
    errors.append(info.value.message)

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
    blobs.append(repr(vars(app)).encode())  # no module-level state kept a token
    for secret in (TOKENS["alice"], TOKENS["bob"]):
        for blob in blobs:
            assert secret.encode() not in blob
            assert secret[3:20].encode() not in blob, "not even a fragment"


def test_the_page_builds_with_sign_in_and_one_method_list(app, hub, monkeypatch):
    demo = app.build_demo()
    blocks = list(demo.blocks.values())
    assert any(isinstance(b, gr.LoginButton) for b in blocks)
    (dropdown,) = [b for b in blocks if isinstance(b, gr.Dropdown)]
    assert [value for _, value in dropdown.choices] == list(app.MERGE_METHODS)
    assert {fn.api_name for fn in demo.fns.values()} >= {"analyse", "merge"}
    assert demo._queue is not None and demo._queue.max_size == 32
    textboxes = [b.label for b in blocks if isinstance(b, gr.Textbox)]
    assert textboxes[:3] == ["Adapter 1", "Adapter 2", "Adapter 3"]
    assert len([label for label in textboxes if label.startswith("Adapter ")]) == app.LIMITS.max_adapters

    without = app.build_demo(sign_in=False)
    assert not any(isinstance(b, gr.LoginButton) for b in without.blocks.values())


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
    demo = app._local_demo()
    assert any(isinstance(b, gr.LoginButton) for b in demo.blocks.values()) is button
    err = capsys.readouterr().err
    if said:
        assert said in err and "Merge & push offers a zip" in err
        assert "TOKENmarker" not in err
    else:
        assert "hubmerge Space" not in err


def test_space_metadata_and_requirements():
    text = (SPACE / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    # the app uses Gradio 6's API (api_visibility, OAuth injection); bump sdk_version with the Gradio tested
    assert meta["sdk"] == "gradio" and Version(meta["sdk_version"]).major == Version(gr.__version__).major == 6
    assert (SPACE / meta["app_file"]).is_file()
    assert meta["hf_oauth"] is True
    assert {"read-repos", "write-repos", "manage-repos"} <= set(meta["hf_oauth_scopes"])
    assert len(meta["short_description"]) <= 60
    for topic in ("Run it locally", "Sign-in", "Limits", "Deploy"):
        assert topic in body
    lines = [line for line in (SPACE / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    (hubmerge_line,) = [line for line in lines if line.startswith("hubmerge")]
    assert hubmerge_line.endswith(f"@v{hubmerge.__version__}"), "pin the Space to the release being deployed"
    assert not [line for line in lines if line.startswith("gradio")], "sdk_version pins gradio on a Space"


def test_heatmap_is_the_png_hubmerge_renders(app, hub, repos):
    from hubmerge.figures import render_heatmap

    refs = repos["refs"]
    result = app.analyse([refs["a"], refs["b"]], [1, 1])
    report = hubmerge.merge([refs["a"], refs["b"]], report_only=True)
    expected = render_heatmap(report.similarity)
    from PIL import Image

    assert result.heatmap.tobytes() == Image.open(io.BytesIO(expected)).tobytes()
