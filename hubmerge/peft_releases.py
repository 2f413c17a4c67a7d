"""Which PEFT releases load a merged adapter: each release's ``LoraConfig`` fields, kept as data.

PEFT 0.6 to 0.13 build the config with ``LoraConfig(**json)``: one key the
release does not know is a ``TypeError`` at load. ``data/peft_lora_fields.json``
holds the fields and defaults of every release from 0.2 on, read from the
wheels on PyPI (``tests/make_peft_fields.py`` regenerates it).

The merged config writes a field only when the oldest supported release needs
it (its default differs from the value the merge needs) or the merge needs a
value other than a default; a field the oldest release lacks raises the
output's minimum release (per feature: ``revision`` needs 0.4, ``target_parameters``
0.17). The configs are written for 0.3 on (0.3 needs ``lora_dropout``); 0.2 and 0.3
read only ``adapter_model.bin``, so the safetensors output loads from 0.4.
Which releases load the output, measured in their own virtualenvs:
``docs/compatibility-peft.md`` (``tests/old_peft/check_loading.py``).

``target_modules`` selects exactly the modules that carry factors: the list of
their short names where the inputs chose their modules by name over every layer
(:func:`plain_target_names`), else one regular expression of the module keys
(every PEFT release matches a string with ``re.fullmatch`` against each module
name). Short names alone are not always exact: PEFT up to 0.5 matches list
entries with a plain ``endswith`` (``"0"`` matches ``layers.10``), every release
selects every same-named module whatever its type (Qwen2-VL's merger ``mlp.0`` /
``mlp.2``), and an input limited to some layers did not adapt them all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from .layouts import alternative_keys

if TYPE_CHECKING:
    from .config import AdapterConfig

__all__ = [
    "LAYER_RELEASES",
    "OLDEST_SUPPORTED",
    "config_fields",
    "loading_release",
    "minimum_release",
    "peft_releases",
    "plain_target_names",
    "select_fields",
    "target_modules_pattern",
]

OLDEST_SUPPORTED = "0.3.0"  # its config; 0.2 and 0.3 read only adapter_model.bin (docs/compatibility-peft.md)
SAFETENSORS_RELEASE = "0.4.0"  # the first release that reads adapter_model.safetensors, which hubmerge writes
# The first release whose LoRA wraps each layer (read from the wheels' peft/tuners/lora code: the layer
# class and its dispatch); Linear, Embedding and transformers' Conv1D are older than SAFETENSORS_RELEASE.
LAYER_RELEASES = {"Conv2d": "0.4.0", "Conv3d": "0.14.0", "Conv1d": "0.15.0"}
_DATA = "peft_lora_fields.json"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3])


@cache
def peft_releases() -> dict[str, dict[str, Any]]:
    """Release → its ``LoraConfig`` field → default (non-literal defaults as ``"<factory: …>"`` text)."""
    text = resources.files("hubmerge").joinpath("data").joinpath(_DATA).read_text(encoding="utf-8")
    return json.loads(text)["releases"]


def config_fields(release: str) -> dict[str, Any]:
    """The ``LoraConfig`` fields of one PEFT release, with their defaults."""
    return peft_releases()[release]


def _supported() -> list[str]:
    return [v for v in peft_releases() if _version(v) >= _version(OLDEST_SUPPORTED)]


def _default(value: Any) -> Any:
    # "<factory: dict>" and friends: an empty container of that kind.
    if isinstance(value, str) and value.startswith("<factory: "):
        return {"dict": {}, "list": []}.get(value[len("<factory: ") : -1], value)
    return value


def select_fields(wanted: Mapping[str, Any], *, always: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``wanted`` that a merged config must write, in order.

    A field is written when it is in ``always``, or when some supported
    release lacks it or has a default other than the wanted value; a field
    every supported release would default to the wanted value is left out.
    """
    releases = _supported()
    keep = set(always)
    out = {}
    for key, value in wanted.items():
        defaults = [_default(peft_releases()[v][key]) for v in releases if key in peft_releases()[v]]
        if key in keep or not defaults or any(d != value or type(d) is not type(value) for d in defaults):
            out[key] = value
    return out


def minimum_release(config: Mapping[str, Any]) -> str:
    """The oldest PEFT release (at least :data:`OLDEST_SUPPORTED`) whose ``LoraConfig`` has every key of ``config``."""
    for release in _supported():
        if set(config) <= set(peft_releases()[release]):
            return release
    raise ValueError(f"no known PEFT release has all of {sorted(config)}")


def loading_release(config: Mapping[str, Any], layers: Iterable[str] = ()) -> str:
    """The oldest PEFT release that can load a merged adapter: one whose ``LoraConfig`` has every key of
    ``config`` (:func:`minimum_release`), that reads safetensors, and whose LoRA wraps every layer kind in
    ``layers`` (names of :data:`LAYER_RELEASES`; others need nothing newer).

    Raises:
        ValueError: no known release has every key of ``config``.
    """
    needed = [minimum_release(config), SAFETENSORS_RELEASE, *(LAYER_RELEASES.get(layer, "0.0.0") for layer in layers)]
    return max(needed, key=_version)


def plain_target_names(configs: Iterable[AdapterConfig], keys: Iterable[str]) -> list[str] | None:
    """The merged modules' short names, where a list of them selects exactly the merged modules.

    That holds when every input chose its modules by short name (a list of plain names, or
    ``"all-linear"``), over every layer (no ``layers_to_transform``, no ``exclude_modules``):
    PEFT then adapted every module with those names, so their union selects exactly the union of
    what the inputs adapted. A purely numeric name (``0`` of Qwen2-VL's ``mlp.0``) never does:
    it would select every ``….0``. Serving engines that read ``target_modules`` as names
    (SGLang) understand such a list; otherwise the config gets :func:`target_modules_pattern`.

    Returns:
        The sorted short names, or ``None`` when only the pattern is exact.
    """
    for config in configs:
        targets = config.target_modules
        by_name = targets == "all-linear" or (
            isinstance(targets, list) and all(isinstance(t, str) and t and "." not in t for t in targets)
        )
        if not by_name or config.layers_to_transform is not None or config.exclude_modules:
            return None
    names = sorted({key.rsplit(".", 1)[-1] for key in keys})
    if not names or any(name.isdigit() for name in names):
        return None
    return names


def target_modules_pattern(keys: Iterable[str]) -> str:
    """One regular expression that ``re.fullmatch`` es exactly ``keys`` (and their names in other layouts).

    Keys that differ only in one numeric component are folded
    (``model\\.layers\\.(?:0|1)\\.self_attn\\.(?:q_proj|v_proj)``) to keep the
    config short; the folding only groups keys that are all present.
    """
    names = sorted({alt for key in keys for alt in alternative_keys(key)})
    if not names:
        return "(?!)"  # selects nothing (a report without a merged module)
    by_slot: dict[tuple[str, str], set[str]] = {}
    plain: list[str] = []
    for name in names:
        parts = name.split(".")
        slot = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if slot is None:
            plain.append(re.escape(name))
            continue
        head, tail = ".".join(parts[:slot]), ".".join(parts[slot + 1 :])
        by_slot.setdefault((head, tail), set()).add(parts[slot])
    by_numbers: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (head, tail), found in by_slot.items():
        by_numbers.setdefault((head, tuple(sorted(found, key=int))), []).append(tail)
    pieces = list(plain)
    for (head, numbers), tails in sorted(by_numbers.items()):
        piece = (re.escape(head) + r"\.") if head else ""
        piece += _alternation(numbers)
        if any(tails):
            # An empty tail means the numbered module itself (e.g. ``mlp.0``): optional suffix group.
            rest = [re.escape(t) for t in sorted(tails) if t]
            group = r"\." + _alternation(rest, escaped=True)
            piece += f"(?:{group})?" if "" in tails else group
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else "(?:" + "|".join(pieces) + ")"


def _alternation(items: Iterable[str], *, escaped: bool = False) -> str:
    parts = list(items) if escaped else [re.escape(i) for i in items]
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"
