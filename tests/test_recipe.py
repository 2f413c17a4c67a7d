"""Recipes are other people's files: read through an allow-list, never taking over the command line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import hubmerge
from hubmerge.cli import main
from hubmerge.recipe import Recipe
from tests.factory import make_adapter


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def recipe_file(tmp_path):
    """A real recipe of a local merge (sources ./math and ./med, relative to the test's working directory)."""
    make_adapter(tmp_path / "math", seed=1)
    make_adapter(tmp_path / "med", seed=2, r=2)
    out = hubmerge.merge(["math", "med"], weights=[1.0, 0.5]).save_pretrained(tmp_path / "first")
    return out / "hubmerge_recipe.json"


def hostile(recipe_file, tmp_path, change) -> str:
    data = json.loads(recipe_file.read_text())
    change(data)
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data))
    return str(path)


def listing(tmp_path) -> set[str]:
    return {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("method_parameters", "output", "stolen"),
        ("method_parameters", "push", "mallory/stolen"),
        ("method_parameters", "token", "hf_malloryTOKEN0123456789abcdef"),
        ("method_parameters", "overwrite", True),
        ("method_parameters", "allow_pickle", True),
        ("method_parameters", "max_download_size", "none"),
        ("top", "output", "stolen"),
        ("top", "push", "mallory/stolen"),
        ("top", "token", "hf_malloryTOKEN0123456789abcdef"),
        ("top", "overwrite", True),
        ("top", "max_adapters", 1000),
        ("top", "max_download_size", "none"),
    ],
)
def test_hostile_recipe_is_refused_before_anything_is_written(capsys, tmp_path, recipe_file, where, key, value):
    def change(data):
        (data["method_parameters"] if where == "method_parameters" else data)[key] = value

    path = hostile(recipe_file, tmp_path, change)
    before = listing(tmp_path)
    code, out, err = cli(capsys, "--recipe", path, "-o", tmp_path / "mine")
    assert code == 1 and out == ""
    first = err.splitlines()[0]
    assert first.startswith("hubmerge: error: --recipe ") and repr(key) in first
    assert listing(tmp_path) == before  # nothing written: not -o, not the recipe's "output"
    assert "hf_mallory" not in err


def test_a_parameter_the_method_does_not_declare_is_refused(capsys, tmp_path, recipe_file):
    path = hostile(recipe_file, tmp_path, lambda d: d["method_parameters"].update(rank=4))  # sum takes none
    code, _, err = cli(capsys, "--recipe", path, "-o", tmp_path / "mine")
    assert code == 1 and "'rank'" in err.splitlines()[0] and "sum takes no parameters" in err
    assert not (tmp_path / "mine").exists()


def test_an_unknown_key_is_refused_by_name(capsys, tmp_path, recipe_file):
    path = hostile(recipe_file, tmp_path, lambda d: d.update(post_merge_hook="curl evil"))
    code, _, err = cli(capsys, "--recipe", path, "-o", tmp_path / "mine")
    assert code == 1 and "'post_merge_hook'" in err.splitlines()[0]
    path = hostile(recipe_file, tmp_path, lambda d: d["sources"][0].update(path="/etc"))
    code, _, err = cli(capsys, "--recipe", path, "-o", tmp_path / "mine")
    assert code == 1 and "'path'" in err.splitlines()[0]


def test_a_refusal_says_what_is_wrong_and_nothing_that_contradicts_it(capsys, tmp_path, recipe_file):
    path = hostile(recipe_file, tmp_path, lambda d: d["sources"][0].update(weight="x"))
    code, _, err = cli(capsys, "--recipe", path, "-o", tmp_path / "mine")
    assert code == 1
    assert err.strip() == f"hubmerge: error: --recipe {path}: sources[0]: weight 'x' is not a finite number"
    path = hostile(recipe_file, tmp_path, lambda d: d.update(post_merge_hook="curl evil"))
    code, _, err = cli(capsys, "--recipe", path, "-o", tmp_path / "mine")
    assert code == 1 and err.count("a recipe holds") == 1, "the allowed keys, listed once, as the reader knows them"
    assert "max_rank" in err and "fit" in err


@pytest.mark.parametrize(
    ("key", "flag"), [("allow_pickle", "--allow-pickle"), ("allow_base_mismatch", "--allow-base-mismatch")]
)
def test_a_recipe_cannot_grant_consent_but_says_what_the_replay_needs(capsys, tmp_path, recipe_file, key, flag):
    path = hostile(recipe_file, tmp_path, lambda d: d.update({key: True}))
    code, _, err = cli(capsys, "--recipe", path, "-o", tmp_path / "mine")
    assert code == 1 and flag in err.splitlines()[0] and "a recipe cannot turn it on" in err
    assert not (tmp_path / "mine").exists()
    # The user's own flag is consent: the replay runs.
    code, _, err = cli(capsys, "--recipe", path, flag, "-o", tmp_path / "mine")
    assert code == 0, err


def test_replay_reproduces_the_merge_and_flags_win(capsys, tmp_path, recipe_file):
    first = load_file(recipe_file.parent / "adapter_model.safetensors")
    code, _, err = cli(capsys, "--recipe", recipe_file, "-o", tmp_path / "again")
    assert code == 0, err
    again = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    # --weights and --dtype on the command line win over the recipe's
    code, _, err = cli(capsys, "--recipe", recipe_file, "--weights", "2,-1", "--dtype", "float64", "-o", tmp_path / "w")
    assert code == 0, err
    replayed = json.loads((tmp_path / "w" / "hubmerge_recipe.json").read_text())
    assert [s["weight"] for s in replayed["sources"]] == [2.0, -1.0] and replayed["dtype"] == "float64"
    expected = hubmerge.merge(["math", "med"], weights=[2.0, -1.0], dtype="float64").tensors
    written = load_file(tmp_path / "w" / "adapter_model.safetensors")
    assert all(torch.equal(expected[k], written[k]) for k in expected)


def test_replay_refuses_a_local_folder_that_changed(capsys, tmp_path, recipe_file):
    make_adapter(tmp_path / "med", seed=3, r=2)  # same name, other weights
    code, _, err = cli(capsys, "--recipe", recipe_file, "-o", tmp_path / "again")
    assert code == 1 and "'med'" in err and "not the adapter the recipe was made from" in err
    assert not (tmp_path / "again").exists()


def test_recipes_written_by_hubmerge_0_1_stay_readable():
    old = {
        "hubmerge_version": "0.1.0",
        "method": "svd",
        "method_parameters": {"rank": 8},
        "sources": [
            {"source": "alice/math@" + "a" * 40, "repo_id": "alice/math", "subfolder": None,
             "revision": "a" * 40, "weight": 1.0},
            {"source": "bob/ads/med@" + "b" * 40, "repo_id": "bob/ads", "subfolder": "med",
             "revision": "b" * 40, "weight": -0.5},
        ],
        "dtype": "bfloat16",
        "allow_base_mismatch": False,
        "allow_pickle": False,
        "command": "hubmerge alice/math@aaaa bob/ads/med@bbbb --weights=1,-0.5 --method=svd --rank=8",
    }  # fmt: skip
    recipe = Recipe.from_dict(old)
    assert recipe.references == [old["sources"][0]["source"], old["sources"][1]["source"]]
    assert recipe.weights == [1.0, -0.5] and recipe.method == "svd" and dict(recipe.method_parameters) == {"rank": 8}
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(AttributeError):
        recipe.method = "ties"  # type: ignore[misc]


def test_the_recipe_names_a_local_source_by_folder_and_digest(tmp_path, recipe_file):
    data = json.loads(recipe_file.read_text())
    for entry, folder in zip(data["sources"], ["math", "med"]):
        assert entry["source"] == folder and set(entry["files_sha256"]) == {
            "adapter_config.json",
            "adapter_model.safetensors",
        }
    assert str(tmp_path) not in recipe_file.read_text()
