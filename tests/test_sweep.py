"""The sweep: tiny architectures × adapter configurations, each exact against two references or refused cleanly.

Exact means, for the merged adapter loaded by PEFT: its merged weights equal
base + Σ wᵢ·ΔWᵢ (ΔWᵢ from PEFT's ``get_delta_weight`` on each source alone) on
every parameter of the model, and its logits equal both that model's and those
of PEFT applying all sources at once (``tests/arch_zoo.py``). Refused means
exit 1, the reason on the first problem line, nothing written.

``docs/compatibility.md`` is checked against :data:`CASES` by
``tests/test_compatibility_doc.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from hubmerge.cli import main
from tests.arch_zoo import base_model, dense_reference, logits, make_adapter, peft_all_at_once, peft_selects

ATOL = 2e-5
_LM_ALL = dict(target_modules="all-linear")

# case id → (architecture, adapter configs, weights, expected: "exact" or the refusal's reason)
CASES: dict[str, tuple[str, list[dict], list[float], str]] = {
    "llama: all-linear + list, different r": (
        "llama", [dict(_LM_ALL), dict(target_modules=["q_proj", "v_proj"], r=2)], [1.0, 1.0], "exact"),
    "llama: regex target + rsLoRA, negative weight": (
        "llama", [dict(target_modules=r".*\.(k_proj|o_proj)", use_rslora=True, r=8, lora_alpha=4),
                  dict(target_modules=["o_proj", "up_proj"])], [0.5, -1.0], "exact"),
    "llama: rank/alpha patterns, layers_to_transform": (
        "llama", [dict(target_modules=["q_proj", "down_proj"], rank_pattern={"down_proj": 2},
                       alpha_pattern={"q_proj": 3}),
                  dict(target_modules=["q_proj"], layers_to_transform=[1], r=3)], [1.0, 2.0], "exact"),
    "llama: exclude_modules": (
        "llama", [dict(_LM_ALL, exclude_modules=["down_proj"]), dict(target_modules=["down_proj"])], [1.0, 1.0],
        "exact"),
    "llama: embedding LoRA + lm_head in modules_to_save": (
        "llama", [dict(target_modules=["embed_tokens", "q_proj"]),
                  dict(target_modules=["v_proj"], modules_to_save=["lm_head"])], [1.0, 0.5], "exact"),
    "gpt2: Conv1D all-linear + saved embeddings (wte)": (
        "gpt2", [dict(_LM_ALL), dict(target_modules=["c_attn"], save_embedding_layers=True)], [1.0, 1.0], "exact"),
    "gpt_neox: fused query_key_value + saved embeddings (embed_in)": (
        "gpt_neox", [dict(target_modules=["query_key_value"], save_embedding_layers=True),
                     dict(target_modules=["dense_4h_to_h"])], [1.0, -0.5], "exact"),
    "bloom: saved embeddings (word_embeddings)": (
        "bloom", [dict(target_modules=["query_key_value"], save_embedding_layers=True),
                  dict(target_modules=["dense"])], [1.0, 1.0], "exact"),
    "t5: encoder-decoder, all-linear + list": (
        "t5", [dict(_LM_ALL, task_type="SEQ_2_SEQ_LM"), dict(target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM", r=2)],
        [1.0, 1.0], "exact"),
    "bert: SEQ_CLS head carried + LoRA elsewhere": (
        "bert_cls", [dict(target_modules=["query", "value"]),
                     dict(target_modules=["key"], task_type=None)], [1.0, 1.0], "exact"),
    "distilbert: SEQ_CLS (pre_classifier saved too by endswith)": (
        "distilbert_cls", [dict(target_modules=["q_lin", "v_lin"]),
                           dict(target_modules=["k_lin"], task_type=None)], [1.0, 1.0], "exact"),
    "roberta: classifier saved whole + LoRA on classifier.dense": (
        "roberta_cls", [dict(target_modules=["query"]),
                        dict(target_modules=["dense"], task_type=None)], [1.0, 1.0],
        "is saved in full (modules_to_save)"),
    "two SEQ_CLS heads": (
        "bert_cls", [dict(target_modules=["query"]), dict(target_modules=["value"])], [1.0, 1.0],
        "is saved in full (modules_to_save) by several adapters"),
    "llava: all-linear (vision tower, projector, language model) + list": (
        "llava", [dict(_LM_ALL), dict(target_modules=["q_proj", "linear_1"])], [1.0, 1.0], "exact"),
    "qwen2_vl: all-linear (merger mlp.0 / mlp.2) + list": (
        "qwen2_vl", [dict(_LM_ALL), dict(target_modules=["q_proj"])], [1.0, 0.5], "exact"),
    "gemma3 VLM: all-linear + list": (
        "gemma3_vlm", [dict(_LM_ALL), dict(target_modules=["q_proj", "fc2"])], [1.0, 1.0], "exact"),
    "idefics3: all-linear + list": (
        "idefics3", [dict(_LM_ALL), dict(target_modules=["v_proj", "proj"])], [1.0, -1.0], "exact"),
    "phi3: fused qkv_proj / gate_up_proj": (
        "phi3", [dict(target_modules=["qkv_proj", "gate_up_proj"]), dict(_LM_ALL, r=2)], [1.0, 1.0], "exact"),
    "opt: three adapters": (
        "opt", [dict(_LM_ALL), dict(target_modules=["q_proj", "v_proj"], r=8, lora_alpha=32),
                dict(target_modules=["fc1"], use_rslora=True)], [1.0, 0.5, -0.25], "exact"),
    "falcon: saved embeddings (word_embeddings)": (
        "falcon", [dict(target_modules=["query_key_value"], save_embedding_layers=True),
                   dict(target_modules=["dense_h_to_4h"])], [1.0, 1.0], "exact"),
    "mamba: in_proj / x_proj": (
        "mamba", [dict(target_modules=["in_proj", "x_proj"]), dict(target_modules=["x_proj", "in_proj"], r=2)],
        [1.0, 1.0], "exact"),
    "gpt2, tied embeddings: saved embeddings": (
        "gpt2_tied", [dict(target_modules=["c_attn"], save_embedding_layers=True),
                      dict(target_modules=["c_fc"])], [1.0, 1.0], "exact"),
    "gpt2: layers_to_transform with layers_pattern h": (
        "gpt2", [dict(target_modules=["c_attn"], layers_to_transform=[0], layers_pattern="h"),
                 dict(target_modules=["c_attn", "c_proj"])], [1.0, 1.0], "exact"),
    "bart: encoder-decoder, all-linear + list": (
        "bart", [dict(_LM_ALL), dict(target_modules=["q_proj", "fc2"])], [1.0, 1.0], "exact"),
    "whisper: audio encoder-decoder": (
        "whisper", [dict(target_modules=["q_proj", "v_proj"]), dict(target_modules=["fc1", "q_proj"])],
        [1.0, 1.0], "exact"),
    "vit: convolution LoRA on the patch embedding (Conv2d, 4×4 kernel)": (
        "vit_cls", [dict(target_modules=["projection", "query"], modules_to_save=["classifier"]),
                    dict(target_modules=["projection"], r=2, use_rslora=True)], [1.0, 1.0], "exact"),
    "vit: image classifier head carried + LoRA": (
        "vit_cls", [dict(target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]),
                    dict(target_modules=["fc1"])], [1.0, 1.0], "exact"),
    "llama: lm_head saved in full by one, LoRA on it in another": (
        "llama", [dict(target_modules=["q_proj"], modules_to_save=["lm_head"]), dict(target_modules=["lm_head"])],
        [1.0, 1.0], "is saved in full (modules_to_save)"),
    "llama classifier: score saved + LoRA": (
        "llama_cls", [dict(target_modules=["q_proj"]), dict(target_modules=["k_proj", "down_proj"], task_type=None)],
        [1.0, 1.0], "exact"),
    "llama classifier: all-linear includes score, saved in full by the other": (
        "llama_cls", [dict(target_modules=["q_proj"]), dict(_LM_ALL, task_type=None)], [1.0, 1.0],
        "is saved in full (modules_to_save)"),
    "gpt2, tied embeddings: embedding LoRA on wte": (
        "gpt2_tied", [dict(target_modules=["wte", "c_attn"]), dict(target_modules=["wte"])], [1.0, -1.0], "exact"),
    "t5: saved embeddings (shared)": (
        "t5", [dict(target_modules=["q"], save_embedding_layers=True), dict(target_modules=["wo"])],
        [1.0, 1.0], "exact"),
    "mixtral: attention (experts left to target_parameters)": (
        "mixtral", [dict(target_modules=["q_proj", "o_proj"]), dict(target_modules=["v_proj"], r=2)],
        [1.0, 1.0], "exact"),
    "qwen2_moe: attention + shared expert": (
        "qwen2_moe", [dict(target_modules=["q_proj", "shared_expert.up_proj"]),
                      dict(target_modules=["k_proj", "shared_expert.down_proj"])], [1.0, -1.0], "exact"),
    "llama: DoRA": (
        "llama", [dict(use_dora=True), dict()], [1.0, 1.0], "use_dora is set"),
}  # fmt: skip


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_exact(arch: str, sources, out) -> None:
    """The merged adapter in ``out`` equals both references on ``arch``."""
    reference = dense_reference(arch, sources)
    peft_model = PeftModel.from_pretrained(base_model(arch), str(out)).eval()
    got = logits(peft_model, arch)
    if not _lora_on_a_tied_embedding(peft_model):
        torch.testing.assert_close(got, logits(reference, arch), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(got, logits(peft_all_at_once(arch, sources), arch), atol=ATOL, rtol=1e-5)
    with torch.no_grad():
        merged = peft_model.merge_and_unload().state_dict()
    expected = reference.state_dict()
    assert merged.keys() == expected.keys()
    original = base_model(arch).state_dict()
    changed = 0
    for name, value in expected.items():
        torch.testing.assert_close(merged[name], value, atol=ATOL, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        changed += not torch.equal(value, original[name])
    assert changed, "the adapters must change some weights"


def _lora_on_a_tied_embedding(model: PeftModel) -> bool:
    """A LoRA on an embedding tied to the output head: PEFT's unmerged forward leaves the head alone, while
    a delta added to the shared weight (merged, or by hand) changes both; the logits then differ by design."""
    inner = model.base_model.model
    embedding, head = inner.get_input_embeddings(), inner.get_output_embeddings()
    weight = getattr(getattr(embedding, "base_layer", embedding), "weight", None)
    return head is not None and weight is not None and head.weight is weight and hasattr(embedding, "lora_A")


@pytest.mark.parametrize("case", list(CASES))
def test_sweep(tmp_path, capsys, case):
    arch, specs, weights, expected = CASES[case]
    dirs = [make_adapter(tmp_path / f"in{i}", arch, seed=i + 1, **spec) for i, spec in enumerate(specs)]
    out = tmp_path / "out"
    code, err = run_cli(capsys, *dirs, f"--weights={','.join(map(str, weights))}", "-o", out)
    if expected != "exact":
        assert code == 1, err
        lines = err.splitlines()
        first_problem = lines[[i for i, line in enumerate(lines) if line.startswith("hubmerge: error:")][0] + 1]
        assert expected in first_problem, err
        assert not out.exists()
        return
    assert code == 0, err
    assert_exact(arch, list(zip(dirs, weights)), out)
    # target_modules selects exactly the modules that carry factors
    config = json.loads((out / "adapter_config.json").read_text())
    names = {n for n, _ in base_model(arch).named_modules()}
    selected = {n for n in names if peft_selects(config["target_modules"], n)}
    report = json.loads((out / "hubmerge_report.json").read_text())
    assert selected == set(report["modules"]["coverage"])


def test_a_saved_embedding_goes_under_the_lora_another_adapter_puts_on_it(tmp_path, capsys):
    # One adapter saves GPT-2's lm_head in full (save_embedding_layers; changed here, as a resized or retrained
    # head would be); another puts a LoRA on lm_head. PEFT loads a full weight of a LoRA-wrapped module only as
    # `lm_head.base_layer.weight`.
    saved = make_adapter(tmp_path / "saved", "gpt2", seed=1, target_modules=["c_attn"], save_embedding_layers=True)
    path = saved / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.lm_head.weight"
    tensors[key] = tensors[key] + 0.5
    save_file(tensors, path)
    lora = make_adapter(tmp_path / "lora", "gpt2", seed=2, target_modules=["lm_head"], save_embedding_layers=False)
    out = tmp_path / "out"
    code, err = run_cli(capsys, saved, lora, "-o", out)
    assert code == 0, err
    assert "base_model.model.lm_head.base_layer.weight" in load_file(out / "adapter_model.safetensors")
    assert_exact("gpt2", [(saved, 1.0), (lora, 1.0)], out)


def test_a_module_saved_in_full_wins_over_the_saved_embedding_of_another_adapter(tmp_path, capsys):
    # One adapter trains GPT-2's lm_head as a full copy (modules_to_save, changed here as training would);
    # another saves the base embeddings, lm_head among them (save_embedding_layers). PEFT applying both uses
    # the trained copy: the other's base weight must not be written over it under the same tensor name.
    trained = make_adapter(tmp_path / "trained", "gpt2", seed=1, target_modules=["c_attn"], modules_to_save=["lm_head"])
    path = trained / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.lm_head.weight"
    tensors[key] = tensors[key] + torch.randn(tensors[key].shape, generator=torch.Generator().manual_seed(0))
    save_file(tensors, path)
    embeddings = make_adapter(tmp_path / "emb", "gpt2", seed=2, target_modules=["c_fc"], save_embedding_layers=True)
    assert key in load_file(embeddings / "adapter_model.safetensors")
    for sources in ([trained, embeddings], [embeddings, trained]):
        out = tmp_path / "out"
        code, err = run_cli(capsys, *sources, "-o", out, "--overwrite")
        assert code == 0, err
        torch.testing.assert_close(load_file(out / "adapter_model.safetensors")[key], tensors[key], atol=0, rtol=0)
        assert_exact("gpt2", [(s, 1.0) for s in sources], out)
