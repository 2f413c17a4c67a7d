"""--gguf and hubmerge-gguf: tensor by tensor against llama.cpp's own convert_lora_to_gguf.py, read back with gguf.

llama.cpp's converter comes from the llama-cpp-python sdist (tests/llamacpp.py, cached outside the repo). Values
are also checked against PEFT's own dense deltas, so agreement with the converter is not the only evidence.
"""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from transformers import (
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import hubmerge
from hubmerge.cli import main
from hubmerge.errors import GGUFExportError
from hubmerge.gguf_cli import main as gguf_main
from hubmerge.gguf_export import GGUF_NAME, convert_to_gguf
from tests.factory import BASES, dense_deltas, make_adapter, tiny_gpt2, tiny_llama
from tests.llamacpp import run_converter

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MODELS = {
    "mistral": (MistralForCausalLM, MistralConfig, ATTENTION + ["gate_proj", "up_proj", "down_proj"]),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, ATTENTION),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, ATTENTION + ["down_proj"]),
}


def _save_base(model, directory):
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(directory)
    return directory


def _adapter(directory, model, targets, seed, r=4, save_embedding_layers=False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets,
                                                  init_lora_weights=False))  # fmt: skip
    peft_model.save_pretrained(directory, save_embedding_layers=save_embedding_layers)  # False: no full copies
    return directory


def _merged(tmp_path, build, targets, r=4, save_embedding_layers=False, **kwargs):
    """Two real PEFT adapters of one tiny base, merged by hubmerge; returns (merged dir, base config dir)."""
    base = _save_base(build(), tmp_path / "base")
    sources = [_adapter(tmp_path / f"s{seed}", build(), targets, seed, r, save_embedding_layers) for seed in (1, 2)]
    out = hubmerge.merge(sources, **kwargs).save_pretrained(tmp_path / "merged")
    return out, base


def _tensors(path) -> dict[str, tuple[list[int], np.ndarray]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (list(map(int, t.shape)), np.array(t.data)) for t in reader.tensors}


def _fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: reader.fields[name].contents() for name in reader.fields if not name.startswith("GGUF.")}


def _check_structure(path, config: dict, arch: str) -> None:
    fields = _fields(path)
    assert fields["general.architecture"] == arch and fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora" and fields["adapter.lora.alpha"] == float(config["lora_alpha"])
    tensors = _tensors(path)
    bases = {name.rsplit(".", 1)[0] for name in tensors}
    assert tensors and all(f"{b}.lora_a" in tensors and f"{b}.lora_b" in tensors for b in bases)
    for b in bases:
        (a_ne, _), (b_ne, _) = tensors[f"{b}.lora_a"], tensors[f"{b}.lora_b"]
        if b.startswith("token_embd."):  # A is stored transposed for the row lookup (llm_build_inp_embd)
            assert a_ne[0] == b_ne[0] == config["r"]
        else:
            assert a_ne[1] == b_ne[0] == config["r"]  # llama.cpp: "lora_a tensor is not transposed" otherwise


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
def test_llama_equals_llama_cpps_converter_tensor_by_tensor(tmp_path, outtype):
    targets = ATTENTION + ["gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"]
    merged, base = _merged(tmp_path, tiny_llama, targets)
    ours = convert_to_gguf(merged, base=base, outtype=outtype)
    reference = run_converter(merged, base, tmp_path / "ref.gguf", outtype)
    mine, theirs = _tensors(ours), _tensors(reference)
    assert sorted(mine) == sorted(theirs) and len(mine) == 2 * (7 * 2 + 2)
    for name, (shape, data) in mine.items():
        assert shape == theirs[name][0], name
        assert np.array_equal(data, theirs[name][1]), name
    _check_structure(ours, json.loads((merged / "adapter_config.json").read_text()), "llama")


def test_the_base_embeddings_peft_saves_beside_an_embedding_lora_are_left_out_as_the_converter_does(tmp_path):
    # PEFT's default (save_embedding_layers="auto") saves embed_tokens / lm_head .base_layer.weight: the base's own.
    merged, base = _merged(tmp_path, tiny_llama, ["q_proj", "embed_tokens", "lm_head"], save_embedding_layers="auto")
    assert hubmerge.load_adapter(merged).base_layers  # the merged adapter carries the copies
    mine = _tensors(convert_to_gguf(merged, base=base))
    theirs = _tensors(run_converter(merged, base, tmp_path / "ref.gguf"))
    assert sorted(mine) == sorted(theirs) and {"token_embd.weight.lora_a", "output.weight.lora_b"} <= set(mine)
    assert all(mine[n][0] == theirs[n][0] and np.array_equal(mine[n][1], theirs[n][1]) for n in mine)
    resized = json.loads((base / "config.json").read_text()) | {"vocab_size": 97}  # the copies are not this base's
    (tmp_path / "resized").mkdir()
    (tmp_path / "resized" / "config.json").write_text(json.dumps(resized))
    with pytest.raises(GGUFExportError, match="full weight copies of lm_head, model.embed_tokens"):
        convert_to_gguf(merged, base=tmp_path / "resized", overwrite=True)


def _typed(path) -> dict[str, tuple[gguf.GGMLQuantizationType, np.ndarray]]:
    return {t.name: (t.tensor_type, np.array(t.data)) for t in gguf.GGUFReader(path).tensors}


def test_q8_0_equals_llama_cpps_converter_and_reads_back_within_q8_0s_error(tmp_path):
    """Ranks 16 + 16: rows of 32 values (lora_a of q/v, the embedding's A transposed, every lora_b at r = 32) are
    whole Q8_0 blocks; down_proj's A (rows of 48) is not, and is written f16, as llama.cpp's converter does."""
    targets = ["q_proj", "v_proj", "down_proj", "embed_tokens"]
    merged, base = _merged(tmp_path, tiny_llama, targets, r=16)
    ours = _typed(convert_to_gguf(merged, base=base, outtype="q8_0"))
    theirs = _typed(run_converter(merged, base, tmp_path / "ref.gguf", "q8_0"))
    exact = _typed(convert_to_gguf(merged, base=base, outtype="f32", overwrite=True))
    assert sorted(ours) == sorted(theirs) == sorted(exact)
    q8, f16 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16
    for name, (kind, data) in ours.items():
        assert kind == theirs[name][0] and np.array_equal(data, theirs[name][1]), name  # the same bytes
        reference = exact[name][1]
        if reference.shape[-1] % 32:  # down_proj's A: rows of 48 are not whole blocks, so f16
            assert kind == f16 and np.array_equal(data.astype(np.float32), reference.astype(np.float16)), name
            continue
        assert kind == q8, name
        # Q8_0 stores round(x / d) with d = max|block| / 127 rounded to f16: |error| ≤ d/2 + 127·|d − f16(d)|.
        back = gguf.quants.dequantize(data, q8)
        assert back.shape == reference.shape
        blocks = np.abs(reference).reshape(-1, 32).max(axis=1, keepdims=True) / 127
        bound = blocks / 2 + 127 * np.abs(blocks - blocks.astype(np.float16).astype(np.float32))
        assert (np.abs(back - reference).reshape(-1, 32) <= bound * (1 + 1e-6)).all(), name
        assert np.abs(back - reference).max() > 0  # quantised, not copied
    assert sum(kind == q8 for kind, _ in ours.values()) == len(ours) - 2  # all but the two down_proj A


@pytest.mark.parametrize("family", sorted(MODELS))
def test_other_architectures_equal_the_converter(tmp_path, family):
    model_class, config_class, targets = MODELS[family]

    def build():
        torch.manual_seed(0)
        return model_class(config_class(**SMALL)).eval()

    merged, base = _merged(tmp_path, build, targets)
    ours, reference = convert_to_gguf(merged, base=base), run_converter(merged, base, tmp_path / "ref.gguf")
    mine, theirs = _tensors(ours), _tensors(reference)
    assert sorted(mine) == sorted(theirs)
    assert all(mine[n][0] == theirs[n][0] and np.array_equal(mine[n][1], theirs[n][1]) for n in mine)
    arch = {"mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[family]
    _check_structure(ours, json.loads((merged / "adapter_config.json").read_text()), arch)


def test_unpermuted_modules_carry_peft_deltas(tmp_path):
    # Independent of the converter: v_proj and down_proj are written without any reordering,
    # so B·A read back from the GGUF (ggml: ne = [in, out]) must be PEFT's own delta.
    merged, base = _merged(tmp_path, tiny_llama, ["q_proj", "v_proj", "down_proj"])
    tensors = _tensors(convert_to_gguf(merged, base=base))
    deltas = dense_deltas("llama", merged)
    for layer in range(2):
        for hf, ll in (("self_attn.v_proj", "attn_v"), ("mlp.down_proj", "ffn_down")):
            a, b = tensors[f"blk.{layer}.{ll}.weight.lora_a"][1], tensors[f"blk.{layer}.{ll}.weight.lora_b"][1]
            expected = deltas[f"model.layers.{layer}.{hf}.weight"].numpy()
            np.testing.assert_allclose(b @ a, expected, atol=1e-6, rtol=1e-5)


def test_gpt2_keeps_peft_layout_where_llama_cpps_converter_swaps_a_and_b(tmp_path):
    a1 = make_adapter(tmp_path / "a1", base="gpt2", seed=1, target_modules=["c_attn", "c_proj"])
    a2 = make_adapter(tmp_path / "a2", base="gpt2", seed=2, target_modules=["c_attn", "c_proj"])
    merged = hubmerge.merge([a1, a2]).save_pretrained(tmp_path / "merged")
    base = _save_base(tiny_gpt2(), tmp_path / "base")
    mine = _tensors(convert_to_gguf(merged, base=base))
    theirs = _tensors(run_converter(merged, base, tmp_path / "ref.gguf"))
    assert sorted(mine) == sorted(theirs)
    deltas = dense_deltas("gpt2", merged)  # PEFT's Conv1D deltas are in×out, like the Conv1D weight
    model = BASES["gpt2"][0]()
    for name in {n.rsplit(".", 1)[0] for n in mine}:
        (a_ne, a), (b_ne, b) = mine[f"{name}.lora_a"], mine[f"{name}.lora_b"]
        # the converter's pair is ours swapped and transposed (it transposes Conv1D weights and their LoRA alike)
        assert np.array_equal(theirs[f"{name}.lora_a"][1], b.T) and np.array_equal(theirs[f"{name}.lora_b"][1], a.T)
        layer, kind = int(name.split(".")[1]), name.split(".")[2]
        hf = {"attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_down": "mlp.c_proj"}[kind]
        conv = model.transformer.h[layer].get_submodule(hf).weight  # (in, out); llama.cpp holds it as ne = [in, out]
        assert a_ne[0] == conv.shape[0] and b_ne[1] == conv.shape[1]  # the shape check llama.cpp makes at load
        np.testing.assert_allclose(b @ a, deltas[f"transformer.h.{layer}.{hf}.weight"].numpy().T, atol=1e-6)


def test_refuses_what_llama_cpp_cannot_take(tmp_path):
    base = _save_base(tiny_llama(), tmp_path / "base")
    saved = make_adapter(tmp_path / "saved", target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(GGUFExportError, match="full weight copies of lm_head"):
        convert_to_gguf(saved, base=base)
    head = _adapter(tmp_path / "head", tiny_llama(), ["q_proj", "lm_head"], seed=1)
    tied = json.loads((base / "config.json").read_text()) | {"tie_word_embeddings": True}
    (tmp_path / "tied").mkdir()
    (tmp_path / "tied" / "config.json").write_text(json.dumps(tied))
    with pytest.raises(GGUFExportError, match="ties lm_head to the embeddings"):
        convert_to_gguf(head, base=tmp_path / "tied")
    other = json.loads((base / "config.json").read_text()) | {"architectures": ["FalconForCausalLM"]}
    (tmp_path / "falcon").mkdir()
    (tmp_path / "falcon" / "config.json").write_text(json.dumps(other))
    with pytest.raises(GGUFExportError, match="FalconForCausalLM has no GGUF LoRA conversion"):
        convert_to_gguf(head, base=tmp_path / "falcon")
    assert not any(p.name == GGUF_NAME for d in ("saved", "head") for p in (tmp_path / d).iterdir())


def test_rslora_scale_is_folded_into_b(tmp_path):
    source = make_adapter(tmp_path / "rs", target_modules=["v_proj"], use_rslora=True, r=4, lora_alpha=8)
    base = _save_base(tiny_llama(), tmp_path / "base")
    tensors = _tensors(convert_to_gguf(source, base=base))
    a, b = tensors["blk.0.attn_v.weight.lora_a"][1], tensors["blk.0.attn_v.weight.lora_b"][1]
    # llama.cpp applies alpha / rank = 2; PEFT's rsLoRA scale is alpha / √rank = 4
    np.testing.assert_allclose(2 * (b @ a), dense_deltas("llama", source)["model.layers.0.self_attn.v_proj.weight"],
                               atol=1e-6, rtol=1e-5)  # fmt: skip


def test_cli_gguf_writes_the_file_and_updates_the_verdict(tmp_path, capsys):
    a = make_adapter(tmp_path / "a", seed=1)
    b = make_adapter(tmp_path / "b", seed=2)
    base = _save_base(tiny_llama(), tmp_path / "base")
    code = main([str(a), str(b), "-o", str(tmp_path / "out"), "--gguf", "--gguf-base", str(base)])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "out" / GGUF_NAME).is_file()
    assert f"--lora {tmp_path / 'out'}/{GGUF_NAME}" in out
    report = json.loads((tmp_path / "out" / "hubmerge_report.json").read_text())
    llama_cpp = next(v for v in report["serving"]["engines"] if v["engine"] == "llama.cpp")
    assert llama_cpp["status"] == "servable" and report["serving"]["facts"]["gguf_type"] == "f32"
    # the separate entry point on the same folder writes the same file
    shutil.copytree(tmp_path / "out", tmp_path / "again")
    (tmp_path / "again" / GGUF_NAME).unlink()
    assert gguf_main([str(tmp_path / "again"), "--base", str(base)]) == 0
    again, first = _tensors(tmp_path / "again" / GGUF_NAME), _tensors(tmp_path / "out" / GGUF_NAME)
    assert again.keys() == first.keys() and all(np.array_equal(again[k][1], first[k][1]) for k in again)
    name = "general.name"  # the folder's name here, the merge's default repo name there; the rest is the same
    assert {k: v for k, v in _fields(tmp_path / "again" / GGUF_NAME).items() if k != name} == {
        k: v for k, v in _fields(tmp_path / "out" / GGUF_NAME).items() if k != name
    }
    assert gguf_main([str(tmp_path / "again"), "--base", str(base)]) == 1  # exists: refused without --overwrite
    assert "exists" in capsys.readouterr().err


def test_push_uploads_the_gguf_with_a_base_config_from_the_hub(tmp_path, capsys, hub):
    from huggingface_hub import constants

    from tests.conftest import TOKENS
    from tests.factory import LLAMA_ID

    if LLAMA_ID not in hub.list_repos():  # the whole tiny model, as tests/test_hub.py's base_repo puts it there
        folder = tmp_path / "base"
        tiny_llama().save_pretrained(folder)
        hub.create_repo(LLAMA_ID, owner_token=TOKENS["alice"])
        hub.commit_files(LLAMA_ID, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
    a, b = make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)
    target = "alice/gguf-push"
    assert main([str(a), str(b), "--gguf", "--push", target]) == 0, capsys.readouterr().err
    assert f"pushed to {constants.ENDPOINT}/{target}" in capsys.readouterr().out
    assert GGUF_NAME in hub.list_commits(target)[0]["files"]


def test_a_report_only_result_has_nothing_to_convert(tmp_path):
    from hubmerge.gguf_export import attach_gguf

    result = hubmerge.merge([make_adapter(tmp_path / "a")], report_only=True)
    with pytest.raises(GGUFExportError, match="report_only"):
        attach_gguf(result, base=_save_base(tiny_llama(), tmp_path / "base"))


def test_hubmerge_gguf_on_a_full_model_folder_says_it_is_one(tmp_path, capsys):
    tiny_llama().save_pretrained(tmp_path / "model")
    assert gguf_main([str(tmp_path / "model")]) == 1
    err = capsys.readouterr().err
    assert "looks like a full model, not a PEFT adapter" in err and "give a PEFT LoRA adapter instead" in err
    assert not (tmp_path / "model" / GGUF_NAME).exists()


def _naming_base(directory, base_name):
    """A real adapter whose adapter_config.json names ``base_name`` as its base model."""
    adapter = make_adapter(directory, seed=1)
    config = json.loads((adapter / "adapter_config.json").read_text()) | {"base_model_name_or_path": base_name}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


@pytest.mark.parametrize("named", ["alice/no-such-base", "/home/trainer/llama"])
def test_a_base_the_adapter_names_but_that_is_not_there_is_given_with_the_base_flag(tmp_path, capsys, hub, named):
    """The Hub has no such repo, or the adapter was trained from a folder of another machine: the way out is to
    give the base model, with --gguf-base (hubmerge --gguf) or --base (hubmerge-gguf), not to check a name."""
    adapter = _naming_base(tmp_path / "a", named)
    code = main([str(adapter), "-o", str(tmp_path / "out"), "--gguf", "--no-figure"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0, err
    assert named in err and "base_model_name_or_path" in err
    assert "; give the base model with --gguf-base DIR_OR_REPO" in err and "check the name" not in err
    assert not (tmp_path / "out").exists()
    assert gguf_main([str(adapter)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hubmerge-gguf: error:") and named in err
    assert "; give the base model with --base DIR_OR_REPO" in err and "--gguf-base" not in err
    assert not (adapter / GGUF_NAME).exists()


def test_hubmerge_gguf_gives_the_next_step_of_a_hub_failure_in_its_own_flags(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    adapter = make_adapter(tmp_path / "a", seed=1)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the adapter's base is not in the (empty) cache
    assert gguf_main([str(adapter)]) == 1
    err = capsys.readouterr().err.strip()
    assert "HF_HUB_OFFLINE" in err and err.endswith("; run once with network access, or unset HF_HUB_OFFLINE"), err
    assert gguf_main([str(adapter), "--base", "./no-such-folder"]) == 1  # a typo in --base: said, no traceback
    err = capsys.readouterr().err.strip()
    assert "'./no-such-folder' is neither a local directory nor a valid Hub repo id; check the name" in err, err
    assert "Traceback" not in err and "give the base model" not in err


def test_every_hubmerge_gguf_hint_names_only_flags_hubmerge_gguf_has():
    import re

    from hubmerge.cli_hints import GGUF_HINTS
    from hubmerge.gguf_cli import build_parser

    flags = {option for action in build_parser()._actions for option in action.option_strings}
    for hint in GGUF_HINTS.values():
        for flag in re.findall(r"(?<![\w-])--?[a-z][a-z-]*", hint):
            assert flag in flags, f"hint names {flag}, which hubmerge-gguf does not have: {hint}"


def test_hubmerge_gguf_says_to_check_a_rejected_token_flag(tmp_path, capsys, hub):
    token = "hf_notAtokenTHEhubKNOWS0123456789"
    # its base is read from the Hub with that token (a name no earlier request put in the cache, which
    # huggingface_hub would answer from when a request fails)
    adapter = _naming_base(tmp_path / "a", "alice/some-base")
    assert gguf_main([str(adapter), "--token", token]) == 1
    err = capsys.readouterr().err.strip()
    hint = "check the --token value, or leave it out to use your `hf auth login` token"
    assert "rejected the token" in err and err.endswith(f"; {hint}"), err
    assert token not in err and "give the base model" not in err
