"""Parsing source references: one grammar, in one place."""

from __future__ import annotations

import pytest

from hubmerge.errors import SourceError
from hubmerge.sources import parse_source


@pytest.mark.parametrize(
    ("text", "repo_id", "subfolder", "revision"),
    [
        ("user/repo", "user/repo", None, None),
        ("user/repo@v1", "user/repo", None, "v1"),
        ("user/repo/sub/folder@main", "user/repo", "sub/folder", "main"),
        ("org/my.repo-2/math", "org/my.repo-2", "math", None),
        ("user/repo@" + "a" * 40, "user/repo", None, "a" * 40),
        ("user/repo@refs/pr/3", "user/repo", None, "refs/pr/3"),
    ],
)
def test_hub_references(text, repo_id, subfolder, revision):
    source = parse_source(text)
    assert not source.is_local
    assert (source.repo_id, source.subfolder, source.revision) == (repo_id, subfolder, revision)
    assert str(source) == text


def test_names():
    assert parse_source("user/repo").name == "repo"
    assert parse_source("user/repo/adapters/math@v2").name == "math"


def test_existing_directory_wins_over_hub_syntax(tmp_path, monkeypatch):
    (tmp_path / "user" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    source = parse_source("user/repo")
    assert source.is_local and source.path.name == "repo"


@pytest.mark.parametrize("text", ["./missing", "/abs/missing", "../x", "~/x", "."])
def test_path_syntax_is_local_even_when_missing(text):
    assert parse_source(text).is_local


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("justaname", "not an existing directory nor a Hub reference"),
        ("user/repo@", "nothing after '@'"),
        ("user/repo@a@b", "more than one '@'"),
        ("user//repo", "not an existing directory"),
        ("user/repo/../secret", "'..'"),
        ("user/repo/sub//x", "not an existing directory"),
        ("us er/repo", "not a valid Hub repo id"),
        ("user/re--po..", "not a valid Hub repo id"),
    ],
)
def test_bad_references(text, needle):
    with pytest.raises(SourceError) as info:
        parse_source(text)
    assert needle in str(info.value)
