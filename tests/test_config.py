"""adapter_config.json: the fields that change the math, typed, matched the way PEFT matches them."""

from __future__ import annotations

import math

import pytest

from hubmerge.config import parse_config
from hubmerge.errors import AdapterFormatError


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


def test_base_changing_inits_say_how_to_convert_only_where_peft_can():
    # PEFT's path_initial_model_for_weight_conversion converts PiSSA, OLoRA, CorDA and LoRA-GA adapters; LoftQ's
    # base is the quantized residual saved with it, which no conversion gives back.
    for init in ("pissa", "olora", "corda", "lora_ga"):
        assert (
            "path_initial_model_for_weight_conversion"
            in parse_config({"r": 4, "init_lora_weights": init}).unsupported["init_lora_weights"]
        )
    loftq = parse_config({"r": 4, "init_lora_weights": "loftq"}).unsupported["init_lora_weights"]
    assert "path_initial_model_for_weight_conversion" not in loftq and "LoftQ" in loftq


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
