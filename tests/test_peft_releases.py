"""The merged adapter_config.json loads in every supported PEFT release (hubmerge/peft_releases.py).

PEFT 0.6 to 0.13 call ``LoraConfig(**config)``: a key the release does not
know is a TypeError. The fields of each release come from its wheel
(``tests/make_peft_fields.py``); the installed PEFT checks that reading.
"""

from __future__ import annotations

import dataclasses
import json

import peft
import pytest

import hubmerge
from hubmerge.config import parse_config
from hubmerge.peft_releases import (
    OLDEST_SUPPORTED,
    config_fields,
    minimum_release,
    peft_releases,
    plain_target_names,
)
from tests.factory import make_adapter

# Defaults a release may have for a field the merged config leaves out, with why that is harmless.
NEUTRAL = {
    None: "off / not set",
    False: "off",
    "<factory: dict>": "empty",
    "<factory: list>": "empty",
}
NEUTRAL_FIELDS = {
    ("bias", "none"): "no bias",
    ("init_lora_weights", True): "the factors are loaded over it",
    ("lora_dropout", 0.0): "no dropout",
    ("megatron_core", "megatron.core"): "only read with megatron_config",
    ("qalora_group_size", 16): "only read with use_qalora",
    ("runtime_config", "<factory: LoraRuntimeConfig>"): "runtime options, not the delta",
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def supported() -> list[str]:
    return [v for v in peft_releases() if _version(v) >= _version(OLDEST_SUPPORTED)]


def test_fields_read_from_the_wheel_match_the_installed_peft():
    if peft.__version__ not in peft_releases():
        pytest.skip(f"peft {peft.__version__} is not in the data; run tests/make_peft_fields.py")
    installed = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    assert set(config_fields(peft.__version__)) == installed


def test_the_data_covers_the_declared_range():
    releases = list(peft_releases())
    assert releases[0] == "0.2.0" and OLDEST_SUPPORTED in releases
    for minor in range(3, 22):  # every minor release from 0.3 on
        assert any(v.startswith(f"0.{minor}.") for v in releases), minor


@pytest.fixture(scope="module")
def merged_configs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("configs")
    a = make_adapter(tmp / "a", seed=1, use_rslora=True, r=8, rank_pattern={"v_proj": 2}, lora_dropout=0.1)
    b = make_adapter(tmp / "b", seed=2, target_modules=["o_proj"], modules_to_save=["lm_head"], use_dora=False)
    g = make_adapter(tmp / "g", base="gpt2", seed=3)
    configs = {"llama": hubmerge.merge([a, b]).config, "gpt2": hubmerge.merge([g]).config}
    pinned = json.loads((a / "adapter_config.json").read_text())
    (a / "adapter_config.json").write_text(json.dumps({**pinned, "revision": "v1"}))
    (b / "adapter_config.json").write_text(
        json.dumps({**json.loads((b / "adapter_config.json").read_text()), "revision": "v1"})
    )
    configs["with revision"] = hubmerge.merge([a, b]).config
    return configs


def test_every_written_key_is_known_to_every_supported_release(merged_configs):
    for name, config in merged_configs.items():
        oldest = minimum_release(config)
        assert oldest == ("0.4.0" if config.get("revision") else OLDEST_SUPPORTED), name
        for release in supported():
            if _version(release) >= _version(oldest):
                unknown = set(config) - set(config_fields(release))
                assert not unknown, f"{name}: PEFT {release} has no field {sorted(unknown)}"
    assert "use_rslora" not in merged_configs["llama"] and "use_dora" not in merged_configs["llama"]
    # per feature: LoRA on parameters (MoE experts) needs the release that introduced target_parameters
    assert minimum_release({**merged_configs["llama"], "target_parameters": ["mlp.experts.down_proj"]}) == "0.17.0"


def test_every_field_left_out_defaults_to_something_harmless(merged_configs):
    for name, config in merged_configs.items():
        for release in supported():
            for field, default in config_fields(release).items():
                if field in config:
                    continue
                # identity for None/False, so that 0 does not pass as False
                harmless = any(default is k or (isinstance(k, str) and default == k) for k in NEUTRAL)
                harmless = harmless or (field, default) in NEUTRAL_FIELDS
                assert harmless, f"{name}: PEFT {release} would default {field} to {default!r}"


def test_the_written_config_loads_in_the_installed_peft(merged_configs):
    for config in merged_configs.values():
        loaded = peft.LoraConfig(**{k: v for k, v in config.items() if k != "peft_type"})
        targets = config["target_modules"]
        assert (loaded.r, loaded.lora_alpha) == (config["r"], config["lora_alpha"])
        assert loaded.target_modules == (targets if isinstance(targets, str) else set(targets))


@pytest.mark.parametrize(
    "targets, extra, expected",
    [
        (["q_proj", "v_proj"], {}, ["q_proj", "v_proj"]),
        ("all-linear", {}, ["q_proj", "v_proj"]),
        (["q_proj", "v_proj"], {"layers_to_transform": [1]}, None),  # layer 0 was not adapted
        ("all-linear", {"exclude_modules": ["v_proj"]}, None),
        (["self_attn.q_proj"], {}, None),  # a dotted name: its short name may select more
        (r".*\.q_proj", {}, None),
    ],
)
def test_names_are_written_only_where_they_select_exactly_the_merged_modules(targets, extra, expected):
    keys = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    config = parse_config({"r": 4, "peft_type": "LORA", "target_modules": targets, **extra})
    assert plain_target_names([config], keys) == expected
    assert plain_target_names([parse_config({"r": 4, "target_modules": "all-linear"})], ["visual.merger.mlp.0"]) is None


def test_the_oldest_loading_release_is_in_the_report_summary_and_card(tmp_path):
    """safetensors needs 0.4 whatever the config; a layer kind or a field raises it (tests/test_conv.py: Conv1d
    0.15, tests/test_experts.py: target_parameters 0.17)."""
    from hubmerge.peft_releases import loading_release
    from hubmerge.report import render_text

    a = make_adapter(tmp_path / "a", seed=1)
    result = hubmerge.merge([a])
    assert result.report.output.min_peft == "0.4.0"
    assert "loads in PEFT >= 0.4.0" in render_text(result.report)
    result.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert sum("loads in PEFT ≥ 0.4.0" in line for line in card.splitlines()) == 1
    assert loading_release(result.config, ["Conv2d"]) == "0.4.0"
    assert loading_release(result.config, ["Conv3d", "Conv2d"]) == "0.14.0"
    assert loading_release(result.config, ["Conv1d"]) == "0.15.0"
    assert loading_release({**result.config, "target_parameters": ["x.w"]}, ["Conv1d"]) == "0.17.0"
