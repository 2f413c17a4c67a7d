"""Secrets: the token never reaches stdout/stderr, logs (at DEBUG too), written files, pushed files,
cards, recipes or exception messages, on success or under any of the faults hubmerge reports.

The token is a marker (tests/conftest.py): the scan looks for it, and for a fragment of it, in every
byte the flows below produce. The Space's handlers have the same scan in tests/test_space.py.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

import hubmerge
from hubmerge.cli import main
from tests import test_hub
from tests.conftest import TOKENS
from tests.hub_server import Drop
from tests.test_hub import unique

base_repo, two_repos = test_hub.base_repo, test_hub.two_repos  # the Hub fixtures of test_hub.py

TOKEN = TOKENS["alice"]


def leaks(blob: bytes | str) -> bool:
    blob = blob.encode() if isinstance(blob, str) else blob
    return TOKEN.encode() in blob or TOKEN[3:20].encode() in blob


def chain(err: BaseException) -> str:
    """An exception's message, repr and full traceback text, with every cause and context behind it."""
    texts = []
    while err is not None:
        texts += [str(err), repr(err), "".join(traceback.format_exception(err))]
        err = err.__cause__ or err.__context__
    return "\n".join(texts)


def test_cli_flows_leak_no_token(capsys, caplog, hub, two_repos, tmp_path, monkeypatch):
    caplog.set_level(logging.DEBUG)  # huggingface_hub's and hubmerge's debug logs included
    sources = [two_repos["a"][0], f"{two_repos['b'][0]}/sub@v1"]
    target = f"alice/{unique('secret')}"
    commit_500 = lambda method, path: 500 if method == "POST" and "/commit/" in path else None  # noqa: E731
    dropped = lambda method, path: Drop() if "/resolve/" in path else None  # noqa: E731
    runs = [
        ([*sources, "--push", target, "-o", tmp_path / "local", "--token", TOKEN], (), 0),
        ([*sources, "--push", "--dry-run", "--json", "--token", TOKEN], (), 0),
        ([*sources, "--push", f"bob/{unique('refused')}", "--token", TOKEN], (), 1),
        ([sources[0], f"{two_repos['b'][0]}/sub@nope", "--report-only", "--token", TOKEN], (), 1),
        ([*sources, "--push", f"alice/{unique('flaky')}", "--token", TOKEN], (commit_500,), 1),
        ([*sources, "-o", tmp_path / "never", "--token", TOKEN], (dropped,), 1),
        ([*sources, "--push", f"alice/{unique('limit')}", "--max-download-size", "1KB"], (), 1),
    ]
    texts = []
    for args, faults, expected in runs:
        with hub.injected(*faults):
            code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == expected, err
        texts.append(out + err)
    monkeypatch.setenv("HUBMERGE_DEBUG", "1")  # a traceback, on request, holds no token either
    assert main([*sources, "--push", f"bob/{unique('refused')}", "--token", TOKEN]) == 1
    texts.append("".join(capsys.readouterr()))
    assert "Traceback" in texts[-1]

    assert not [text for text in texts if leaks(text)]
    assert caplog.records and not leaks(caplog.text)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]  # outputs, HF cache, anything else
    assert any(p.name == "hubmerge_recipe.json" for p in written)
    assert not [p for p in written if leaks(p.read_bytes())]
    pushed = [p for p in Path(snapshot_download(target)).rglob("*") if p.is_file()]
    assert {p.name for p in pushed} >= {"README.md", "hubmerge_recipe.json", "hubmerge_report.json"}
    assert not [p for p in pushed if leaks(p.read_bytes())]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(None, id="no-fault"),
        pytest.param(lambda method, path: 500 if "/api/models/" in path else None, id="metadata-500"),
        pytest.param(lambda method, path: Drop() if "/resolve/" in path else None, id="download-dropped"),
        pytest.param(lambda method, path: 403 if "/preupload/" in path else None, id="push-refused"),
    ],
)
def test_python_api_leaks_no_token(caplog, hub, two_repos, monkeypatch, fault):
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("HF_TOKEN")  # the token only travels as an argument
    sources = [two_repos["a"][0], f"{two_repos['b'][0]}/sub@v1"]
    texts = []
    with hub.injected(*([fault] if fault else [])):
        try:
            result = hubmerge.merge(sources, token=TOKEN)
            texts += [repr(result), str(result.report), str(result.recipe)]
            texts += [data.decode("latin-1") for data in result.files(repo_id="alice/x").values()]
            info = result.push_to_hub(f"alice/{unique('api')}", token=TOKEN)
            texts.append(repr(info))
        except hubmerge.HubmergeError as err:
            assert fault is not None, err
            texts.append(chain(err))
    assert texts and not [text for text in texts if leaks(text)]
    assert not leaks(caplog.text)
