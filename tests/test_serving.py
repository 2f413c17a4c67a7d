"""The servability rules: each engine, each reason, from facts changed one at a time; and where they are shown."""

from __future__ import annotations

from dataclasses import replace

import pytest

import hubmerge
from hubmerge.card import build_card
from hubmerge.report import render_text
from hubmerge.serving import _CHECKS, ENGINES, RULES, servability, serving_facts
from tests.factory import make_adapter


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    a = make_adapter(root / "a", seed=1, target_modules=["q_proj", "v_proj"])
    b = make_adapter(root / "b", seed=2, target_modules=["q_proj", "v_proj"])
    return hubmerge.merge([a, b])


@pytest.fixture
def facts(merged):
    return dict(merged.report.serving["facts"])


def verdicts(facts) -> dict[str, dict]:
    return {v["engine"]: v for v in servability(facts)}


def test_a_plain_merge_is_servable_everywhere_and_llama_cpp_after_conversion(merged, facts):
    found = verdicts(facts)
    assert facts["rank"] == 8 and facts["modules"] == ["q_proj", "v_proj"] and facts["partial_layers"] == []
    assert {k: v["status"] for k, v in found.items()} == {
        "vllm": "servable", "sglang": "servable", "tgi": "servable", "lorax": "servable",
        "llama.cpp": "after conversion",
    }  # fmt: skip
    assert found["vllm"]["command"] == (
        "vllm serve test-org/tiny-llama --enable-lora --lora-modules merged=ADAPTER --max-lora-rank 8"
    )
    assert list(merged.report.serving["engines"]) == servability(facts)  # the report holds the same verdicts


@pytest.mark.parametrize(
    ("rank", "status", "max_lora_rank"), [(1, "servable", 1), (9, "servable", 16), (17, "servable", 32),
                                          (320, "servable", 320), (513, "not servable", None)]
)  # fmt: skip
def test_vllm_rank_names_the_smallest_legal_max_lora_rank(facts, rank, status, max_lora_rank):
    found = verdicts({**facts, "rank": rank})["vllm"]
    assert found["status"] == status
    if max_lora_rank is None:
        assert found["command"] is None and "above vLLM's largest --max-lora-rank" in found["reasons"][0]
    else:
        assert found["command"].endswith(f"--max-lora-rank {max_lora_rank}")


@pytest.mark.parametrize(
    ("change", "refusing", "words"),
    [
        ({"modules_to_save": ["score"]}, {"vllm", "sglang", "llama.cpp"}, "score"),
        ({"full_weights": ["model.embed_tokens"]}, {"vllm", "sglang", "llama.cpp"}, "model.embed_tokens"),
        ({"use_dora": True}, {"vllm"}, "use_dora"),
        ({"bias": "all"}, {"vllm"}, "bias"),
        ({"patterns": True}, {"vllm", "tgi"}, "rank_pattern"),
        ({"modules": ["c_attn"]}, {"sglang"}, "c_attn"),
        ({"partial_layers": ["model.layers.*.mlp.down_proj"]}, {"tgi", "lorax"}, "down_proj"),
    ],
)
def test_each_refusal_names_its_reason(facts, change, refusing, words):
    found = verdicts({**facts, **change})
    assert {k for k, v in found.items() if v["status"] == "not servable"} == refusing
    for engine in refusing:
        assert any(words in reason for reason in found[engine]["reasons"]) and found[engine]["command"] is None


def test_lorax_above_128_is_served_off_the_fast_kernels(facts):
    found = verdicts({**facts, "rank": 129})
    assert found["lorax"]["status"] == "servable, slower" and found["lorax"]["servable"]
    assert verdicts({**facts, "rank": 128})["lorax"]["status"] == "servable"


def test_llama_cpp_is_servable_once_the_gguf_is_written(facts):
    found = verdicts({**facts, "gguf_file": "adapter_model.gguf"})["llama.cpp"]
    assert found["status"] == "servable" and found["command"].endswith("--lora ADAPTER/adapter_model.gguf")


def test_partial_layers_are_found_from_module_keys(merged):
    coverage = {key: ("a",) for key in (
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.mlp.down_proj", "lm_head",
    )}  # fmt: skip
    report = replace(merged.report, modules=replace(merged.report.modules, coverage=coverage))
    facts = serving_facts(report, merged.config, full_weights=[])
    assert facts["partial_layers"] == ["model.layers.*.mlp.down_proj"]
    assert facts["modules"] == ["down_proj", "lm_head", "q_proj"]


def test_every_rule_is_data_with_a_source_and_a_known_check():
    assert {rule.engine for rule in RULES} == set(ENGINES)
    for rule in RULES:
        assert rule.check in _CHECKS and rule.effect in {"refuses", "slower", "convert"}
        assert rule.source.startswith("https://github.com/") and "(" in rule.source  # a file and the symbol read
    assert len({(rule.engine, rule.code) for rule in RULES}) == len(RULES)


def test_terminal_and_card_show_the_verdicts_with_commands(merged):
    text = render_text(merged.report)
    assert "serving:" in text and "llama.cpp  after conversion — no GGUF file written yet" in text
    assert "$ vllm serve test-org/tiny-llama --enable-lora --lora-modules merged=ADAPTER --max-lora-rank 8" in text
    card = str(build_card(merged.report, repo_id="alice/merged", command="hubmerge a b"))
    serving = card.split("## Serving", 1)[1].split("\n## ", 1)[0]
    assert "| vLLM | servable |" in serving and "| llama.cpp | after conversion |" in serving
    assert "--lora-modules merged=alice/merged --max-lora-rank 8" in serving


def test_docs_list_every_rule():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    names = {engine.key: engine.name for engine in ENGINES.values()}
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for rule in RULES:
        row = f"| {names[rule.engine]} | `{rule.code}`"
        assert any(line.startswith(row) for line in rows), (rule.engine, rule.code)
