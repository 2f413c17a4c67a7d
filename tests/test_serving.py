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
    """The merge's facts on a base whose model_type is llama (offline, the Hub cannot say)."""
    return {**merged.report.serving["facts"], "model_type": "llama"}


def verdicts(facts) -> dict[str, dict]:
    return {v["engine"]: v for v in servability(facts)}


def test_a_plain_merge_is_servable_everywhere_and_llama_cpp_after_conversion(merged, facts):
    assert facts["rank"] == 8 and facts["modules"] == ["q_proj", "v_proj"] and facts["partial_layers"] == []
    assert facts["module_types"] == ["model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.v_proj"]
    raw = merged.report.serving["facts"]
    assert raw["model_type"] is None and facts["parameters"] == []  # offline: the Hub did not say
    found = verdicts({**facts, "model_type": "llama"})
    assert {k: v["status"] for k, v in found.items()} == {
        "vllm": "servable", "sglang": "servable", "tgi": "servable", "lorax": "servable",
        "llama.cpp": "after conversion",
    }  # fmt: skip
    assert found["vllm"]["command"] == (
        "vllm serve test-org/tiny-llama --enable-lora --lora-modules merged=ADAPTER --max-lora-rank 8"
    )
    assert list(merged.report.serving["engines"]) == servability(raw)  # the report holds the same verdicts
    unknown = verdicts(raw)  # which modules vLLM and LoRAX apply depends on the architecture: not guessed
    assert unknown["vllm"]["status"] == "servable, modules not checked" and unknown["vllm"]["servable"]
    assert "model_type was not read" in unknown["lorax"]["not_known"][0] and unknown["tgi"]["status"] == "servable"


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
        ({"modules_to_save": ["lm_head"]}, {"vllm", "sglang", "llama.cpp"}, "lm_head"),
        ({"modules_to_save": ["score"]}, {"sglang", "llama.cpp"}, "score"),  # vLLM takes a classifier head
        ({"full_weights": ["model.embed_tokens"]}, {"vllm", "sglang", "llama.cpp"}, "model.embed_tokens"),
        ({"use_dora": True}, {"vllm"}, "use_dora"),
        ({"bias": "all"}, {"vllm"}, "bias"),
        ({"patterns": True}, {"tgi"}, "rank_pattern"),  # vLLM 0.33 reads rank_pattern / alpha_pattern
        ({"modules": ["c_attn"]}, {"sglang"}, "c_attn"),
        ({"partial_layers": ["model.layers.*.mlp.down_proj"]}, {"tgi", "lorax"}, "down_proj"),
    ],
)
def test_each_refusal_names_its_reason(facts, change, refusing, words):
    found = verdicts({**facts, "model_type": "llama", **change})
    assert {k for k, v in found.items() if v["status"] == "not servable"} == refusing
    for engine in refusing:
        assert any(words in reason for reason in found[engine]["reasons"]) and found[engine]["command"] is None


def test_the_base_embeddings_peft_saves_beside_an_embedding_lora_refuse_only_where_an_engine_reads_them(tmp_path):
    # PEFT's default save (save_embedding_layers="auto") adds embed_tokens / lm_head .base_layer.weight: the base's
    # own weights, which vLLM skips (is_base_embedding_weights) and llama.cpp's converter leaves out.
    targets = ["q_proj", "embed_tokens", "lm_head"]
    sources = [make_adapter(tmp_path / f"s{seed}", seed=seed, target_modules=targets) for seed in (1, 2)]
    facts = {**hubmerge.merge(sources).report.serving["facts"], "model_type": "llama"}
    assert facts["full_weights"] == ["lm_head", "model.embed_tokens"]
    found = verdicts(facts)
    assert found["vllm"]["status"] == "servable" and found["llama.cpp"]["status"] == "after conversion"
    # A copy beside no LoRA (the module is not adapted) is not PEFT's base_layer: vLLM and llama.cpp refuse it.
    plain = verdicts({**facts, "full_weights": ["model.embed_tokens"], "module_types": ["lm_head"]})
    assert not plain["vllm"]["servable"] and not plain["llama.cpp"]["servable"]


def test_lorax_above_128_is_served_off_the_fast_kernels(facts):
    found = verdicts({**facts, "model_type": "llama", "rank": 129})
    assert found["lorax"]["status"] == "servable, slower" and found["lorax"]["servable"]
    assert verdicts({**facts, "model_type": "llama", "rank": 128})["lorax"]["status"] == "servable"


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
    assert "serving:" in text and "llama.cpp  after conversion, not all checked — no GGUF file written yet" in text
    assert "$ vllm serve test-org/tiny-llama --enable-lora --lora-modules merged=ADAPTER --max-lora-rank 8" in text
    card = str(build_card(merged.report, repo_id="alice/merged", command="hubmerge a b"))
    serving = card.split("## Serving", 1)[1].split("\n## ", 1)[0]
    assert "| vLLM | servable, modules not checked | not known: which modules vLLM applies" in serving
    assert "| llama.cpp | after conversion, not all checked |" in serving
    assert "--lora-modules merged=alice/merged --max-lora-rank 8" in serving


def test_docs_list_every_rule():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    names = {engine.key: engine.name for engine in ENGINES.values()}
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for rule in RULES:
        row = f"| {names[rule.engine]} | `{rule.code}`"
        assert any(line.startswith(row) for line in rows), (rule.engine, rule.code)
    from hubmerge.serving_modules import ARCHITECTURES

    for arch in ARCHITECTURES:
        row = f"| {names[arch.engine]} | `{arch.model_type}` | {arch.model_class} | "
        line = next(line for line in rows if line.startswith(row))
        assert all(f"`{m}`" in line.split(" | ")[3] for m in arch.modules), (arch.engine, arch.model_type)


def _kinds(*names: str, where: str = "self_attn") -> list[str]:
    return [f"model.layers.*.{where}.{name}" for name in names]


# Each row: the base's model_type, the adapted module types, and what each engine does with them,
# as read from vLLM 0.33.0, TGI db931fc and LoRAX a7394ba (hubmerge/serving_modules.py names the files).
@pytest.mark.parametrize(
    ("model_type", "kinds", "vllm", "tgi", "lorax"),
    [
        # Llama: vLLM and LoRAX take embed/lm_head LoRA on Llama, TGI never applies lm_head.
        ("llama", [*_kinds("q_proj", "v_proj"), "lm_head"], "servable", "servable, some modules not applied",
         "servable"),
        # Mistral's vLLM class sets embedding_modules = {}: an embedding LoRA makes vLLM refuse the adapter.
        ("mistral", [*_kinds("q_proj"), "model.embed_tokens"], "not servable", "servable, some modules not applied",
         "servable, some modules not applied"),
        ("qwen2", [*_kinds("q_proj"), "lm_head"], "not servable", "servable, some modules not applied", "servable"),
        ("qwen3", [*_kinds("q_proj"), "lm_head"], "servable", "servable, some modules not applied", "not servable"),
        ("phi3", _kinds("qkv_proj", "o_proj"), "servable", "servable", "servable"),
        # GPT-2: no SupportsLoRA in vLLM; TGI's lookup knows only model.layers.N paths; LoRAX serves it.
        ("gpt2", ["transformer.h.*.attn.c_attn"], "not servable", "not servable", "servable"),
        ("gpt_neox", ["gpt_neox.layers.*.attention.query_key_value"], "servable", "not servable", "not servable"),
        ("gemma3_text", _kinds("q_proj", "k_proj"), "servable", "servable", "not servable"),
    ],
)  # fmt: skip
def test_modules_each_engine_applies_per_architecture(facts, model_type, kinds, vllm, tgi, lorax):
    found = verdicts({**facts, "model_type": model_type, "module_types": kinds, "parameters": []})
    assert (found["vllm"]["status"], found["tgi"]["status"], found["lorax"]["status"]) == (vllm, tgi, lorax)
    for engine in ("vllm", "tgi", "lorax"):
        rule = next(r for r in found[engine]["rules"] if r["code"] == "target_modules")
        assert rule["source"].startswith("https://github.com/") and (rule["ok"] is True) == (rule["detail"] is None)
    if vllm == "not servable":
        assert (
            "refuses the whole adapter" in found["vllm"]["reasons"][0] or "takes no LoRA" in found["vllm"]["reasons"][0]
        )


def test_refusals_name_the_modules_not_applied(facts):
    found = verdicts({**facts, "model_type": "mistral", "module_types": [*_kinds("q_proj"), "model.embed_tokens"]})
    assert found["vllm"]["reasons"][0].startswith("model.embed_tokens would not be applied: it refuses")
    only_head = verdicts({**facts, "model_type": "llama", "module_types": ["lm_head"]})["tgi"]
    assert only_head["status"] == "not servable" and "no module of the adapter would be" in only_head["reasons"][0]
    lorax = verdicts({**facts, "model_type": "qwen2_moe"})["lorax"]
    assert "Unsupported model type" in lorax["reasons"][0]


def test_fused_experts_need_vllms_mixed_moe_flag(tmp_path):
    """A real fused-expert merge (target_parameters on a tiny Mixtral): the facts hold its parameters, and vLLM
    serves them only with --enable-mixed-moe-lora-format and is_3d_lora_weight on the module."""
    from tests.test_experts import make

    a = make(tmp_path / "a", "mixtral", seed=1, target_modules=["q_proj"], target_parameters=[
        "mlp.experts.gate_up_proj", "mlp.experts.down_proj"])  # fmt: skip
    facts = hubmerge.merge([a, a]).report.serving["facts"]
    assert facts["parameters"] == ["model.layers.*.mlp.experts.down_proj", "model.layers.*.mlp.experts.gate_up_proj"]
    assert facts["module_types"] == ["model.layers.*.self_attn.q_proj"]
    found = verdicts({**facts, "model_type": "mixtral"})
    assert found["vllm"]["status"] == "servable"
    assert "--enable-mixed-moe-lora-format --lora-modules '{\"name\": \"merged\", \"path\": \"ADAPTER\", " \
        "\"is_3d_lora_weight\": true}'" in found["vllm"]["command"]  # fmt: skip
    assert found["tgi"]["status"] == "servable, some modules not applied"  # TGI applies no expert LoRA
    one = verdicts({**facts, "model_type": "mixtral", "parameters": ["model.layers.*.mlp.experts.down_proj"]})
    assert one["vllm"]["status"] == "not servable"  # vLLM's 3-D conversion reads gate_up_proj and down_proj together
    for model_type in ("qwen3_moe", "deepseek_v3"):  # 2-D MoE wrappers in vLLM, as Mixtral
        assert "--enable-mixed-moe-lora-format" in verdicts({**facts, "model_type": model_type})["vllm"]["command"]
    native = verdicts({**facts, "model_type": "gpt_oss"})["vllm"]  # is_3d_moe_weight: read as it is
    assert native["status"] == "servable" and "--lora-modules merged=ADAPTER" in native["command"]
    dense = verdicts({**facts, "model_type": "llama"})["vllm"]  # no experts in vLLM's Llama
    assert dense["status"] == "not servable" and "experts" in dense["reasons"][0]


def test_per_expert_modules_are_judged_as_expert_modules(facts):
    experts = ["model.layers.*.mlp.experts.*.w1", "model.layers.*.mlp.experts.*.w2"]
    assert verdicts({**facts, "model_type": "mixtral", "module_types": experts})["vllm"]["status"] == "servable"
    one_expert = verdicts({**facts, "model_type": "gpt_oss", "module_types": experts})["vllm"]
    assert one_expert["status"] == "not servable"  # a 3-D MoE model in vLLM takes the fused layout only
    shared = verdicts(
        {**facts, "model_type": "qwen2_moe", "module_types": ["model.layers.*.mlp.shared_expert.gate_proj"]}
    )
    assert shared["vllm"]["status"] == "not servable"  # packed as gate_up_proj in vLLM, not in its mapping


def test_sglang_refuses_a_regex_target_modules(tmp_path, merged):
    """SGLang reads target_modules only as a list of names (or "all" / "all-linear"); hubmerge writes a regex
    where no list selects exactly the merged modules, here a source adapting layer 0 only."""
    a = make_adapter(tmp_path / "a", seed=1, target_modules=["q_proj"], layers_to_transform=[0])
    regex = hubmerge.merge([a]).report.serving
    assert isinstance(hubmerge.merge([a]).config["target_modules"], str) and regex["facts"]["target_modules_regex"]
    sglang = {v["engine"]: v for v in regex["engines"]}["sglang"]
    assert sglang["status"] == "not servable" and sglang["reasons"][0].startswith("target_modules is a regex string")
    assert merged.report.serving["facts"]["target_modules_regex"] is False  # the plain merge writes names
    # A report only writes no config: the facts say what the merge would write, from the sources.
    assert hubmerge.merge([a], report_only=True).serving["facts"]["target_modules_regex"] is True
    b = make_adapter(tmp_path / "b", seed=2, target_modules=["q_proj"])
    assert hubmerge.merge([b], report_only=True).serving["facts"]["target_modules_regex"] is False
    unknown = verdicts({**merged.report.serving["facts"], "target_modules_regex": None})["sglang"]
    assert unknown["not_known"] and unknown["status"] == "servable, modules not checked"


def test_vllm_rows_match_vllms_own_model_files():
    """Independent of the hand-written table: derive each row from a vLLM source tree (tests/vllm_source.py).

    Needs one (HUBMERGE_VLLM_SOURCE=DIR, e.g. the vLLM 0.33.0 sdist unpacked: `pip download --no-deps
    --no-binary :all: --no-build-isolation --no-clean vllm==0.33.0` keeps it); CI has none and skips.
    """
    import os
    from pathlib import Path

    from hubmerge.serving_modules import ARCHITECTURES
    from tests.vllm_source import lora_modules

    root = os.environ.get("HUBMERGE_VLLM_SOURCE")
    if not root:
        pytest.skip("HUBMERGE_VLLM_SOURCE is not set (a vLLM source tree to derive the rows from)")
    rows = [r for r in ARCHITECTURES if r.engine == "vllm" and r.model_class != "TransformersForCausalLM"]
    for row in rows:
        file = row.source.split("/model_executor/models/", 1)[1].split(" ", 1)[0]
        supports, modules = lora_modules(Path(root), file, row.model_class)
        assert supports == row.lora, row.model_type
        assert not supports or modules == set(row.modules), (row.model_type, sorted(modules))


def test_llama_cpp_says_what_hubmerges_gguf_export_converts(facts):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from hubmerge.gguf_export import ARCHITECTURES as GGUF_ARCHITECTURES
    from hubmerge.serving_rules import GGUF_MODEL_TYPES

    # The rule's model types are those of the export's architecture classes, in transformers' own map.
    assert {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[t] for t in GGUF_MODEL_TYPES} == set(GGUF_ARCHITECTURES)
    assert verdicts(facts)["llama.cpp"]["status"] == "after conversion"  # llama: converted
    moe = verdicts({**facts, "model_type": "mixtral"})["llama.cpp"]
    assert moe["status"] == "after conversion, not all checked" and "does not convert it" in moe["not_known"][0]
