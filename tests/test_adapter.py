"""Reading adapters: config fields that change the math, and PEFT's key names."""

from __future__ import annotations

import json
import math

import pytest

from hubmerge.adapter import load_adapter, parse_config
from hubmerge.errors import AdapterFormatError, AdapterNotFoundError
from tests.factory import make_adapter


def test_scales_follow_peft(tmp_path):
    # PEFT's own layer.scaling is the reference.
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from tests.factory import tiny_llama

    directory = make_adapter(
        tmp_path / "a", r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 2}, alpha_pattern={"layers.1.self_attn.v_proj": 10},
    )  # fmt: skip
    adapter = load_adapter(directory)
    model = PeftModel.from_pretrained(tiny_llama(), str(directory))
    checked = 0
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            assert adapter.scale(name) == pytest.approx(module.scaling["default"]), name
            assert adapter.modules[name].rank == module.r["default"]
            checked += 1
    assert checked == 6


def test_pattern_matching_is_first_match_at_dot_boundary():
    config = parse_config({"r": 8, "rank_pattern": {"q_proj": 2, "layers.1.self_attn.q_proj": 4}})
    assert config.rank_for("model.layers.1.self_attn.q_proj") == 2  # first key wins, as in PEFT
    assert config.rank_for("model.layers.1.self_attn.xq_proj") == 8  # no match across a name boundary
    config = parse_config({"r": 8, "lora_alpha": 16, "alpha_pattern": {r"layers\.0\..*": 1}})
    assert config.alpha_for("model.layers.0.mlp.up_proj") == 1
    assert config.scale_for("model.layers.1.mlp.up_proj") == 2


def test_unknown_keys_are_tolerated_and_variants_are_flagged():
    config = parse_config({"r": 4, "some_future_field": {"x": 1}, "peft_type": "LORA", "use_dora": True})
    assert "use_dora" in config.unsupported
    config = parse_config({"r": 4, "init_lora_weights": "pissa_niter_4"})
    assert "init_lora_weights" in config.unsupported
    assert not parse_config({"r": 4, "init_lora_weights": "gaussian", "velora_config": None}).unsupported


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"r": "four"}, "'r'"),
        ({"r": -4}, "'r'"),
        ({"r": 10**9}, "'r'"),
        ({"r": True}, "'r'"),
        ({"lora_alpha": math.inf}, "'lora_alpha'"),
        ({"lora_alpha": "16"}, "'lora_alpha'"),
        ({"use_rslora": "yes"}, "'use_rslora'"),
        ({"rank_pattern": ["q_proj"]}, "'rank_pattern'"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
        ({"alpha_pattern": {"(": 2}}, "regular expression"),
        ({"bias": "some"}, "'bias'"),
        ({"modules_to_save": 3}, "'modules_to_save'"),
    ],
)
def test_bad_config_values(changes, needle):
    with pytest.raises(AdapterFormatError) as info:
        parse_config({"r": 4, "lora_alpha": 8, **changes}, where="user/x")
    assert needle in str(info.value) and "user/x" in str(info.value)


def test_missing_files(tmp_path):
    with pytest.raises(AdapterNotFoundError, match="no such directory"):
        load_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterNotFoundError, match="no adapter_config.json"):
        load_adapter(tmp_path / "empty")
    (tmp_path / "empty" / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(AdapterNotFoundError, match="no adapter_model.safetensors"):
        load_adapter(tmp_path / "empty")


def test_broken_files(tmp_path):
    directory = make_adapter(tmp_path / "a")
    weights = directory / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterFormatError, match="not a readable safetensors file"):
        load_adapter(directory)
    (directory / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFormatError, match="not valid JSON"):
        load_adapter(directory)
    (directory / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(AdapterFormatError, match="JSON object"):
        load_adapter(directory)


def test_embedding_and_saved_layers_are_indexed(tmp_path):
    directory = make_adapter(tmp_path / "e", target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"])
    adapter = load_adapter(directory)
    assert adapter.modules["model.embed_tokens"].kind == "embedding"
    assert adapter.modules["model.embed_tokens"].in_features == 96  # vocabulary
    assert adapter.saved_modules == {"lm_head": ["base_model.model.lm_head.weight"]}
    assert adapter.base_layers == {"model.embed_tokens": ["base_model.model.model.embed_tokens.base_layer.weight"]}
    assert adapter.problems == []


@pytest.mark.parametrize(
    "pattern",
    [
        {"q_proj": 2, "layers.1.self_attn.q_proj": 4},
        {"layers.1.self_attn.q_proj": 4, "q_proj": 2},
        {r"layers\.0\..*": 3, "proj": 5},
        {"model.layers.0.self_attn.v_proj": 6},
    ],
)
def test_pattern_matching_equals_peft(pattern):
    from peft.utils.other import get_pattern_key

    config = parse_config({"r": 8, "rank_pattern": pattern})
    for module in (
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.11.self_attn.q_proj",
    ):
        expected = pattern.get(get_pattern_key(pattern.keys(), module), 8)
        assert config.rank_for(module) == expected, module
