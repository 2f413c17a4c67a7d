"""Reading adapters from disk: scales as PEFT applies them, PEFT's key names, missing and broken files."""

from __future__ import annotations

import json

import pytest

from hubmerge.adapter import load_adapter
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
