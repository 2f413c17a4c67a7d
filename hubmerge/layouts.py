"""One module under two checkpoint layouts is one module: the renames, as data.

transformers moved the weights of several model families (Llava and the
models built like it, Qwen2-VL, Qwen2-Audio, …) to a new layout and renames the
old keys when it loads a checkpoint (``conversion_mapping.py``, before that
each model's ``_checkpoint_conversion_mapping``); PEFT applies the same renames
to adapter keys at load. An adapter saved against the old layout and one saved
against the new one therefore name the same module differently, and PEFT would
load both onto one module, one overwriting the other.

:data:`LAYOUT_RENAMES` keeps each family's renames as a table, with where it
comes from. Keys here are module keys without PEFT's ``base_model.model.``
prefix. A family's renames are applied to an adapter only when another adapter
of the same merge is in that family's new layout (it has a key under one of
the family's ``markers``), or when the Hub says the base model is of one of
the family's model types: key shapes alone cannot tell an old Llava layout
from a model whose current layout looks the same (BLIP-2 still has
``language_model.model.layers``), but two adapters of one base that disagree
can only be two layouts of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LAYOUT_RENAMES", "LayoutFamily", "alternative_keys", "layout_keymaps"]


@dataclass(frozen=True)
class LayoutFamily:
    """One family's move from an old checkpoint layout to the current one.

    Attributes:
        name: the family, as transformers' conversion mapping calls it.
        model_types: the model types transformers renames this way.
        renames: ``(regex, replacement)`` on a module key, tried in order; the first match wins.
        markers: key prefixes that exist only in the new layout.
        origin: where the renames come from.
    """

    name: str
    model_types: tuple[str, ...]
    renames: tuple[tuple[str, str], ...]
    markers: tuple[str, ...]
    origin: str

    def rename(self, key: str) -> str | None:
        """``key`` in the new layout, or ``None`` when no rename of this family matches it."""
        for pattern, replacement in self.renames:
            renamed, count = re.subn(pattern, replacement, key, count=1)
            if count:
                return renamed
        return None


_TRANSFORMERS = "transformers 5.x conversion_mapping.py (4.52+: _checkpoint_conversion_mapping)"
LAYOUT_RENAMES: tuple[LayoutFamily, ...] = (
    LayoutFamily(
        name="llava",
        model_types=(
            "llava", "llava_next", "llava_next_video", "llava_onevision", "aria", "aya_vision", "paligemma",
            "gemma3", "internvl", "got_ocr2", "vipllava", "mistral3", "fuyu", "mllama", "video_llava",
        ),
        renames=(
            (r"^language_model\.lm_head(?=\.|$)", "lm_head"),
            (r"^language_model\.model\.", "model.language_model."),
            # The CLIP/SigLIP tower dropped its own vision_model level (CLIPVisionModel: prefix_to_remove).
            (r"^vision_tower\.vision_model\.", "model.vision_tower."),
            (r"^vision_tower\.", "model.vision_tower."),
            (r"^multi_modal_projector\.", "model.multi_modal_projector."),
            (r"^image_newline(?=\.|$)", "model.image_newline"),
            (r"^vision_embed_tokens\.", "model.vision_embed_tokens."),  # fuyu
            (r"^vision_model\.", "model.vision_model."),  # mllama
            (r"^(image_tower|video_tower)\.", r"model.\1."),  # video_llava
        ),
        markers=(
            "model.language_model.", "model.vision_tower.", "model.multi_modal_projector.",
            "model.vision_model.", "model.vision_embed_tokens.", "model.image_tower.", "model.video_tower.",
        ),
        origin=_TRANSFORMERS + ": 'llava', 'LlavaModel', 'CLIPVisionModel' and the model types mapped to them",
    ),
    LayoutFamily(
        name="qwen2_vl",
        model_types=("qwen2_vl", "qwen2_5_vl"),
        renames=(
            (r"^visual\.", "model.visual."),
            (r"^model\.(?!language_model\.|visual\.)", "model.language_model."),
        ),
        markers=("model.language_model.", "model.visual."),
        origin=_TRANSFORMERS + ": 'Qwen2VLForConditionalGeneration' (Qwen2.5-VL maps to it)",
    ),
    LayoutFamily(
        name="qwen2_audio",
        model_types=("qwen2_audio", "voxtral", "audioflamingo3", "glmasr", "musicflamingo"),
        renames=(
            (r"^language_model\.lm_head(?=\.|$)", "lm_head"),
            (r"^language_model\.model\.", "model.language_model."),
            (r"^audio_tower\.", "model.audio_tower."),
            (r"^multi_modal_projector\.", "model.multi_modal_projector."),
        ),
        markers=("model.language_model.", "model.audio_tower.", "model.multi_modal_projector."),
        origin=_TRANSFORMERS + ": 'qwen2_audio', 'Qwen2AudioModel'",
    ),
)  # fmt: skip


def _in_new_layout(keys: Sequence[str], family: LayoutFamily) -> bool:
    return any(key.startswith(family.markers) for key in keys)


def layout_keymaps(
    key_sets: Sequence[Sequence[str]], *, model_type: str | None = None
) -> tuple[list[dict[str, str]], list[tuple[int, str]]]:
    """Map every adapter's keys into one layout.

    Args:
        key_sets: per adapter, all its module keys (LoRA modules, saved modules,
            saved base layers), without PEFT's ``base_model.model.`` prefix.
        model_type: the base model's ``model_type``, where the Hub told it. A family
            that lists it renames every adapter in its old layout to the current one;
            a known type that no family lists renames nothing. Unknown: a family
            renames an adapter only when another one is in its current layout.

    Returns:
        ``(keymaps, renamed)``: per adapter, own key → key in the merge's layout
        (only the keys that change); and ``(adapter index, family name)`` for
        each adapter whose keys were renamed.
    """
    if model_type is not None:
        families = tuple(f for f in LAYOUT_RENAMES if model_type in f.model_types)
    else:
        families = LAYOUT_RENAMES
    keymaps: list[dict[str, str]] = [{} for _ in key_sets]
    renamed: list[tuple[int, str]] = []
    for index, keys in enumerate(key_sets):
        for family in families:
            evidence = model_type is not None or any(
                _in_new_layout(other, family) for j, other in enumerate(key_sets) if j != index
            )
            if not evidence or _in_new_layout(keys, family):
                continue
            mapping = {key: new for key in keys if (new := family.rename(key)) is not None and new != key}
            unchanged = set(keys) - set(mapping)
            if len(set(mapping.values())) < len(mapping) or unchanged & set(mapping.values()):
                continue  # two of its own keys would become one: not a layout this family knows
            if mapping:
                keymaps[index] = mapping
                renamed.append((index, family.name))
                break
    return keymaps, renamed


def alternative_keys(key: str) -> list[str]:
    """``key`` and its name in each family's new layout that renames it.

    A merged adapter written in an old layout is loaded by PEFT with the keys
    renamed but matched against the model's (new) module names: a selection of
    modules that must hold under both names lists both.
    """
    found = [key]
    for family in LAYOUT_RENAMES:
        renamed = family.rename(key)
        if renamed is not None and renamed not in found:
            found.append(renamed)
    return found
