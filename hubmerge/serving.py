"""Where the merged adapter can be served: the engines' rules as data, and a verdict per engine.

Serving engines apply LoRA adapters with limits of their own. :data:`RULES`
(:mod:`hubmerge.serving_rules`) holds them, one row per rule with the code or
document it comes from (and the version read); which modules each engine
applies per architecture is :mod:`hubmerge.serving_modules`. :func:`servability`
checks the facts of a merge against every row and gives, per engine, whether it
serves the adapter as merged, why not, and the command that serves it. Pure: no
network, no files.

The facts (:func:`serving_facts`) come from the merge report and the merged
``adapter_config.json``: the base's ``model_type`` (where the Hub told it), the
stored rank, the adapted modules and parameters, full weight copies, and whether
a GGUF file was written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .methods.rank_limit import VLLM_MAX_LORA_RANKS, smallest_vllm_rank
from .peft_releases import plain_target_names
from .serving_modules import NotKnown, judge_modules
from .serving_rules import ADAPTER, ENGINES, GGUF_NAME, RULES, Engine, Rule

if TYPE_CHECKING:
    from .config import AdapterConfig
    from .report import MergeReport

__all__ = [
    "ENGINES",
    "GGUF_NAME",
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

_LAYER = re.compile(r"\.(\d+)\.")
_NUMBER = re.compile(r"\.\d+\.")  # applied twice: adjacent numbers (".0.1.") share a dot
_PARAM = re.compile(r"\[\d+\]$")


def serving_facts(
    report: MergeReport,
    config: Mapping[str, Any],
    *,
    full_weights: list[str],
    gguf_file: str | None = None,
    model_type: str | None = None,
    source_configs: Sequence[AdapterConfig] | None = None,
) -> dict[str, Any]:
    """What the rules look at, from a merge report and the merged ``adapter_config.json``.

    Args:
        report: the :class:`~hubmerge.report.MergeReport` (its output, modules, modules_to_save, base model).
        config: the merged adapter's config (``use_dora``, ``bias``, ``rank_pattern``, …).
        full_weights: module keys whose full weights the adapter carries (saved embeddings).
        gguf_file: the GGUF file written next to the adapter, if any.
        model_type: the base model's ``model_type`` (from its ``config.json``), where known: which
            modules an engine applies depends on it.
        source_configs: the sources' configs, for a report without a merged config (report only):
            whether its ``target_modules`` would be a regex is then found as the merge would write it.

    Returns:
        A JSON-able dict: ``base_model``, ``model_type``, ``rank`` (with ``rank_is_upper_bound`` for a
        report-only run, where it is the sum of the sources' largest ranks), ``modules`` (short names),
        ``module_types`` (module keys with layer and expert numbers starred), ``parameters``
        (parameter LoRA, ``target_parameters``, starred the same way), ``partial_layers`` (module
        types some layers lack), ``modules_to_save``, ``full_weights``, ``use_dora``, ``bias``,
        ``patterns``, ``target_modules_regex`` (``None`` when not known), ``gguf_file``.
    """
    every = list(report.modules.coverage)
    # A parameter LoRA's key is the parameter's (".weight", or "[e]" for one expert of a fused 3-D weight).
    params = {_PARAM.sub("", key) for key in every if _PARAM.search(key) or key.endswith((".weight", ".bias"))}
    params |= set(config.get("target_parameters") or [])
    keys = [key for key in every if not (_PARAM.search(key) or key.endswith((".weight", ".bias")))]
    if report.output is not None:
        rank, upper_bound = report.output.rank, False
    else:  # report only: the stacked rank, an upper bound
        rank, upper_bound = sum(s.rank_max for s in report.sources), True
    return {
        "base_model": report.base_model.canonical or report.base_model.name,
        "model_type": model_type,
        "rank": rank,
        "rank_is_upper_bound": upper_bound,
        "modules": sorted({key.rsplit(".", 1)[-1] for key in keys}),
        "module_types": sorted({_NUMBER.sub(".*.", _NUMBER.sub(".*.", key)) for key in keys}),
        "parameters": sorted({_NUMBER.sub(".*.", _NUMBER.sub(".*.", key)) for key in params}),
        "partial_layers": _partial_layers(keys),
        "modules_to_save": [item.module for item in report.modules_to_save],
        "full_weights": sorted(full_weights),
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias") or "none",
        "patterns": bool(config.get("rank_pattern") or config.get("alpha_pattern")),
        "target_modules_regex": _regex_targets(config, source_configs, keys),
        "gguf_file": gguf_file,
    }


def _regex_targets(config: Mapping[str, Any], sources: Sequence[AdapterConfig] | None, keys: list[str]) -> bool | None:
    """Whether ``target_modules`` is a string other than PEFT's shorthands (PEFT then reads it as a regex).

    Without a merged config, from the sources as :func:`hubmerge.config.build_config` would choose (names
    where names select exactly the merged modules, else a regex); ``None`` when neither is given.
    """
    if config:
        targets = config.get("target_modules")
        return isinstance(targets, str) and targets not in ("all", "all-linear")
    if sources is None:
        return None
    return bool(keys) and plain_target_names(sources, keys) is None


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
    saved = [m for m in facts["modules_to_save"] if m.rsplit(".", 1)[-1] not in params.get("allowed", ())]
    return f"modules_to_save: {', '.join(saved)}" if saved else None


def _kept_copies(facts, params) -> list[str]:
    """The saved embeddings an engine does not skip.

    A saved embedding of a module that also carries LoRA is written as that module's ``base_layer.weight``
    (PEFT's own layout, the base's weight); an engine with ``skips`` drops those of the module names listed
    there (``"*"``: every name) and applies the LoRA as usual.
    """
    skips, adapted = params.get("skips", ()), set(facts["module_types"])
    return [
        key
        for key in facts["full_weights"]
        if key not in adapted or not ("*" in skips or key.rsplit(".", 1)[-1] in skips)
    ]


def _no_full_weights(facts, params) -> str | None:
    full = [*facts["modules_to_save"], *_kept_copies(facts, params)]
    return f"full weight copies of {', '.join(full)}" if full else None


def _no_saved_embeddings(facts, params) -> str | None:
    full = _kept_copies(facts, params)
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


def _no_regex_targets(facts, params) -> str | None:
    regex = facts.get("target_modules_regex")
    if regex is None:
        return NotKnown("whether target_modules is a list (a report without a merged adapter_config.json)")
    return "target_modules is a regex string" if regex else None


def _no_parameters(facts, params) -> str | None:
    found = facts.get("parameters") or []
    return NotKnown(f"how SGLang reads LoRA on {', '.join(found)}") if found else None


def _every_layer(facts, params) -> str | None:
    partial = facts["partial_layers"]
    return f"{', '.join(partial)} is not adapted in every layer and would be dropped" if partial else None


class _Partial(str):
    """A failed module check that does not refuse the adapter: some modules are served without their LoRA."""


def _engine_modules(facts, params) -> str | None:
    found = judge_modules(params["engine"], facts)
    why = found["why"]
    if why is None or isinstance(why, NotKnown) or found["refuses"]:
        return why
    return _Partial(why)


def _gguf_convertible(facts, params) -> str | None:
    model_type = facts.get("model_type")
    if facts.get("gguf_file"):
        return None
    if model_type is None:
        return NotKnown("whether hubmerge's GGUF export converts this base (the base's model_type was not read)")
    if model_type not in params["model_types"]:
        return NotKnown(f"how llama.cpp takes a {model_type} LoRA: hubmerge's GGUF export does not convert it")
    return None


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
    "no_regex_targets": _no_regex_targets,
    "no_parameters": _no_parameters,
    "engine_modules": _engine_modules,
    "gguf_convertible": _gguf_convertible,
    "has_gguf": _has_gguf,
}


_MODULE_RULES = {"target_modules", "target_modules_list", "experts"}


def servability(facts: Mapping, rules: tuple[Rule, ...] = RULES) -> list[dict]:
    """Check the facts against every rule; one verdict per engine.

    Args:
        facts: from :func:`serving_facts`.
        rules: the rules to apply (default :data:`RULES`).

    Returns:
        Per engine, in :data:`ENGINES` order: ``engine``, ``name``, ``status``
        (``"servable"``, ``"servable, slower"``, ``"after conversion"`` or ``"not servable"``; a
        servable one adds ``", some modules not applied"`` when the engine serves the adapter without
        some of its modules, ``", modules not checked"`` when which modules it applies is not known, and
        ``", not all checked"`` when something else is not known),
        ``servable`` (bool: no rule checked refuses it; it serves this adapter as merged, possibly
        after the stated conversion), ``reasons`` (the failed rules, in words), ``not_known`` (what
        the sources read do not say for this base), ``command`` (with
        ``ADAPTER`` standing for the adapter's directory or repo id; ``None`` when not
        servable) and ``rules`` (every rule checked: ``code``, ``ok`` (``None``: not known),
        ``effect``, ``detail``, ``source``).

    Example:
        >>> [v["status"] for v in servability(serving_facts(result.report, result.config, full_weights=[]))]
        ['servable, modules not checked', 'servable', 'servable', 'servable, modules not checked',
         'after conversion, not all checked']
    """
    verdicts = []
    for key, engine in ENGINES.items():
        checked = []
        for rule in (r for r in rules if r.engine == key):
            detail = _CHECKS[rule.check](facts, rule.params)
            checked.append(
                {
                    "code": rule.code,
                    "ok": None if isinstance(detail, NotKnown) else detail is None,
                    "effect": "partial" if isinstance(detail, _Partial) else rule.effect,
                    "requirement": rule.requirement,
                    "detail": None if detail is None else str(detail),
                    "source": rule.source,
                }
            )
        failed = {c["effect"] for c in checked if c["ok"] is False}
        if "refuses" in failed:
            status = "not servable"
        elif "convert" in failed:
            status = "after conversion"
        elif "slower" in failed:
            status = "servable, slower"
        else:
            status = "servable"
        servable = status != "not servable"
        if servable and "partial" in failed:
            status += ", some modules not applied"
        not_known = [c["detail"] for c in checked if c["ok"] is None]
        if servable and not_known:
            modules = all(c["code"] in _MODULE_RULES for c in checked if c["ok"] is None)
            status += ", modules not checked" if modules else ", not all checked"
        verdicts.append(
            {
                "engine": key,
                "name": engine.name,
                "status": status,
                "servable": servable,
                "reasons": [f"{c['detail']}: {c['requirement']}" for c in checked if c["ok"] is False],
                "not_known": not_known,
                "command": _command(engine, facts) if servable else None,
                "rules": checked,
            }
        )
    return verdicts


def _command(engine: Engine, facts: Mapping) -> str:
    """The engine's command for these facts: the base, vLLM's smallest legal rank, and the flags the modules need."""
    rank = smallest_vllm_rank(facts["rank"]) if engine.key == "vllm" else facts["rank"]
    command = engine.command.replace("{rank}", str(rank)).replace("{base}", facts.get("base_model") or "BASE_MODEL")
    if engine.key == "vllm" and judge_modules("vllm", facts)["flags"]:
        # A fused-expert adapter is read only on this flag and with is_3d_lora_weight on the LoRA module
        # (vllm/lora/model_manager.py: _validate_moe_lora_format; entrypoints/openai/models/protocol.py).
        module = '{"name": "merged", "path": "ADAPTER", "is_3d_lora_weight": true}'
        command = command.replace(
            "--lora-modules merged=ADAPTER", f"--enable-mixed-moe-lora-format --lora-modules '{module}'"
        )
    return command


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
        said = [r.split(":", 1)[0] for r in verdict["reasons"]] + [
            f"not known: {n}" for n in verdict.get("not_known", [])
        ]
        why = f" — {'; '.join(said)}" if said else ""
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
        said = [*verdict["reasons"], *(f"not known: {n}" for n in verdict.get("not_known", []))]
        why = "; ".join(said) or "every rule checked passes"
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
