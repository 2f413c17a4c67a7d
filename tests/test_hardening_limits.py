"""Limits: how many adapters and how many bytes one merge may fetch, checked before anything is downloaded;
only adapter files are ever fetched, however large the repository around them."""

from __future__ import annotations

from pathlib import Path

import pytest

import hubmerge
from hubmerge.cli import build_parser, main
from hubmerge.limits import DEFAULT_MAX_ADAPTERS, DEFAULT_MAX_DOWNLOAD_BYTES, parse_size
from tests import test_hub
from tests.factory import make_adapter
from tests.test_hub import seed_adapter, unique

base_repo, two_repos = test_hub.base_repo, test_hub.two_repos  # the Hub fixtures of test_hub.py


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def downloads(hub, since: int) -> list[tuple[str, str]]:
    return [r for r in hub.requests[since:] if "/resolve/" in r[1]]


@pytest.mark.parametrize(
    "text, expected",
    [("1000", 1000), ("500MB", 500 * 10**6), ("20 gb", 20 * 10**9), ("1.5GiB", 3 * 2**29), ("2KiB", 2048)]
    + [("none", None), (" Unlimited ", None), ("0.1GB", 10**8), ("9" * 400 + "TB", (10**400 - 1) * 10**12)],
)
def test_sizes_are_read_in_the_hubs_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-5MB", "5 PB", "1e9", "GB"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_limits_have_defaults_in_the_api_and_the_cli():
    assert DEFAULT_MAX_ADAPTERS == 64 and DEFAULT_MAX_DOWNLOAD_BYTES == 20 * 10**9
    args = build_parser().parse_args(["a", "b"])
    assert (args.max_adapters, args.max_download_size) == (DEFAULT_MAX_ADAPTERS, DEFAULT_MAX_DOWNLOAD_BYTES)
    sources = ["./does-not-exist"] * (DEFAULT_MAX_ADAPTERS + 1)
    with pytest.raises(hubmerge.LimitExceededError, match=f"at most {DEFAULT_MAX_ADAPTERS}"):
        hubmerge.merge(sources)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_download_limit_refuses_before_any_byte_is_fetched(capsys, hub, two_repos, monkeypatch, how):
    repo_a = two_repos["a"][0]
    limit = ["--max-download-size", "2KB"] if how == "flag" else []
    if how == "environment":
        monkeypatch.setenv("HUBMERGE_MAX_DOWNLOAD_SIZE", "2KB")
    before = len(hub.requests)
    code, out, err = cli(capsys, repo_a, f"{two_repos['b'][0]}/sub@v1", "-o", "out", *limit)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"hubmerge: error: {repo_a}: the adapter files are ") and "2,000 bytes allowed" in err
    assert "(set with --max-download-size SIZE, or none for no limit)" in err, "says how to raise it"
    assert "--max-adapters" not in err, "names only the limit that was passed"
    assert downloads(hub, before) == [], "refused from the Hub's metadata alone"
    assert not Path("out").exists()


def test_download_limit_counts_every_adapter_before_fetching_any(hub, two_repos):
    (repo_a, dir_a, _), repo_b = two_repos["a"], two_repos["b"][0]
    first_size = sum((dir_a / name).stat().st_size for name in test_hub.ADAPTER_FILES)
    before = len(hub.requests)
    # room for either adapter, not for both: refused from the metadata, before the first byte of either
    with pytest.raises(hubmerge.LimitExceededError, match=r"the 2 Hub sources are [\d,]+ bytes together") as err:
        hubmerge.merge([repo_a, f"{repo_b}/sub@v1"], max_download_bytes=first_size + 100)
    assert f"{repo_a} {first_size:,}" in str(err.value), "names each source with its size"
    assert downloads(hub, before) == [], "nothing of either adapter"


def test_a_bad_last_source_fails_before_the_first_is_downloaded(hub, two_repos):
    before = len(hub.requests)
    with pytest.raises(hubmerge.RepoNotFoundError):
        hubmerge.merge([two_repos["a"][0], f"alice/{unique('typo')}"], report_only=True)
    assert downloads(hub, before) == []


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_adapter_count_limit_refuses_before_any_request(capsys, hub, two_repos, monkeypatch, how):
    limit = ["--max-adapters", "1"] if how == "flag" else []
    if how == "environment":
        monkeypatch.setenv("HUBMERGE_MAX_ADAPTERS", "1")
    before = len(hub.requests)
    code, _, err = cli(capsys, two_repos["a"][0], f"{two_repos['b'][0]}/sub@v1", "--report-only", *limit)
    assert code == 1 and "2 adapters given; at most 1" in err and "(set with --max-adapters N," in err, err
    assert "--max-download-size" not in err, "names only the limit that was passed"
    assert hub.requests[before:] == []


@pytest.mark.parametrize(
    "args, needle",
    [(["--max-adapters", "0"], "not a positive whole number"), (["--max-download-size", "lots"], "not a size")],
)
def test_bad_limit_values_are_usage_errors(capsys, args, needle):
    code, _, err = cli(capsys, "a", "b", *args)
    assert code == 2 and needle in err


def test_no_limit_on_request(capsys, hub, two_repos):
    code, _, err = cli(
        capsys, two_repos["a"][0], f"{two_repos['b'][0]}/sub@v1", "--report-only", "--max-download-size", "none"
    )
    assert code == 0, err


def test_only_adapter_files_are_fetched_from_a_large_repository(hub, base_repo, tmp_path):
    adapter = make_adapter(tmp_path / "adapter", seed=4)
    repo_id = f"alice/{unique('big')}"
    seed_adapter(hub, repo_id, adapter, subfolder="lora")
    other = make_adapter(tmp_path / "other", seed=5)
    seed_adapter(hub, repo_id, other, subfolder="another-lora")
    hub.commit_files(
        repo_id,
        {
            "model.safetensors": bytes(3 * 10**6),  # a full model next to the adapter, larger than the limit
            "pytorch_model.bin": bytes(10**5),
            "lora/README.md": b"# an adapter",
            "lora/training_args.bin": bytes(10**4),
            "lora/optimizer.pt": bytes(10**5),
        },
    )
    before = len(hub.requests)
    result = hubmerge.merge([f"{repo_id}/lora", str(other)], max_download_bytes=10**6, report_only=True)
    assert result.to_dict()["sources"][0]["commit_sha"]
    fetched = sorted(path.split("/resolve/")[1] for _, path in downloads(hub, before))
    assert fetched == sorted(f"main/lora/{name}" for name in test_hub.ADAPTER_FILES for _ in ("HEAD", "GET"))
