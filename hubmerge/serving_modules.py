"""Which adapted modules each engine applies, per architecture, as data read from the engines' sources.

An engine's model implementation decides which of an adapter's modules get LoRA: vLLM refuses
an adapter with any module its implementation has no LoRA layer for, TGI and LoRAX apply the
modules they know and log the rest as unused. :data:`ARCHITECTURES` holds one row per (engine,
``model_type``), each naming the class, file and version it was read from; :func:`judge_modules`
says, for the facts of a merge, which modules are applied, which are not and whether that
refuses the adapter. A ``model_type`` without a row is "not known": never a guess.

Module names are the last part of a module's key (``q_proj``); modules of one expert of a
mixture of experts (``experts.3.w1``) and LoRA on fused expert parameters
(``target_parameters``: ``mlp.experts.gate_up_proj``) are judged by what each engine's source
says about MoE LoRA.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .serving_rules import ENGINES, LORAX, TGI, VLLM

__all__ = ["ARCHITECTURES", "ArchModules", "NotKnown", "judge_modules"]

_FUSED_FLAG = "--enable-mixed-moe-lora-format"


class NotKnown(str):
    """A check's answer when the sources read do not say: shown as "not known", never as a pass or a refusal."""


@dataclass(frozen=True)
class ArchModules:
    """What one engine does with LoRA on one architecture.

    Attributes:
        engine: the engine key (``"vllm"``, ``"tgi"``, ``"lorax"``).
        model_type: the base model's ``config.json`` ``model_type``.
        model_class: the engine's class for it.
        lora: whether the engine applies LoRA to this architecture at all.
        modules: the module names it applies LoRA to.
        experts: how it reads expert LoRA: ``"fused_with_flag"`` (modules ``experts.N.<name>``, names in
            ``expert_modules``, and fused expert parameters with vLLM's ``--enable-mixed-moe-lora-format``),
            ``"fused"`` (fused expert parameters only, natively), ``None`` (no MoE in the architecture,
            or not applied).
        expert_modules: the per-expert module names it takes.
        source: the file and symbol read, with the version.
    """

    engine: str
    model_type: str
    model_class: str
    lora: bool
    modules: tuple[str, ...]
    source: str
    experts: str | None = None
    expert_modules: tuple[str, ...] = ()


_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
_EMB = ("embed_tokens", "lm_head")
_NO_LORA = "model class without SupportsLoRA"


def _vllm(model_type, cls, path, modules, *, lora=True, experts=None, expert_modules=()):
    return ArchModules("vllm", model_type, cls, lora, modules,
                       f"{VLLM}vllm/model_executor/models/{path} ({cls}: packed_modules_mapping, embedding_modules, "
                       f"linear layers{'' if lora else '; ' + _NO_LORA})", experts, expert_modules)  # fmt: skip


def _lorax(model_type, cls, path, modules, *, lora=True):
    what = "ADAPTER_LAYERS" if lora else "supports_adapter_loading is False"
    return ArchModules("lorax", model_type, cls, lora, modules, f"{LORAX}models/{path} ({cls}: {what})")


# vLLM 0.33.0. Applied = the last name of every LinearBase layer of vLLM's class with its
# packed_modules_mapping expanded to the checkpoint names, plus the class's embedding_modules.
# vLLM's check compares the adapter's names against that set after its rename-only weights mapper
# (stacked renames dropped), so Qwen2-MoE's shared_expert gate_proj / up_proj (packed in vLLM as
# gate_up_proj, which is not in its packed_modules_mapping) are refused.
ARCHITECTURES: tuple[ArchModules, ...] = (
    _vllm("llama", "LlamaForCausalLM", "llama.py", (*_ATTN, *_MLP, *_EMB)),
    _vllm("mistral", "MistralForCausalLM", "mistral.py", (*_ATTN, *_MLP)),  # embedding_modules = {}
    _vllm("qwen2", "Qwen2ForCausalLM", "qwen2.py", (*_ATTN, *_MLP)),
    _vllm("qwen3", "Qwen3ForCausalLM", "qwen3.py", (*_ATTN, *_MLP, *_EMB)),
    _vllm("gemma2", "Gemma2ForCausalLM", "gemma2.py", (*_ATTN, *_MLP)),
    _vllm("gemma3_text", "Gemma3ForCausalLM", "gemma3.py", (*_ATTN, *_MLP)),
    _vllm("phi3", "Phi3ForCausalLM", "phi3.py", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", *_EMB)),
    _vllm(
        "opt",
        "OPTForCausalLM",
        "opt.py",
        ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "project_in", "project_out"),
    ),  # fmt: skip
    _vllm(
        "gpt_neox",
        "TransformersForCausalLM",
        "transformers/base.py",  # every nn.Linear of HF's model
        ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "embed_tokens"),
    ),
    _vllm(
        "mixtral",
        "MixtralForCausalLM",
        "mixtral.py",
        (*_ATTN, "gate", *_EMB),
        experts="fused_with_flag",
        expert_modules=("w1", "w2", "w3", "gate_proj", "up_proj", "down_proj"),
    ),
    _vllm(
        "qwen2_moe",
        "Qwen2MoeForCausalLM",
        "qwen2_moe.py",
        (*_ATTN, "gate_up_proj", "down_proj", "gate", "shared_expert_gate"),
        experts="fused_with_flag",
        expert_modules=_MLP,
    ),  # fmt: skip
    _vllm(
        "qwen3_moe",
        "Qwen3MoeForCausalLM",
        "qwen3_moe.py",
        (*_ATTN, "gate_up_proj", "down_proj", "gate", "shared_expert_gate", *_EMB),
        experts="fused_with_flag",
        expert_modules=_MLP,
    ),  # fmt: skip
    _vllm(
        "deepseek_v3",
        "DeepseekV3ForCausalLM",
        "deepseek_v2.py",
        (
            "q_proj",
            "qkv_proj",
            "q_a_proj",
            "q_b_proj",
            "kv_a_proj_with_mqa",
            "kv_b_proj",
            "o_proj",
            "wq_b",
            "wk_weights_proj",
            *_MLP,
            "gate",
        ),
        experts="fused_with_flag",
        expert_modules=_MLP,
    ),  # fmt: skip
    # is_3d_moe_weight: vLLM reads PEFT's fused expert layout natively (FusedMoE3DWithLoRA), per-expert modules not.
    _vllm("gpt_oss", "GptOssForCausalLM", "gpt_oss.py", (*_ATTN, "router"), experts="fused"),
    _vllm("gpt2", "GPT2LMHeadModel", "gpt2.py", (), lora=False),
    _vllm("bloom", "BloomForCausalLM", "bloom.py", (), lora=False),
    _vllm("falcon", "FalconForCausalLM", "falcon.py", (), lora=False),
    _vllm("mamba", "MambaForCausalLM", "mamba.py", (), lora=False),
    # LoRAX at a7394ba: the model_type → class routing of models/__init__.py and each class's ADAPTER_LAYERS.
    _lorax("llama", "FlashLlama", "flash_llama.py", (*_ATTN, *_MLP, "lm_head")),
    _lorax("mistral", "FlashMistral", "flash_mistral.py", (*_ATTN, *_MLP, "lm_head")),
    _lorax("qwen2", "FlashQwen2", "flash_qwen2.py", (*_ATTN, *_MLP, "lm_head")),
    _lorax("gemma", "FlashGemma", "flash_gemma.py", (*_ATTN, *_MLP)),
    _lorax("gemma2", "FlashGemma2", "flash_gemma2.py", (*_ATTN, *_MLP)),
    _lorax("phi3", "FlashPhi3", "flash_phi3.py", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    _lorax("gpt2", "FlashGPT2", "flash_gpt2.py", ("c_attn", "c_proj", "c_fc")),
    _lorax("mixtral", "FlashMixtral", "flash_mixtral.py", _ATTN),
    _lorax("bloom", "BLOOMSharded", "bloom.py", ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
    _lorax("gpt_neox", "FlashNeoXSharded", "flash_neox.py", (), lora=False),
    _lorax("falcon", "FlashRWSharded", "flash_rw.py", (), lora=False),
    _lorax("opt", "OPTSharded", "opt.py", (), lora=False),
)

# LoRAX's get_model ends in "Unsupported model type": every model_type it routes is listed here.
LORAX_ROUTED = (
    "bert", "distilbert", "xlm-roberta", "gpt_bigcode", "bloom", "mpt", "gpt_neox", "llama", "gpt2", "falcon",
    "RefinedWeb", "RefinedWebModel", "mistral", "mixtral", "qwen", "qwen2", "phi", "phi-msft", "phi3", "solar",
    "gemma", "gemma2", "cohere", "dbrx", "llava", "llava_next", "mllama", "opt", "t5", "granite",
)  # fmt: skip
_LORAX_ROUTING = LORAX + "models/__init__.py (get_model)"

# TGI at db931fc applies LoRA to these paths only, whatever the architecture (get_model_with_lora_adapters).
_TGI_APPLIED = re.compile(
    r"^model\.layers\.\*\.(self_attn\.(q|k|v|o|qkv)_proj|mlp\.(gate_proj|up_proj|down_proj|c_fc|c_proj))$"
)
_TGI_SOURCE = TGI + "server/text_generation_server/models/__init__.py (adapter_layers)"
_EXPERT = re.compile(r"\.experts\.\*\.")
_FUSED = ("experts.gate_up_proj", "experts.down_proj")


def _row(engine: str, model_type: str | None) -> ArchModules | None:
    return next((r for r in ARCHITECTURES if r.engine == engine and r.model_type == model_type), None)


def judge_modules(engine: str, facts: Mapping) -> dict:
    """Which of the adapter's modules ``engine`` applies, from the facts' ``module_types`` and ``parameters``.

    Args:
        engine: ``"vllm"``, ``"tgi"`` or ``"lorax"``.
        facts: from :func:`hubmerge.serving.serving_facts` (``model_type``, ``module_types``, ``parameters``).

    Returns:
        ``applied`` and ``not_applied`` (module types, layer numbers starred), ``refuses``
        (whether the engine refuses the whole adapter), ``why`` (None when every module is
        applied; a :class:`NotKnown` when the sources read do not say), ``flags`` (server options
        it needs) and ``source``.
    """
    kinds = [*facts.get("module_types", []), *facts.get("parameters", [])]
    out: dict = {"applied": [], "not_applied": [], "refuses": False, "why": None, "flags": [], "source": None}
    model_type = facts.get("model_type")
    if engine == "tgi":
        out["source"] = _TGI_SOURCE
        for kind in kinds:
            out["applied" if _TGI_APPLIED.match(kind) else "not_applied"].append(kind)
        return _conclude(out, refuse_any=False)
    if engine == "lorax" and model_type is not None and model_type not in LORAX_ROUTED:
        out.update(source=_LORAX_ROUTING, refuses=True, not_applied=kinds)
        out["why"] = f"LoRAX has no model for model_type {model_type!r} ('Unsupported model type')"
        return out
    row = _row(engine, model_type)
    if row is None:
        because = (
            f"no table for model_type {model_type!r}"
            if model_type
            else "the base's model_type was not read: its config comes from the Hub"
        )
        out["why"] = NotKnown(f"which modules {ENGINES[engine].name} applies on this base ({because})")
        return out
    out["source"] = row.source
    if not row.lora:
        out.update(refuses=True, not_applied=kinds)
        out["why"] = (
            f"{ENGINES[engine].name}'s {row.model_class} takes no LoRA "
            "('does not support LoRA yet' / no adapter loading)"
        )
        return out
    for kind in kinds:
        out["applied" if _applies(row, kind, out["flags"]) else "not_applied"].append(kind)
    fused = [k for k in out["applied"] if k.endswith(_FUSED)]
    if fused and not all(any(k.endswith(f) for k in fused) for f in _FUSED):
        # vLLM's 3-D → 2-D conversion reads experts.base_layer as gate_up_proj and experts as down_proj,
        # and leaves a layer with only one of them unconverted (LoRAModelManager._convert_3d_to_2d_moe_lora).
        # The facts star the layer numbers, so this sees an adapter with only one, not a layer with only one.
        out["applied"] = [k for k in out["applied"] if k not in fused]
        out["not_applied"] += fused
    return _conclude(out, refuse_any=engine == "vllm")


def _applies(row: ArchModules, kind: str, flags: list[str]) -> bool:
    """Whether the engine of ``row`` applies LoRA on one module type (or fused parameter)."""
    name = kind.rsplit(".", 1)[-1]
    fused = next((f for f in _FUSED if kind.endswith(f)), None)
    if fused is not None:  # LoRA on the fused 3-D expert weights (target_parameters)
        if row.experts == "fused_with_flag" and _FUSED_FLAG not in flags:
            flags.append(_FUSED_FLAG)
        return row.experts in ("fused_with_flag", "fused")
    if kind.endswith(".weight"):  # a 2-D parameter (a router's gate.weight): saved under its module's name
        name = kind.rsplit(".", 2)[-2]
    if _EXPERT.search(kind):
        return name in row.expert_modules
    return name in row.modules


def _conclude(out: dict, *, refuse_any: bool) -> dict:
    missing = out["not_applied"]
    if missing and (refuse_any or not out["applied"]):
        out["refuses"] = True
        out["why"] = f"{', '.join(missing)} would not be applied" + (
            ": it refuses the whole adapter" if refuse_any else ": no module of the adapter would be"
        )
    elif missing:
        out["why"] = f"{', '.join(missing)} would not be applied (logged as unused; the rest is served)"
    return out
