"""llama.cpp for the tests: its own LoRA converter (from the llama-cpp-python sdist on PyPI) and, for the slow
test, llama.cpp itself built from that sdist. Both are cached outside the repository, in ~/.cache/hubmerge-llama.

The sdist is fetched with pip from the package registry (code, not model data); nothing of llama.cpp is
copied into this repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python, which vendors llama.cpp and its gguf-py
CACHE = Path.home() / ".cache" / "hubmerge-llama"
SDIST = CACHE / "sdist" / f"llama_cpp_python-{VERSION}.tar.gz"
SOURCE = CACHE / "sdist" / f"llama_cpp_python-{VERSION}"
VENV = CACHE / "venv"


def llama_cpp_source() -> Path:
    """The vendored llama.cpp tree (with convert_lora_to_gguf.py and gguf-py), downloaded once."""
    tree = SOURCE / "vendor" / "llama.cpp"
    if (tree / "convert_lora_to_gguf.py").is_file():
        return tree
    SDIST.parent.mkdir(parents=True, exist_ok=True)
    if not SDIST.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}", "--no-deps",
             "--no-binary", ":all:", "-d", str(SDIST.parent)],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    with tarfile.open(SDIST) as archive:
        archive.extractall(SDIST.parent, filter="data")
    return tree


def run_converter(adapter: Path, base: Path, out: Path, outtype: str = "f32") -> Path:
    """llama.cpp's own convert_lora_to_gguf.py on a PEFT adapter, with the base's config.json from ``base``."""
    script = llama_cpp_source() / "convert_lora_to_gguf.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(script), "--base", str(base), "--outfile", str(out), "--outtype", outtype, str(adapter)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"convert_lora_to_gguf.py failed:\n{done.stderr[-3000:]}")
    return out


def llama_cpp_python() -> Path:
    """A Python with llama-cpp-python built from source (about 4 minutes on 2 cores, then cached)."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    llama_cpp_source()
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    env = {
        **os.environ,
        "CMAKE_ARGS": "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
        "-DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON",
        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
    }
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "numpy", str(SDIST)], check=True, env=env)
    return python


def dequantized_copy(source: Path, target: Path) -> Path:
    """``source`` (a quantised GGUF model) with every tensor dequantised to float32, all metadata kept.

    The same weights, without llama.cpp's quantised matmuls, which quantise the activations too
    (Q8 blocks) and so turn rounding-level differences into visible logit differences.
    """
    import gguf
    import numpy as np

    if target.is_file():
        return target
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    partial = target.with_suffix(".part")
    writer = gguf.GGUFWriter(str(partial), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        if field.name == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32)
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, np.ascontiguousarray(data.reshape(list(reversed(tensor.shape.tolist())))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(target)
    return target


def gpt2_gguf(model, target: Path) -> Path:
    """A GGUF of a (tiny) transformers GPT2LMHeadModel, in llama.cpp's gpt2 layout, float32.

    Written by hand with gguf-py because llama.cpp's convert_hf_to_gguf.py needs a real tokenizer: the
    vocabulary here is placeholder tokens (the tests feed token ids), the weights are the model's own, with
    the Conv1D weights transposed as llama.cpp's conversion transposes them.
    """
    import gguf
    import numpy as np

    config = model.config
    writer = gguf.GGUFWriter(str(target), "gpt2")
    writer.add_name("tiny-gpt2")
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list([f"<t{i}>" for i in range(config.vocab_size)])
    writer.add_token_types([int(gguf.TokenType.NORMAL)] * config.vocab_size)
    writer.add_token_merges(["<t3> <t4>"])  # llama.cpp needs the key; the tests never tokenise text
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    names = {
        "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
        "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
    }  # fmt: skip
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["transformer.wte.weight"])
    writer.add_tensor("position_embd.weight", state["transformer.wpe.weight"])
    for layer in range(config.n_layer):
        for hf, ll in names.items():
            weight = state[f"transformer.h.{layer}.{hf}.weight"]
            conv = hf.startswith(("attn.", "mlp."))
            writer.add_tensor(f"blk.{layer}.{ll}.weight", np.ascontiguousarray(weight.T if conv else weight))
            writer.add_tensor(f"blk.{layer}.{ll}.bias", state[f"transformer.h.{layer}.{hf}.bias"])
    writer.add_tensor("output_norm.weight", state["transformer.ln_f.weight"])
    writer.add_tensor("output_norm.bias", state["transformer.ln_f.bias"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
