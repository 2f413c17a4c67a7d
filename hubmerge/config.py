"""``adapter_config.json``: the fields that change the math, parsed and typed.

PEFT computes ``W + s·B·A`` per module with the scale ``s = α/r`` (``α/√r``
with rsLoRA), where r and α may be overridden per module by ``rank_pattern``
and ``alpha_pattern``. Unknown keys are tolerated (newer PEFT versions add
fields); keys whose presence makes the delta something other than ``s·B·A``
are recorded in :attr:`AdapterConfig.unsupported` with the reason, for the
compatibility check to report.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AdapterFormatError
from .patterns import backtracks_exponentially

__all__ = ["CONFIG_NAME", "AdapterConfig", "build_config", "describe_full_model", "parse_config", "read_config"]

CONFIG_NAME = "adapter_config.json"
# What a full model's folder holds instead: transformers' config and weights (sharded or not), or a GGUF file.
MODEL_CONFIG_NAME = "config.json"
_MODEL_WEIGHTS = re.compile(r"(\w+_)?model(-\d+-of-\d+)?\.(safetensors|bin)|[\w.-]+\.gguf")
MAX_RANK = 1 << 16
# PEFT configs are a few KB; a larger "config" is not one, and is not read into memory.
MAX_CONFIG_BYTES = 16 * 1024 * 1024

# Config fields whose presence makes the delta something other than s·B·A (or
# ties it to a modified base), with the reason the sum would not be exact.
_VARIANTS: dict[str, str] = {
    "use_dora": "DoRA rescales W+BA by a learned magnitude, so its delta depends on the base weights",
    "lora_bias": "lora_bias adds a trained bias to lora_B, which is not part of B·A",
    "use_qalora": "QALoRA pools the input before A, so its delta is not B·A",
    "use_bdlora": "BD-LoRA stores block-diagonal factors that are not plain B and A",
    "kasa_config": "KaSA parametrises the update through the base weight's singular vectors",
    "monteclora_config": "MonteCLoRA samples its factors, so there is no single B·A",
    "alora_invocation_tokens": "Activated LoRA only applies after invocation tokens, so it is not a weight delta",
    "arrow_config": "Arrow routes between several LoRAs per token",
    "trainable_token_indices": "trainable tokens store full embedding rows, not a low-rank delta",
    "layer_replication": "layer_replication changes the base model's layer structure",
}
# init_lora_weights values that change the base model itself (PiSSA, OLoRA, …):
# the adapter's delta is relative to that modified base until PEFT converts it.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of ``adapter_config.json`` that change the math, parsed and typed.

    Unknown keys are tolerated (newer PEFT versions add fields); those that
    make the sum inexact end up in :attr:`unsupported`.
    """

    peft_type: str | None
    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    target_modules: list[str] | str | None = None
    target_parameters: list[str] = field(default_factory=list)
    enable_lora: list[bool] | None = None  # PEFT 0.2's MergedLinear (hubmerge.legacy)
    layers_to_transform: list[int] | int | None = None
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] = field(default_factory=list)
    use_dora: bool = False
    lora_bias: bool = False
    bias: str = "none"
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    unsupported: dict[str, str] = field(default_factory=dict)

    def rank_for(self, module: str) -> int:
        """The rank PEFT gives ``module`` (``rank_pattern`` first, else ``r``)."""
        key = _pattern_key(self.rank_pattern, module)
        return self.rank_pattern[key] if key is not None else self.r

    def alpha_for(self, module: str) -> float:
        """The alpha PEFT gives ``module`` (``alpha_pattern`` first, else ``lora_alpha``)."""
        key = _pattern_key(self.alpha_pattern, module)
        return self.alpha_pattern[key] if key is not None else self.lora_alpha

    def scale_for(self, module: str) -> float:
        """PEFT's scaling for ``module``: α/r, or α/√r with rsLoRA."""
        r = self.rank_for(module)
        alpha = self.alpha_for(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _pattern_key(pattern: dict[str, Any], module: str) -> str | None:
    # Same rule as PEFT's get_pattern_key: the first key (in insertion order)
    # that matches the end of the module name at a dot boundary, as a regex.
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def describe_full_model(names: Iterable[str]) -> str | None:
    """What a folder without ``adapter_config.json`` is instead, when its files are a full model's.

    Args:
        names: the file names directly in the folder.

    Returns:
        ``"looks like a full model, not a PEFT adapter: …"`` naming the ``config.json`` and weights seen and
        what to give instead, or ``None`` when nothing there looks like a model.

    Example:
        >>> describe_full_model(["config.json", "model.safetensors"])[:43]
        'looks like a full model, not a PEFT adapter'
    """
    names = set(names)
    weights = sorted(n for n in names if _MODEL_WEIGHTS.fullmatch(n) and not n.startswith("adapter_model"))
    held = ([MODEL_CONFIG_NAME] if MODEL_CONFIG_NAME in names else []) + (
        [f"model weights ({weights[0]}{', …' if len(weights) > 1 else ''})"] if weights else []
    )
    if not held:
        return None
    return (
        f"looks like a full model, not a PEFT adapter: it holds {' and '.join(held)} but no {CONFIG_NAME}; "
        "give a PEFT LoRA adapter instead, such as one trained on this model"
    )


def read_config(path: Path, where: str) -> AdapterConfig:
    """Read and parse the config file at ``path``; ``where`` names the source in messages."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterFormatError(
            f"{where}: {path.name} is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a PEFT config can need; "
            "this is not an adapter config"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError covers JSONDecodeError and integers too long to convert; RecursionError, nesting too deep.
        if isinstance(err, RecursionError):
            reason = "nested too deeply"
        elif isinstance(err, (UnicodeDecodeError, json.JSONDecodeError)):
            reason = str(err)[:200]
        else:  # int() refuses numbers with thousands of digits
            reason = "a number too long to read"
        raise AdapterFormatError(f"{where}: {path.name} is not valid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise AdapterFormatError(f"{where}: {path.name} must hold a JSON object, not {type(data).__name__}")
    return parse_config(data, where=where)


def parse_config(data: dict[str, Any], *, where: str = "adapter") -> AdapterConfig:
    """Parse the math-relevant fields of an ``adapter_config.json`` dict.

    Raises:
        AdapterFormatError: a field has the wrong type or an impossible value.
    """

    def fail(field_name: str, value: Any, expected: str) -> AdapterFormatError:
        return AdapterFormatError(f"{where}: {CONFIG_NAME} field {field_name!r} = {value!r} should be {expected}")

    def rank(field_name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_RANK:
            raise fail(field_name, value, f"an integer between 1 and {MAX_RANK}")
        return value

    def number(field_name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail(field_name, value, "a finite number")
        return value

    def flag(field_name: str) -> bool:
        value = data.get(field_name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise fail(field_name, value, "true or false")
        return value

    def mapping(field_name: str) -> dict:
        value = data.get(field_name) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise fail(field_name, value, "an object of module-name patterns")
        return value

    def optional_str(field_name: str) -> str | None:
        value = data.get(field_name)
        if value is not None and not isinstance(value, str):
            raise fail(field_name, value, "a string or null")
        return value or None

    if "r" not in data:
        raise AdapterFormatError(f"{where}: {CONFIG_NAME} has no 'r' (rank); is this a LoRA adapter?")
    r = rank("r", data["r"])
    lora_alpha = number("lora_alpha", data.get("lora_alpha", 8))
    rank_pattern = {k: rank(f"rank_pattern[{k!r}]", v) for k, v in mapping("rank_pattern").items()}
    alpha_pattern = {k: number(f"alpha_pattern[{k!r}]", v) for k, v in mapping("alpha_pattern").items()}
    for key in (*rank_pattern, *alpha_pattern):
        try:
            slow = backtracks_exponentially(key)
        except (re.error, RecursionError, OverflowError):
            raise fail("rank_pattern/alpha_pattern key", key, "a valid regular expression") from None
        if slow:
            raise fail(
                "rank_pattern/alpha_pattern key",
                key,
                "a regular expression without a repeated group that itself repeats or alternates "
                "(matching it can take exponential time)",
            )

    modules_to_save = data.get("modules_to_save") or []
    if isinstance(modules_to_save, str):
        modules_to_save = [modules_to_save]
    if not isinstance(modules_to_save, list) or not all(isinstance(m, str) for m in modules_to_save):
        raise fail("modules_to_save", modules_to_save, "a list of module names")
    target_modules = data.get("target_modules")
    if target_modules is not None and not isinstance(target_modules, (str, list)):
        raise fail("target_modules", target_modules, "a list of names or a regex string")
    target_parameters = data.get("target_parameters") or []
    if not isinstance(target_parameters, list) or not all(isinstance(t, str) and t for t in target_parameters):
        raise fail("target_parameters", target_parameters, "a list of parameter names")
    enable_lora = data.get("enable_lora")
    if enable_lora is not None and (
        not isinstance(enable_lora, list) or not enable_lora or not all(isinstance(e, bool) for e in enable_lora)
    ):
        raise fail("enable_lora", enable_lora, "a list of true/false values")
    bias = data.get("bias", "none") or "none"
    if bias not in ("none", "all", "lora_only"):
        raise fail("bias", bias, "'none', 'all' or 'lora_only'")

    unsupported = {key: reason for key, reason in _VARIANTS.items() if data.get(key) not in (None, False, [], {}, "")}
    # bias='all'/'lora_only' is refused by the bias tensors it saves (adapter.py): a model without biases saves none,
    # and its adapter is a plain LoRA.
    init = str(data.get("init_lora_weights", True)).lower()
    if init.startswith(_BASE_CHANGING_INITS):
        unsupported["init_lora_weights"] = (
            f"init_lora_weights={data['init_lora_weights']!r} modifies the base model, so the delta is relative to "
            + (
                # PEFT's conversion covers PiSSA, OLoRA, CorDA and LoRA-GA; LoftQ's base is its own quantized residual.
                "the LoftQ-quantized base saved with it, and no conversion makes it a delta of the original base"
                if init.startswith("loftq")
                else "that modified base; convert it with PEFT's path_initial_model_for_weight_conversion first"
            )
        )

    return AdapterConfig(
        peft_type=optional_str("peft_type"),
        r=r,
        lora_alpha=lora_alpha,
        use_rslora=flag("use_rslora"),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        fan_in_fan_out=flag("fan_in_fan_out"),
        target_modules=target_modules,
        target_parameters=target_parameters,
        enable_lora=enable_lora,
        layers_to_transform=data.get("layers_to_transform"),
        exclude_modules=data.get("exclude_modules") or None,
        modules_to_save=modules_to_save,
        use_dora=flag("use_dora"),
        lora_bias=flag("lora_bias"),
        bias=bias,
        task_type=optional_str("task_type"),
        base_model_name_or_path=optional_str("base_model_name_or_path"),
        revision=optional_str("revision"),
        unsupported=unsupported,
    )


def build_config(
    modules: Sequence[str],
    rank: int,
    *,
    base_model_name_or_path: str | None,
    revision: str | None,
    task_type: str | None,
    fan_in_fan_out: bool,
    modules_to_save: Sequence[str] = (),
    target_names: Sequence[str] | None = None,
    target_parameters: Sequence[str] = (),
) -> dict:
    """The merged adapter's ``adapter_config.json``, built from an allow-list.

    Nothing is copied from the inputs' configs: every field is decided here,
    so input-only settings (rsLoRA, patterns, dropout, init schemes) cannot
    leak into the result and change its scale.

    Every module is stored with one rank (``r = lora_alpha = rank``, scale
    exactly 1; smaller modules are zero-padded) and ``target_modules`` is one
    regular expression that selects exactly the merged modules (see
    :mod:`hubmerge.peft_releases`). Only the fields some supported PEFT
    release needs are written: releases 0.6 to 0.13 refuse keys they do not
    know, and every field left out defaults, in every supported release, to
    the value written here.

    Args:
        modules: the merged module keys.
        rank: the stored rank of every module.
        base_model_name_or_path, revision, task_type, fan_in_fan_out: agreed by the inputs.
        modules_to_save: full modules carried over from one input.
        target_names: module names to write as ``target_modules`` instead of the regex, where they
            select exactly the merged modules (:func:`hubmerge.peft_releases.plain_target_names`).
        target_parameters: full keys of the parameters that carry LoRA (:mod:`hubmerge.experts`):
            exactly those are wrapped; such an output needs PEFT ≥ 0.17 (the field is written only then).
    """
    from .peft_releases import select_fields, target_modules_pattern

    wanted: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": revision,
        "r": rank,
        "lora_alpha": rank,
        # No module at all (LoRA on expert parameters only): an empty list, as PEFT writes it.
        "target_modules": list(target_names) if target_names else target_modules_pattern(modules) if modules else [],
        "fan_in_fan_out": fan_in_fan_out,
        "modules_to_save": list(modules_to_save) or None,
        "bias": "none",
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    if target_parameters:
        wanted["target_parameters"] = list(target_parameters)
    return select_fields(wanted, always=("peft_type", "r", "lora_alpha", "target_modules"))
