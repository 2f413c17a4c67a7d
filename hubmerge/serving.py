"""Where the merged adapter can be served: the engines' rules as data, and a verdict per engine.

Serving engines apply LoRA adapters with limits of their own. :data:`RULES`
holds them, one row per rule with the code or document it comes from (and
the version read); :func:`servability` checks the facts of a merge against
every row and gives, per engine, whether it serves the adapter as merged,
why not, and the command that serves it. Pure: no network, no files.

The facts (:func:`serving_facts`) come from the merge report and the merged
``adapter_config.json``: the stored rank, the adapted modules, full weight
copies, and whether a GGUF file was written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .methods.rank_limit import VLLM_DEFAULT_MAX_LORA_RANK, VLLM_MAX_LORA_RANKS, smallest_vllm_rank

if TYPE_CHECKING:
    from .report import MergeReport

__all__ = [
    "ENGINES",
    "RULES",
    "Engine",
    "Rule",
    "fill_command",
    "render_card",
    "render_text",
    "servability",
    "serving_facts",
    "serving_section",
]

ADAPTER = "ADAPTER"  # placeholder in commands: where the adapter is (a directory or a repo id)
GGUF_NAME = "adapter_model.gguf"

_VLLM = "https://github.com/vllm-project/vllm/blob/v0.11.0/"
_SGLANG = "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/lora/utils.py"
_TGI = (
    "https://github.com/huggingface/text-generation-inference/blob/main/server/text_generation_server/adapters/lora.py"
)
_LORAX = "https://github.com/predibase/lorax/blob/main/server/lorax_server/"
_LLAMA_CPP = "https://github.com/ggml-org/llama.cpp/blob/master/"  # read as vendored by llama-cpp-python 0.3.36


@dataclass(frozen=True)
class Engine:
    """A serving engine: its display name and the command that serves one adapter.

    In ``command``, ``{base}`` and ``{rank}`` are filled from the facts; ``ADAPTER`` stays
    until the adapter's place is known (:func:`fill_command`).
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
        check: the name of the check in :data:`_CHECKS` that tests the facts.
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

_SGLANG_MODULES = (
    "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj",
    "embed_tokens", "vocab_emb", "embeddings", "word_embeddings", "lm_head", "output",
)  # fmt: skip

RULES: tuple[Rule, ...] = (
    Rule("vllm", "max_lora_rank",
         f"r ≤ --max-lora-rank, which must be one of {', '.join(map(str, VLLM_MAX_LORA_RANKS))} "
         f"(default {VLLM_DEFAULT_MAX_LORA_RANK}); above it: 'LoRA rank R is greater than max_lora_rank'",
         "vllm_rank", _VLLM + "vllm/config/lora.py (MaxLoRARanks, max_lora_rank); vllm/lora/peft_helper.py "
         "(PEFTHelper.validate_legal)"),
    Rule("vllm", "modules_to_save", "no modules_to_save ('vLLM only supports modules_to_save being None')",
         "no_modules_to_save", _VLLM + "vllm/lora/peft_helper.py (PEFTHelper._validate_features)"),
    Rule("vllm", "dora", "no DoRA ('vLLM does not yet support DoRA')", "no_dora",
         _VLLM + "vllm/lora/peft_helper.py (PEFTHelper._validate_features)"),
    Rule("vllm", "bias", "bias 'none' unless the server runs with --enable-lora-bias", "no_bias",
         _VLLM + "vllm/lora/peft_helper.py (PEFTHelper.validate_legal)"),
    Rule("vllm", "one_rank", "one r and lora_alpha for every module: rank_pattern / alpha_pattern are not read",
         "no_patterns", _VLLM + "vllm/lora/peft_helper.py (PEFTHelper fields; from_dict drops other keys)"),
    Rule("vllm", "full_weights", "no full weight copies: saved base embeddings are skipped, not applied",
         "no_saved_embeddings", _VLLM + "vllm/lora/lora_model.py (from_lora_tensors: is_base_embeddding_weights)"),
    Rule("sglang", "target_modules", "every module is one SGLang maps to a LoRA weight: " + ", ".join(_SGLANG_MODULES),
         "known_modules", _SGLANG + " (get_normalized_target_modules, get_hidden_dim)",
         params={"names": _SGLANG_MODULES}),
    Rule("sglang", "modules_to_save", "LoRA factors only: full copies (modules_to_save, saved embeddings) are not "
         "LoRA weights SGLang applies", "no_full_weights", _SGLANG + " (get_normalized_target_modules)"),
    Rule("tgi", "every_layer", "a module type is adapted in every layer: one layer without it drops that type "
         "for all layers ('There is no LoRA weight for this layer type in the adapter')", "every_layer",
         _TGI + " (LoraWeights.prepare_weights)"),
    Rule("tgi", "one_rank", "one r and lora_alpha for every module (rank_pattern / alpha_pattern are not read)",
         "no_patterns", _TGI + " (LoraConfig.load)"),
    Rule("lorax", "every_layer", "a module type is adapted in every layer, as in TGI (which took this code "
         "from LoRAX)", "every_layer", _LORAX + "adapters/lora.py (LoraWeights.prepare_weights)"),
    Rule("lorax", "fast_rank", "rank ≤ 128 runs on the SGMV kernels (ranks below 8 are padded to 8); above 128 "
         "LoRAX falls back to a slower loop", "rank_at_most", _LORAX + "utils/sgmv.py (MIN_SGMV_RANK, "
         "MAX_RANK_CUSTOM)", effect="slower", params={"max": 128}),
    Rule("llama.cpp", "gguf", "a GGUF LoRA file (general.type 'adapter', adapter.type 'lora', adapter.lora.alpha), "
         "not PEFT safetensors: write it with --gguf or hubmerge-gguf DIR", "has_gguf",
         _LLAMA_CPP + "src/llama-adapter.cpp (llama_adapter_lora_init_impl)", effect="convert"),
    Rule("llama.cpp", "lora_only", "only .lora_a / .lora_b tensors: a full lm_head or embedding copy "
         "(modules_to_save, saved embeddings) is refused", "no_full_weights",
         _LLAMA_CPP + "src/llama-adapter.cpp ('has unexpected suffix'); convert_lora_to_gguf.py "
         "('Embeddings is present in the adapter')"),
)  # fmt: skip

_LAYER = re.compile(r"\.(\d+)\.")


def serving_facts(
    report: MergeReport, config: Mapping[str, Any], *, full_weights: list[str], gguf_file: str | None = None
) -> dict[str, Any]:
    """What the rules look at, from a merge report and the merged ``adapter_config.json``.

    Args:
        report: the :class:`~hubmerge.report.MergeReport` (its output, modules, modules_to_save, base model).
        config: the merged adapter's config (``use_dora``, ``bias``, ``rank_pattern``, …).
        full_weights: module keys whose full weights the adapter carries (saved embeddings).
        gguf_file: the GGUF file written next to the adapter, if any.

    Returns:
        A JSON-able dict: ``base_model``, ``rank`` (with ``rank_is_upper_bound`` for a report-only
        run, where it is the sum of the sources' largest ranks), ``modules`` (short names),
        ``partial_layers`` (module types some layers lack), ``modules_to_save``,
        ``full_weights``, ``use_dora``, ``bias``, ``patterns``, ``gguf_file``.
    """
    keys = list(report.modules.coverage)
    if report.output is not None:
        rank, upper_bound = report.output.rank, False
    else:  # report only: the stacked rank, an upper bound
        rank, upper_bound = sum(s.rank_max for s in report.sources), True
    return {
        "base_model": report.base_model.canonical or report.base_model.name,
        "rank": rank,
        "rank_is_upper_bound": upper_bound,
        "modules": sorted({key.rsplit(".", 1)[-1] for key in keys}),
        "partial_layers": _partial_layers(keys),
        "modules_to_save": [item.module for item in report.modules_to_save],
        "full_weights": sorted(full_weights),
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias") or "none",
        "patterns": bool(config.get("rank_pattern") or config.get("alpha_pattern")),
        "gguf_file": gguf_file,
    }


def _partial_layers(keys: list[str]) -> list[str]:
    """Module types (the key with its layer number starred) adapted in some layers but not all."""
    layers_of: dict[str, set[int]] = {}
    all_layers: set[int] = set()
    for key in keys:
        found = _LAYER.search(key)
        if found is None:
            continue
        layer = int(found.group(1))
        all_layers.add(layer)
        layers_of.setdefault(key[: found.start()] + ".*." + key[found.end() :], set()).add(layer)
    return sorted(kind for kind, layers in layers_of.items() if layers != all_layers)


def _vllm_rank(facts, params) -> str | None:
    if smallest_vllm_rank(facts["rank"]) is None:
        return f"rank {facts['rank']} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})"
    return None


def _rank_at_most(facts, params) -> str | None:
    return f"rank {facts['rank']} > {params['max']}" if facts["rank"] > params["max"] else None


def _no_modules_to_save(facts, params) -> str | None:
    saved = facts["modules_to_save"]
    return f"modules_to_save: {', '.join(saved)}" if saved else None


def _no_full_weights(facts, params) -> str | None:
    full = [*facts["modules_to_save"], *facts["full_weights"]]
    return f"full weight copies of {', '.join(full)}" if full else None


def _no_saved_embeddings(facts, params) -> str | None:
    full = facts["full_weights"]
    return f"full weight copies of {', '.join(full)}" if full else None


def _no_dora(facts, params) -> str | None:
    return "use_dora is true" if facts["use_dora"] else None


def _no_bias(facts, params) -> str | None:
    return f"bias is {facts['bias']!r}" if facts["bias"] != "none" else None


def _no_patterns(facts, params) -> str | None:
    return "rank_pattern / alpha_pattern are set" if facts["patterns"] else None


def _known_modules(facts, params) -> str | None:
    unknown = [name for name in facts["modules"] if name not in params["names"]]
    return f"modules {', '.join(unknown)} are not ones it maps" if unknown else None


def _every_layer(facts, params) -> str | None:
    partial = facts["partial_layers"]
    return f"{', '.join(partial)} is not adapted in every layer and would be dropped" if partial else None


def _has_gguf(facts, params) -> str | None:
    return None if facts.get("gguf_file") else "no GGUF file written yet"


_CHECKS: dict[str, Callable[[Mapping, Mapping], str | None]] = {
    "vllm_rank": _vllm_rank,
    "rank_at_most": _rank_at_most,
    "no_modules_to_save": _no_modules_to_save,
    "no_full_weights": _no_full_weights,
    "no_saved_embeddings": _no_saved_embeddings,
    "no_dora": _no_dora,
    "no_bias": _no_bias,
    "no_patterns": _no_patterns,
    "known_modules": _known_modules,
    "every_layer": _every_layer,
    "has_gguf": _has_gguf,
}


def servability(facts: Mapping, rules: tuple[Rule, ...] = RULES) -> list[dict]:
    """Check the facts against every rule; one verdict per engine.

    Args:
        facts: from :func:`serving_facts`.
        rules: the rules to apply (default :data:`RULES`).

    Returns:
        Per engine, in :data:`ENGINES` order: ``engine``, ``name``, ``status``
        (``"servable"``, ``"servable, slower"``, ``"after conversion"`` or ``"not servable"``),
        ``servable`` (bool: it serves this adapter as merged, possibly after the
        stated conversion), ``reasons`` (the failed rules, in words), ``command`` (with
        ``ADAPTER`` standing for the adapter's directory or repo id; ``None`` when not
        servable) and ``rules`` (every rule checked: ``code``, ``ok``, ``effect``, ``detail``, ``source``).

    Example:
        >>> [v["status"] for v in servability(serving_facts(result.report, result.config, full_weights=[]))]
        ['servable', 'servable', 'servable', 'servable', 'after conversion']
    """
    verdicts = []
    for key, engine in ENGINES.items():
        checked = []
        for rule in (r for r in rules if r.engine == key):
            detail = _CHECKS[rule.check](facts, rule.params)
            checked.append(
                {
                    "code": rule.code,
                    "ok": detail is None,
                    "effect": rule.effect,
                    "requirement": rule.requirement,
                    "detail": detail,
                    "source": rule.source,
                }
            )
        failed = {c["effect"] for c in checked if not c["ok"]}
        if "refuses" in failed:
            status = "not servable"
        elif "convert" in failed:
            status = "after conversion"
        elif "slower" in failed:
            status = "servable, slower"
        else:
            status = "servable"
        servable = status != "not servable"
        rank = smallest_vllm_rank(facts["rank"]) if key == "vllm" else facts["rank"]
        command = engine.command.replace("{rank}", str(rank)).replace("{base}", facts.get("base_model") or "BASE_MODEL")
        verdicts.append(
            {
                "engine": key,
                "name": engine.name,
                "status": status,
                "servable": servable,
                "reasons": [f"{c['detail']}: {c['requirement']}" for c in checked if not c["ok"]],
                "command": command if servable else None,
                "rules": checked,
            }
        )
    return verdicts


def serving_section(facts: dict, *, rank_fit: dict | None = None) -> dict:
    """The report's ``serving`` section: the facts, the rank fit (if asked) and the verdicts."""
    return {"facts": facts, "rank_fit": rank_fit, "engines": servability(facts)}


def fill_command(command: str, adapter: str) -> str:
    """A verdict's command with ``ADAPTER`` replaced by where the adapter is (a directory or a repo id)."""
    return re.sub(rf"\b{ADAPTER}\b", lambda _: adapter, command)


def render_text(section: Mapping | None, *, adapter: str | None = None) -> list[str]:
    """The terminal lines of a ``serving`` section: the rank fit, then one line per engine and its command."""
    if not section:
        return []
    lines = []
    fit = section.get("rank_fit")
    if fit:
        what = f"vLLM --max-lora-rank {fit['engine_max']}" if fit["engine"] == "vllm" else f"rank ≤ {fit['max_rank']}"
        verdict = (
            "exact"
            if fit["exact"]
            else f"{fit['truncated']} of {fit['modules']} module(s) truncated by SVD, "
            f"kept energy {100 * fit['kept_energy']:.2f}% of ‖ΔW‖²"
        )
        lines.append(
            f"rank fit ({what}): rank {fit['rank']}, {verdict}; {fit['reduced']} module(s) refactored at "
            "their lower true rank"
        )
    facts = section.get("facts") or {}
    bound = f" (report only: judged at rank {facts.get('rank')}, the stacked upper bound)"
    lines.append("serving" + (bound if facts.get("rank_is_upper_bound") else "") + ":")
    width = max(len(v["name"]) for v in section["engines"])
    for verdict in section["engines"]:
        why = f" — {'; '.join(r.split(':', 1)[0] for r in verdict['reasons'])}" if verdict["reasons"] else ""
        lines.append(f"  {verdict['name']:<{width}}  {verdict['status']}{why}")
        if verdict["command"]:
            lines.append(f"  {'':<{width}}  $ {fill_command(verdict['command'], adapter or ADAPTER)}")
    return lines


def render_card(section: Mapping | None, *, adapter: str) -> str:
    """The model card's serving section (Markdown): a verdict table, the commands, and the rules' sources."""
    if not section:
        return ""
    rows = ["| engine | verdict | why |", "|---|---|---|"]
    for verdict in section["engines"]:
        why = "; ".join(verdict["reasons"]) or "every rule checked passes"
        rows.append(f"| {verdict['name']} | {verdict['status']} | {why.replace('|', '/')} |")
    parts = ["\n".join(rows)]
    fit = section.get("rank_fit")
    if fit:
        parts.append(
            f"Rank fitted to {fit['max_rank']}: stored rank {fit['rank']}, "
            + (
                "exact (every module's true rank fits)"
                if fit["exact"]
                else f"{fit['truncated']} of {fit['modules']} modules truncated by SVD, keeping "
                f"{100 * fit['kept_energy']:.2f}% of ‖ΔW‖²"
            )
            + "."
        )
    commands = [fill_command(v["command"], adapter) for v in section["engines"] if v["command"]]
    if commands:
        parts.append("```bash\n" + "\n".join(commands) + "\n```")
    parts.append(
        "The rules and where each comes from are in `hubmerge_report.json` (`serving.engines[].rules`); "
        "llama.cpp needs the base model as GGUF too."
    )
    return "\n\n".join(parts)
