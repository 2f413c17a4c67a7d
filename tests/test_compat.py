"""Every refusal of the compatibility check: exit code, exception type, a message
naming the source and key, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hubmerge
from hubmerge.cli import main
from hubmerge.errors import IncompatibleAdaptersError, UnsafeAdapterError
from tests.factory import make_adapter, peft_logits, reference_logits

Q0 = "model.layers.0.self_attn.q_proj"


def edit_config(directory: Path, **changes) -> Path:
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return directory


def edit_tensors(directory: Path, change) -> Path:
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)
    return directory


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pair(tmp_path):
    return make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)


def refuse(capsys, tmp_path, sources, *needles, extra=()):
    """Run the CLI, expect exit 1 with every needle in the message and no output written."""
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, *sources, "-o", out_dir, *extra)
    assert code == 1, (out, err)
    assert err.startswith("hubmerge: error:")
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not out_dir.exists()
    assert "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "no staging left behind"
    with pytest.raises(IncompatibleAdaptersError if "problem" in err else hubmerge.HubmergeError):
        hubmerge.merge(sources, **({"allow_pickle": True} if "--allow-pickle" in extra else {}))
    return err


def test_not_lora(capsys, tmp_path, pair):
    a, b = pair
    edit_config(b, peft_type="LOHA")
    refuse(capsys, tmp_path, [a, b], str(b), "peft_type is 'LOHA'")


def test_dora_refused_with_reason(capsys, tmp_path):
    a = make_adapter(tmp_path / "a", seed=1)
    b = make_adapter(tmp_path / "dora", seed=2, use_dora=True)
    refuse(capsys, tmp_path, [a, b], str(b), "use_dora", "DoRA", "lora_magnitude_vector")


def test_lora_bias_refused(capsys, tmp_path):
    a = make_adapter(tmp_path / "a", seed=1)
    b = make_adapter(tmp_path / "biased", seed=2, lora_bias=True)
    refuse(capsys, tmp_path, [a, b], str(b), "lora_bias", "lora_B.bias")


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_trained_bias_refused(capsys, tmp_path, bias):
    """GPT-2's layers have biases: PEFT saves the trained ones, values that cannot be summed."""
    a = make_adapter(tmp_path / "a", base="gpt2")
    b = make_adapter(tmp_path / "b", base="gpt2", seed=2, bias=bias)
    err = refuse(capsys, tmp_path, [a, b], str(b), f"bias={bias!r}", "transformer.h.0.attn.c_attn.base_layer.bias")
    assert err.splitlines()[0].startswith("hubmerge: error:") and "trained bias" in err


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_a_bias_setting_on_a_model_without_biases_merges_exactly(capsys, tmp_path, bias):
    """Llama's layers have no bias: PEFT saves none, the adapter is a plain LoRA and the sum is exact."""
    a = make_adapter(tmp_path / "a")
    b = make_adapter(tmp_path / "b", seed=2, bias=bias)
    code, _, err = cli(capsys, a, b, "-o", tmp_path / "out", "--no-figure")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text()).get("bias", "none") == "none"
    merged = peft_logits("llama", tmp_path / "out")
    torch.testing.assert_close(merged, reference_logits("llama", [(a, 1.0), (b, 1.0)]), rtol=1e-4, atol=1e-4)


def test_base_model_mismatch_refused_then_allowed(capsys, tmp_path, pair):
    a, b = pair
    edit_config(b, base_model_name_or_path="someone/other-model")
    refuse(
        capsys,
        tmp_path,
        [a, b],
        str(b),
        "someone/other-model",
        "test-org/tiny-llama",
        "--allow-base-mismatch",
    )
    code, out, _ = cli(capsys, a, b, "--allow-base-mismatch", "--report-only", "--json")
    assert code == 0
    report = json.loads(out)
    assert [w["code"] for w in report["warnings"]].count("base_model_mismatch") == 1


def test_base_model_names_are_normalised(capsys, tmp_path, pair):
    a, b = pair
    edit_config(b, base_model_name_or_path="Test-Org/Tiny-Llama/")
    code, _, err = cli(capsys, a, b, "--report-only")
    assert code == 0, err


def test_base_revision_mismatch(capsys, tmp_path, pair):
    a, b = pair
    edit_config(a, revision="v1")
    edit_config(b, revision="v2")
    refuse(capsys, tmp_path, [a, b], "revisions differ", "'v1'", "'v2'")


def test_feature_mismatch_names_module(capsys, tmp_path, pair):
    a, b = pair
    key = f"base_model.model.{Q0}.lora_A.weight"
    edit_tensors(b, lambda t: t.__setitem__(key, torch.randn(t[key].shape[0], 20)))
    refuse(capsys, tmp_path, [a, b], str(b), Q0, "20→32", "32→32")


def test_task_type_difference_is_a_warning(capsys, tmp_path, pair):
    a, b = pair
    edit_config(a, task_type="CAUSAL_LM")
    code, out, _ = cli(capsys, a, b, "--report-only", "--json")
    assert code == 0
    assert "task_type_mismatch" in [w["code"] for w in json.loads(out)["warnings"]]


def test_modules_to_save_twice_refused(capsys, tmp_path):
    a = make_adapter(tmp_path / "a", seed=1, modules_to_save=["lm_head"])
    b = make_adapter(tmp_path / "b", seed=2, modules_to_save=["lm_head"])
    refuse(capsys, tmp_path, [a, b], "'lm_head'", str(a), str(b), "modules_to_save")


def test_module_saved_inside_another_adapters_saved_module_refused(capsys, tmp_path):
    # One adapter saves the whole MLP of layer 0, another its down_proj alone: two full copies of
    # down_proj's weight, and a file PEFT cannot load (it looks for down_proj inside the wrapped mlp).
    a = make_adapter(tmp_path / "a", seed=1, modules_to_save=["layers.0.mlp"])
    b = make_adapter(tmp_path / "b", seed=2, modules_to_save=["layers.0.mlp.down_proj"])
    err = refuse(capsys, tmp_path, [a, b], "'model.layers.0.mlp.down_proj'", "'model.layers.0.mlp'", str(a), str(b))
    assert "modules_to_save" in err.splitlines()[1]


def test_single_modules_to_save_is_reported(tmp_path):
    a = make_adapter(tmp_path / "a", seed=1, modules_to_save=["lm_head"])
    b = make_adapter(tmp_path / "b", seed=2)
    result = hubmerge.merge([a, b])
    assert result.report.to_dict()["modules_to_save"] == [{"module": "lm_head", "from": "a"}]
    assert "modules_to_save" in [w.code for w in result.warnings]
    assert result.config["modules_to_save"] == ["lm_head"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_names_file_and_key(capsys, tmp_path, pair, bad):
    a, b = pair
    key = f"base_model.model.{Q0}.lora_B.weight"

    def poison(t):
        t[key][0, 0] = bad

    edit_tensors(b, poison)
    refuse(capsys, tmp_path, [a, b], str(b), "adapter_model.safetensors", key, "NaN/Inf")


def test_missing_partner(capsys, tmp_path, pair):
    a, b = pair
    key = f"base_model.model.{Q0}.lora_B.weight"
    edit_tensors(b, lambda t: t.pop(key))
    refuse(capsys, tmp_path, [a, b], str(b), Q0, "has lora_A but no lora_B")


def test_shape_contradicts_config(capsys, tmp_path, pair):
    a, b = pair
    edit_config(b, r=8)
    refuse(capsys, tmp_path, [a, b], str(b), "rank 4", "rank 8", Q0)


def test_rank_pattern_contradicts_tensor(capsys, tmp_path, pair):
    a, b = pair
    edit_config(b, rank_pattern={"layers.1.self_attn.v_proj": 2})
    refuse(capsys, tmp_path, [a, b], "model.layers.1.self_attn.v_proj", "rank 2")


def test_unknown_tensor_key(capsys, tmp_path, pair):
    a, b = pair
    edit_tensors(b, lambda t: t.__setitem__("base_model.model.something.weird", torch.zeros(2)))
    refuse(capsys, tmp_path, [a, b], "something.weird", "matches no PEFT LoRA name")


def test_integer_tensor(capsys, tmp_path, pair):
    a, b = pair
    key = f"base_model.model.{Q0}.lora_A.weight"
    edit_tensors(b, lambda t: t.__setitem__(key, t[key].to(torch.int32)))
    refuse(capsys, tmp_path, [a, b], key, "torch.int32")


def test_factors_of_different_dimensions_refused(capsys, tmp_path, pair):
    """A 4-D lora_A next to a 2-D lora_B is neither a Linear's LoRA nor a convolution's (tests/test_conv.py)."""
    a, b = pair
    key = f"base_model.model.{Q0}.lora_A.weight"
    edit_tensors(b, lambda t: t.__setitem__(key, t[key].reshape(4, 32, 1, 1).contiguous()))
    refuse(capsys, tmp_path, [a, b], key, "of the same number of dimensions")


def test_all_problems_reported_at_once(capsys, tmp_path, pair):
    a, b = pair
    edit_config(a, peft_type="IA3")
    edit_config(b, use_dora=True, base_model_name_or_path="other/model")
    err = refuse(capsys, tmp_path, [a, b], "3 problems", "peft_type", "use_dora", "other/model")
    assert err.count("\n  - ") == 3


def test_pickle_only_refused_unless_allowed(capsys, tmp_path, pair):
    a, b = pair
    tensors = load_file(b / "adapter_model.safetensors")
    torch.save(tensors, b / "adapter_model.bin")
    (b / "adapter_model.safetensors").unlink()
    code, _, err = cli(capsys, a, b, "-o", tmp_path / "out")
    assert code == 1 and "pickle" in err and "--allow-pickle" in err and str(b) in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnsafeAdapterError):
        hubmerge.merge([a, b])

    code, _, err = cli(capsys, a, b, "-o", tmp_path / "out", "--allow-pickle")
    assert code == 0, err
    reference = make_adapter(tmp_path / "b-safe", seed=2)
    expected = hubmerge.merge([a, reference]).tensors
    merged = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[k], expected[k]) for k in merged)


def test_saved_embeddings_must_agree(capsys, tmp_path):
    a = make_adapter(tmp_path / "a", seed=1, target_modules=["embed_tokens", "q_proj"])
    b = make_adapter(tmp_path / "b", seed=2, target_modules=["embed_tokens"])
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    edit_tensors(b, lambda t: t.__setitem__(key, t[key] + 1.0))
    refuse(capsys, tmp_path, [a, b], str(b), "'model.embed_tokens'", "differ", "resized vocabulary")


def test_saved_embeddings_in_different_dtypes_say_so(capsys, tmp_path):
    # The same float32 base embedding, saved by an adapter trained in float32 and by one trained in bfloat16:
    # the values differ by bfloat16's rounding, not because the vocabulary was resized.
    a = make_adapter(tmp_path / "a", seed=1, target_modules=["embed_tokens", "q_proj"])
    b = make_adapter(tmp_path / "b", seed=2, target_modules=["embed_tokens"])
    edit_tensors(b, lambda t: t.update({k: v.to(torch.bfloat16) for k, v in t.items()}))
    err = refuse(capsys, tmp_path, [a, b], str(b), "'model.embed_tokens'", "bfloat16", "float32", "precision")
    assert "resized vocabulary" not in err


def test_saved_embedding_is_carried_over(tmp_path):
    a = make_adapter(tmp_path / "a", seed=1, target_modules=["embed_tokens", "q_proj"])
    b = make_adapter(tmp_path / "b", seed=2, target_modules=["embed_tokens"])
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    merged = hubmerge.merge([a, b]).tensors
    assert torch.equal(merged[key], load_file(a / "adapter_model.safetensors")[key])
