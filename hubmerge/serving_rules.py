"""The serving engines' adapter-level rules, as data: one row per rule, with the file, symbol and version read.

:mod:`hubmerge.serving` checks the facts of a merge against these rows; which modules each
engine applies per architecture is :mod:`hubmerge.serving_modules`. Versions read: vLLM 0.33.0
(its PyPI sdist), TGI 3.3.7 (commit db931fc), LoRAX 0.4.0+23 (commit a7394ba), llama.cpp as
vendored by llama-cpp-python 0.3.36, SGLang 0.5.23 (its PyPI wheel).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .methods.rank_limit import VLLM_DEFAULT_MAX_LORA_RANK, VLLM_MAX_LORA_RANKS

__all__ = ["ADAPTER", "ENGINES", "GGUF_MODEL_TYPES", "GGUF_NAME", "RULES", "SGLANG_MODULES", "Engine", "Rule"]

ADAPTER = "ADAPTER"  # placeholder in commands: where the adapter is (a directory or a repo id)
GGUF_NAME = "adapter_model.gguf"

VLLM = "https://github.com/vllm-project/vllm/blob/v0.33.0/"
SGLANG = "https://github.com/sgl-project/sglang/blob/v0.5.23/python/sglang/srt/lora/"  # read in its 0.5.23 wheel
TGI = "https://github.com/huggingface/text-generation-inference/blob/db931fcf42da018a3657580c64bf2720f167f9ab/"
LORAX = "https://github.com/predibase/lorax/blob/a7394ba386ece427d5a6125b419aa38b46d966dc/server/lorax_server/"
LLAMA_CPP = "https://github.com/ggml-org/llama.cpp/blob/master/"  # read as vendored by llama-cpp-python 0.3.36


@dataclass(frozen=True)
class Engine:
    """A serving engine: its display name and the command that serves one adapter.

    In ``command``, ``{base}`` and ``{rank}`` are filled from the facts; ``ADAPTER`` stays
    until the adapter's place is known (:func:`hubmerge.serving.fill_command`).
    """

    key: str
    name: str
    command: str


@dataclass(frozen=True)
class Rule:
    """One limit of one engine.

    Attributes:
        engine: the :class:`Engine` key.
        code: a short id, unique per engine.
        requirement: what the engine needs, in words.
        check: the name of the check in :data:`hubmerge.serving._CHECKS` that tests the facts.
        source: where the rule comes from: a URL to the code or document, and the symbol read.
        effect: ``"refuses"`` (the engine will not serve it as merged), ``"slower"``
            (served, off the fast path) or ``"convert"`` (served after a conversion).
        params: the check's parameters.
    """

    engine: str
    code: str
    requirement: str
    check: str
    source: str
    effect: str = "refuses"
    params: Mapping = field(default_factory=dict)


ENGINES: dict[str, Engine] = {
    e.key: e
    for e in (
        Engine("vllm", "vLLM", "vllm serve {base} --enable-lora --lora-modules merged=ADAPTER --max-lora-rank {rank}"),
        Engine(
            "sglang",
            "SGLang",
            "python -m sglang.launch_server --model-path {base} --enable-lora --lora-paths merged=ADAPTER "
            "--max-lora-rank {rank}",
        ),
        Engine("tgi", "TGI", "text-generation-launcher --model-id {base} --lora-adapters ADAPTER"),
        Engine("lorax", "LoRAX", 'lorax-launcher --model-id {base}   # then per request: "adapter_id": "ADAPTER"'),
        Engine("llama.cpp", "llama.cpp", "llama-server -m BASE_MODEL.gguf --lora ADAPTER/" + GGUF_NAME),
    )
}

# The names get_normalized_target_modules maps, and those get_default_hidden_dim sizes (models with
# their own get_hidden_dim may size more).
# The model types of hubmerge.gguf_export.ARCHITECTURES (tests/test_serving.py checks the two agree).
GGUF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")

SGLANG_MODULES = (
    "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj",
    "embed_tokens", "vocab_emb", "embeddings", "word_embeddings", "lm_head", "output", "unembed_tokens",
    "q_a_proj", "kv_a_proj_with_mqa", "q_b_proj", "kv_b_proj",
)  # fmt: skip

RULES: tuple[Rule, ...] = (
    Rule("vllm", "max_lora_rank",
         f"the largest of r and rank_pattern's ranks ≤ --max-lora-rank, which must be one of "
         f"{', '.join(map(str, VLLM_MAX_LORA_RANKS))} (default {VLLM_DEFAULT_MAX_LORA_RANK}); above it: 'LoRA rank R "
         "is greater than max_lora_rank'", "vllm_rank",
         VLLM + "vllm/config/lora.py (MaxLoRARanks, LoRAConfig.max_lora_rank); vllm/lora/peft_helper.py "
         "(PEFTHelper.validate_legal)"),
    Rule("vllm", "modules_to_save", "modules_to_save only 'classifier' or 'score', for a classification model "
         "('vLLM only supports modules_to_save being either None or [\"classifier\", \"score\"]')",
         "no_modules_to_save", VLLM + "vllm/lora/peft_helper.py (PEFTHelper._validate_features)",
         params={"allowed": ("classifier", "score")}),
    Rule("vllm", "dora", "no DoRA ('vLLM does not yet support DoRA')", "no_dora",
         VLLM + "vllm/lora/peft_helper.py (PEFTHelper._validate_features)"),
    Rule("vllm", "bias", "bias 'none' ('Adapter bias is not supported')", "no_bias",
         VLLM + "vllm/lora/peft_helper.py (PEFTHelper.validate_legal)"),
    Rule("vllm", "full_weights", "no full weight copies but the base embeddings PEFT saves beside an embed_tokens "
         "/ lm_head LoRA (….base_layer.weight), which are skipped; any other is 'unsupported LoRA weight'",
         "no_saved_embeddings", VLLM + "vllm/lora/lora_model.py (LoRAModel.from_lora_tensors, "
         "check_unexpected_modules: is_base_embedding_weights); vllm/lora/utils.py (parse_fine_tuned_lora_name)",
         params={"skips": ("embed_tokens", "lm_head")}),
    Rule("vllm", "target_modules", "every adapted module is one vLLM's implementation of the architecture takes "
         "LoRA on (its linear layers, packed_modules_mapping expanded, and embedding_modules); any other module "
         "makes vLLM refuse the whole adapter ('expected target modules in … but received …'); a model class "
         "without SupportsLoRA refuses every adapter ('does not support LoRA yet')", "engine_modules",
         VLLM + "vllm/lora/lora_model.py (LoRAModel.from_local_checkpoint: check_unexpected_modules); "
         "vllm/lora/worker_manager.py (_load_adapter: expected_lora_modules); vllm/lora/utils.py "
         "(get_supported_lora_modules); vllm/v1/worker/lora_model_runner_mixin.py (load_lora_model)",
         params={"engine": "vllm"}),
    Rule("sglang", "target_modules", "every module is one SGLang maps to a LoRA weight: " + ", ".join(SGLANG_MODULES),
         "known_modules", SGLANG + "utils.py (get_normalized_target_modules, get_default_hidden_dim)",
         params={"names": SGLANG_MODULES}),
    Rule("sglang", "target_modules_list", "target_modules is a list of names (or 'all' / 'all-linear'): any other "
         "string, a regex included, is refused ('SGLang does not recognize target_modules=…'), with or without "
         "--lora-target-modules", "no_regex_targets", SGLANG + "lora_manager.py (LoRAManager.init_lora_shapes)"),
    Rule("sglang", "experts", "LoRA on fused expert parameters (target_parameters): SGLang has MoE LoRA "
         "(gate_up_proj_moe, down_proj_moe) whose reading of PEFT's layout was not read", "no_parameters",
         SGLANG + "utils.py (get_default_hidden_dim); lora_manager.py"),
    Rule("sglang", "modules_to_save", "LoRA factors only: full copies (modules_to_save, saved embeddings) are not "
         "LoRA weights SGLang applies", "no_full_weights", SGLANG + "utils.py (get_normalized_target_modules)"),
    Rule("tgi", "every_layer", "a module type is adapted in every layer: one layer without it drops that type "
         "for all layers ('There is no LoRA weight for this layer type in the adapter')", "every_layer",
         TGI + "server/text_generation_server/adapters/lora.py (LoraWeights.prepare_weights)"),
    Rule("tgi", "one_rank", "one r and lora_alpha for every module (rank_pattern / alpha_pattern are not read)",
         "no_patterns", TGI + "server/text_generation_server/adapters/lora.py (LoraConfig.load)"),
    Rule("tgi", "target_modules", "LoRA is applied only at model.layers.N.self_attn.{q,k,v,o,qkv}_proj and "
         "model.layers.N.mlp.{gate,up,down}_proj / c_fc / c_proj; other adapter weights are logged as 'unused "
         "adapter weights' and not applied", "engine_modules",
         TGI + "server/text_generation_server/models/__init__.py (get_model_with_lora_adapters: adapter_layers); "
         "server/text_generation_server/utils/adapter.py (build_layer_weight_lookup)", params={"engine": "tgi"}),
    Rule("lorax", "every_layer", "a module type is adapted in every layer, as in TGI (which took this code "
         "from LoRAX)", "every_layer", LORAX + "adapters/lora.py (LoraWeights.prepare_weights)"),
    Rule("lorax", "fast_rank", "rank ≤ 128 runs on the SGMV kernels (ranks below 8 are padded to 8); above 128 "
         "LoRAX falls back to a slower loop", "rank_at_most", LORAX + "utils/sgmv.py (MIN_SGMV_RANK, "
         "MAX_RANK_CUSTOM)", effect="slower", params={"max": 128}),
    Rule("lorax", "target_modules", "LoRA is applied only to the architecture's ADAPTER_LAYERS; other adapter "
         "weights are logged as 'unused adapter weights'; a model without adapter loading refuses it; a "
         "model_type LoRAX does not route is refused ('Unsupported model type')", "engine_modules",
         LORAX + "models/model.py (Model.load_adapter: unused_weight_names, supports_adapter_loading); "
         "models/__init__.py (get_model); models/flash_*.py (ADAPTER_LAYERS)", params={"engine": "lorax"}),
    Rule("llama.cpp", "gguf", "a GGUF LoRA file (general.type 'adapter', adapter.type 'lora', adapter.lora.alpha), "
         "not PEFT safetensors: hubmerge writes one when asked for GGUF output", "has_gguf",
         LLAMA_CPP + "src/llama-adapter.cpp (llama_adapter_lora_init_impl)", effect="convert"),
    Rule("llama.cpp", "convertible", "the base is an architecture hubmerge's GGUF export converts (its "
         "per-architecture transforms are ported for these model types only); for others llama.cpp's own "
         "convert_lora_to_gguf.py may", "gguf_convertible", LLAMA_CPP + "convert_lora_to_gguf.py (the model classes "
         "of conversion/*.py it reuses; hubmerge ports those of these types: hubmerge/gguf_export.py ARCHITECTURES)",
         effect="convert", params={"model_types": GGUF_MODEL_TYPES}),
    Rule("llama.cpp", "lora_only", "only .lora_a / .lora_b tensors: a full lm_head or embedding copy "
         "(modules_to_save, saved embeddings) is refused, but for the base embedding PEFT saves beside an embedding "
         "LoRA (….base_layer.weight), which the conversion leaves out", "no_full_weights",
         LLAMA_CPP + "src/llama-adapter.cpp ('has unexpected suffix'); convert_lora_to_gguf.py "
         "('Embeddings is present in the adapter'; '.base_layer.weight' skipped)", params={"skips": ("*",)}),
)  # fmt: skip
