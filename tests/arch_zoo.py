"""Tiny real models of many architectures, and the two independent references of a merge.

Every model is built from a config (hidden sizes of 16-32, two layers), once
per test session; each use gets a deep copy, since PEFT wraps models in place.
Adapters are made with PEFT (``init_lora_weights=False``: A and B random).

The references never use hubmerge:

* **PEFT applying all sources at once**: every source loaded as a named
  adapter, all of them active in every layer, each layer's scaling multiplied
  by the source's weight; the logits of that model.
* **base + Σ wᵢ·ΔWᵢ**: each source loaded alone by PEFT, its
  ``get_delta_weight`` added to the base weights by hand (full modules saved by
  ``modules_to_save`` or ``save_embedding_layers`` copied in); the weights and
  the logits of that model.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers as tf
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

VOCAB = 96
_LLAMA_TEXT = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip


@dataclass(frozen=True)
class Arch:
    """One tiny architecture: how to build it and what to feed it."""

    name: str
    build: Callable[[], torch.nn.Module]
    task_type: str | None = None
    seq2seq: bool = False
    extra_inputs: Callable[[], dict[str, torch.Tensor]] | None = None  # replaces input_ids (audio, images)


def _llava():
    vision = tf.CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=4
    )
    config = tf.LlavaConfig(
        text_config=tf.LlamaConfig(**_LLAMA_TEXT), vision_config=vision, image_token_index=VOCAB - 1,
        projector_hidden_act="gelu", vision_feature_layer=-1, tie_word_embeddings=False,
    )  # fmt: skip
    return tf.LlavaForConditionalGeneration(config)


def _qwen2_vl():
    text = dict(_LLAMA_TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    vision = dict(
        depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=2, temporal_patch_size=1,
        spatial_merge_size=1, in_channels=3,
    )  # fmt: skip
    config = tf.Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=VOCAB - 1, video_token_id=VOCAB - 2,
        vision_start_token_id=VOCAB - 3, tie_word_embeddings=False,
    )  # fmt: skip
    return tf.Qwen2VLForConditionalGeneration(config)


def _gemma3():
    text = dict(_LLAMA_TEXT, head_dim=8, sliding_window=16)
    vision = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=8,
                  patch_size=4)  # fmt: skip
    config = tf.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=VOCAB - 1,
        boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3, tie_word_embeddings=False,
    )  # fmt: skip
    return tf.Gemma3ForConditionalGeneration(config)


def _idefics3():
    vision = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=8,
                  patch_size=4)  # fmt: skip
    config = tf.Idefics3Config(
        text_config=tf.LlamaConfig(**_LLAMA_TEXT).to_dict(), vision_config=vision, scale_factor=1,
        image_token_id=VOCAB - 1, tie_word_embeddings=False,
    )  # fmt: skip
    return tf.Idefics3ForConditionalGeneration(config)


def _whisper():
    return tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=8, max_source_positions=16,
        max_target_positions=32, decoder_start_token_id=0, pad_token_id=0, bos_token_id=0, eos_token_id=1,
        suppress_tokens=None, begin_suppress_tokens=None, tie_word_embeddings=False,
    ))  # fmt: skip


def _noise(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


_SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
ARCHS: dict[str, Arch] = {
    arch.name: arch
    for arch in (
        Arch("llama", lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**_LLAMA_TEXT))),
        Arch("gpt2", lambda: tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, tie_word_embeddings=False))),
        Arch("gpt_neox", lambda: tf.GPTNeoXForCausalLM(
            tf.GPTNeoXConfig(**_SMALL, max_position_embeddings=64, tie_word_embeddings=False))),
        Arch("bloom", lambda: tf.BloomForCausalLM(
            tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, tie_word_embeddings=False))),
        Arch("t5", lambda: tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, decoder_start_token_id=0,
            tie_word_embeddings=False)), seq2seq=True),
        Arch("llama_cls", lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(
            **_LLAMA_TEXT, num_labels=3, pad_token_id=0)), task_type="SEQ_CLS"),
        Arch("bert_cls", lambda: tf.BertForSequenceClassification(
            tf.BertConfig(**_SMALL, num_labels=3, max_position_embeddings=64)), task_type="SEQ_CLS"),
        Arch("roberta_cls", lambda: tf.RobertaForSequenceClassification(
            tf.RobertaConfig(**_SMALL, num_labels=3, max_position_embeddings=64, pad_token_id=1)), task_type="SEQ_CLS"),
        Arch("distilbert_cls", lambda: tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=48, num_labels=3,
            max_position_embeddings=64)), task_type="SEQ_CLS"),
        Arch("llava", _llava),
        Arch("qwen2_vl", _qwen2_vl),
        Arch("gemma3_vlm", _gemma3),
        Arch("idefics3", _idefics3),
        Arch("mixtral", lambda: tf.MixtralForCausalLM(tf.MixtralConfig(
            **_LLAMA_TEXT, num_local_experts=2, num_experts_per_tok=1))),
        Arch("qwen2_moe", lambda: tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(
            **_LLAMA_TEXT, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16,
            shared_expert_intermediate_size=16))),
        Arch("phi3", lambda: tf.Phi3ForCausalLM(tf.Phi3Config(
            **_LLAMA_TEXT, pad_token_id=0))),
        Arch("opt", lambda: tf.OPTForCausalLM(tf.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, word_embed_proj_dim=32, tie_word_embeddings=False))),
        Arch("falcon", lambda: tf.FalconForCausalLM(tf.FalconConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, tie_word_embeddings=False))),
        Arch("mamba", lambda: tf.MambaForCausalLM(tf.MambaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4, expand=2, conv_kernel=2,
            tie_word_embeddings=False))),
        Arch("gpt2_tied", lambda: tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))),
        Arch("bart", lambda: tf.BartForConditionalGeneration(tf.BartConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
            tie_word_embeddings=False)), seq2seq=True),
        Arch("whisper", _whisper, seq2seq=True, extra_inputs=lambda: {"input_features": _noise(2, 8, 32)}),
        Arch("vit_cls", lambda: tf.ViTForImageClassification(tf.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=8,
            patch_size=4, num_labels=3)), extra_inputs=lambda: {"pixel_values": _noise(2, 3, 8, 8)}),
    )
}  # fmt: skip


@functools.cache
def _built(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ARCHS[name].build().eval()


def base_model(name: str) -> torch.nn.Module:
    """A fresh copy of the tiny ``name`` model (built once per session)."""
    return copy.deepcopy(_built(name))


def base_id(name: str) -> str:
    return f"test-org/tiny-{name}"


def make_adapter(directory: Path, arch: str, *, seed: int = 1, **lora_kwargs) -> Path:
    """Save a real PEFT LoRA adapter of the tiny ``arch`` model, with random A and B, to ``directory``."""
    lora_kwargs.setdefault("r", 4)
    lora_kwargs.setdefault("lora_alpha", 8)
    lora_kwargs.setdefault("init_lora_weights", False)
    lora_kwargs.setdefault("task_type", ARCHS[arch].task_type)
    save_embedding_layers = lora_kwargs.pop("save_embedding_layers", "auto")
    torch.manual_seed(seed)
    model = get_peft_model(base_model(arch), LoraConfig(**lora_kwargs))
    model.peft_config["default"].base_model_name_or_path = base_id(arch)
    model.save_pretrained(directory, save_embedding_layers=save_embedding_layers)
    return directory


def inputs(arch: str) -> dict[str, torch.Tensor]:
    ids = torch.arange(3, 3 + 2 * 12).remainder(VOCAB - 3).reshape(2, 12)
    extra = ARCHS[arch].extra_inputs
    feed = extra() if extra is not None else {"input_ids": ids}
    if ARCHS[arch].seq2seq:
        feed["decoder_input_ids"] = ids[:, :6]
    return feed


@torch.no_grad()
def logits(model: torch.nn.Module, arch: str) -> torch.Tensor:
    return model(**inputs(arch)).logits


def _saved_full_modules(model: PeftModel, adapter: str) -> dict[str, torch.Tensor]:
    """Parameters PEFT replaces wholesale for ``adapter`` (modules_to_save copies), by base parameter name."""
    found = {}
    for name, module in model.base_model.model.named_modules():
        copies = getattr(module, "modules_to_save", None)
        if isinstance(copies, torch.nn.ModuleDict) and adapter in copies:
            for pname, param in copies[adapter].named_parameters():
                found[f"{name}.{pname}"] = param.detach().clone()
    return found


@torch.no_grad()
def dense_reference(arch: str, sources: list[tuple[Path, float]]) -> torch.nn.Module:
    """The base model with Σ wᵢ·ΔWᵢ added by hand, ΔWᵢ from PEFT's get_delta_weight on each source alone."""
    model = base_model(arch)
    params = dict(model.named_parameters())
    original = _built(arch).state_dict()
    loaded = [(PeftModel.from_pretrained(base_model(arch), str(d)), w) for d, w in sources]
    for peft_model, _ in loaded:
        # Full embeddings saved next to the factors (save_embedding_layers) are loaded into the base itself.
        inner = dict(peft_model.base_model.model.named_parameters())
        for name, param in params.items():
            for twin_name in (name, name.removesuffix(".weight") + ".base_layer.weight"):
                twin = inner.get(twin_name)
                if twin is not None and twin.shape == param.shape and not torch.equal(twin, original[name]):
                    param.copy_(twin)
    for peft_model, weight in loaded:
        for name, module in peft_model.base_model.model.named_modules():
            if isinstance(module, LoraLayer) and "default" in (*module.lora_A, *module.lora_embedding_A):
                params[f"{name}.weight"].add_(weight * module.get_delta_weight("default"))
    for peft_model, _ in loaded:
        for name, value in _saved_full_modules(peft_model, "default").items():
            params[name].copy_(value)
    return model


def peft_all_at_once(arch: str, sources: list[tuple[Path, float]]) -> PeftModel:
    """:func:`peft_all_sources` on a fresh tiny model of ``arch``."""
    return peft_all_sources(base_model(arch), sources)


@torch.no_grad()
def peft_all_sources(base: torch.nn.Module, sources: list[tuple[Path, float]]) -> PeftModel:
    """PEFT with every source loaded onto ``base`` as its own adapter, all active, each layer's scaling times its
    weight: the independent reference a merge of ``sources`` must equal."""
    # PEFT expects every adapter loaded after one with modules_to_save to save those modules too: load those last.
    sources = sorted(sources, key=lambda s: bool(json.loads((s[0] / "adapter_config.json").read_text()).get(
        "modules_to_save")))  # fmt: skip
    names = [f"s{i}" for i in range(len(sources))]
    model = PeftModel.from_pretrained(base, str(sources[0][0]), adapter_name=names[0])
    for name, (directory, _) in zip(names[1:], sources[1:]):
        model.load_adapter(str(directory), adapter_name=name)
    weights = dict(zip(names, (w for _, w in sources)))
    for module in model.base_model.model.modules():
        if isinstance(module, LoraLayer):
            here = [n for n in names if n in module.scaling]
            for n in here:
                module.scaling[n] *= weights[n]
            module.set_adapter(here)
        copies = getattr(module, "modules_to_save", None)
        if isinstance(copies, torch.nn.ModuleDict) and len(copies):
            module.set_adapter([n for n in names if n in copies][:1])
    return model.eval()


def peft_selects(target_modules: str | list[str], name: str) -> bool:
    """Whether PEFT (0.6 and later) targets module ``name``: a string by ``re.fullmatch``, a list by
    the name itself or a dotted suffix of it."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)
