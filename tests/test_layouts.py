"""One module under two checkpoint layouts is one module (hubmerge/layouts.py).

An adapter saved against transformers' older Llava / Qwen2-VL layout is made
here by renaming a current adapter's keys the way those releases named the
modules (written out by hand, not with hubmerge's table); PEFT renames them
back at load. Merged with an adapter in the current layout, the result must be
exact against PEFT applying both and against base + Σ ΔWᵢ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import hubmerge
from hubmerge.cli import main
from hubmerge.layouts import LAYOUT_RENAMES, layout_keymaps
from tests.arch_zoo import base_id, make_adapter
from tests.conftest import TOKENS
from tests.test_sweep import assert_exact

PREFIX = "base_model.model."
# How transformers before 4.52 named these modules (the current name's prefix → the old one).
OLD_NAMES = {
    "llava": [
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
    ],
    "qwen2_vl": [("model.language_model.", "model."), ("model.visual.", "visual.")],
}
OLD_NAMES["gemma3_vlm"] = OLD_NAMES["llava"]  # Gemma3ForConditionalGeneration was built like Llava


def to_old_layout(directory: Path, arch: str) -> Path:
    path = directory / "adapter_model.safetensors"
    renamed = {}
    for key, tensor in load_file(path).items():
        rel = key.removeprefix(PREFIX)
        for new, old in OLD_NAMES[arch]:
            if rel.startswith(new):
                rel = old + rel[len(new) :]
                break
        renamed[PREFIX + rel] = tensor
    save_file(renamed, path)
    return directory


@pytest.mark.parametrize(
    "arch, old_spec",
    [
        ("llava", dict(target_modules=["q_proj", "fc1", "linear_1"])),  # language model, vision tower, projector
        ("llava", dict(target_modules=["v_proj"], modules_to_save=["lm_head"])),  # language_model.lm_head saved
        ("gemma3_vlm", dict(target_modules=["q_proj", "fc2"])),
        ("qwen2_vl", dict(target_modules=["q_proj", "qkv", "down_proj"])),
    ],
)
def test_old_and_new_layout_merge_exactly(tmp_path, capsys, arch, old_spec):
    new = make_adapter(tmp_path / "new", arch, seed=1, target_modules="all-linear")
    twin = make_adapter(tmp_path / "twin", arch, seed=2, **old_spec)
    old = to_old_layout(Path(shutil.copytree(twin, tmp_path / "old")), arch)
    assert not (set(load_file(old / "adapter_model.safetensors")) & set(load_file(new / "adapter_model.safetensors")))
    out = tmp_path / "out"
    assert main([str(new), str(old), "--weights", "1,-0.5", "-o", str(out)]) == 0
    # The references load the old adapter's current-layout twin (the same tensors): PEFT 0.21 itself drops
    # old keys whose new name only adds "model." in front (multi_modal_projector., visual.) when it loads them.
    assert_exact(arch, [(new, 1.0), (twin, -0.5)], out)
    report = json.loads((out / "hubmerge_report.json").read_text())
    assert [w["code"] for w in report["warnings"]].count("layout_renamed") == 1
    shared = report["modules"]["shared_by_all"]
    assert shared > 0 and all(not k.startswith(("language_model.", "visual.")) for k in report["modules"]["coverage"])


def test_all_in_the_old_layout_stays_old_and_loads(tmp_path):
    # Nothing to reconcile: the keys stay as saved (PEFT renames them at load), and target_modules also
    # names each module in the current layout, since PEFT matches it against the model's current names.
    # (Language model and vision tower only: PEFT 0.21 drops old multi_modal_projector. keys by itself.)
    specs = ((1, ["q_proj", "fc1"]), (2, ["v_proj", "fc2"]))
    twins = [make_adapter(tmp_path / f"twin{i}", "llava", seed=i, target_modules=t) for i, t in specs]
    old = [to_old_layout(Path(shutil.copytree(t, tmp_path / f"old{i}")), "llava") for i, t in enumerate(twins)]
    out = tmp_path / "out"
    assert main([*map(str, old), "--weights", "1,-1", "-o", str(out)]) == 0
    keys = load_file(out / "adapter_model.safetensors")
    assert all(k.startswith(("base_model.model.language_model.", "base_model.model.vision_tower.")) for k in keys)
    assert_exact("llava", [(twins[0], 1.0), (twins[1], -1.0)], out)


def test_the_base_models_type_on_the_hub_decides_the_layout(tmp_path, hub):
    # Every adapter in the old Qwen2-VL layout: PEFT 0.21 itself drops such keys at load (see
    # test_all_in_the_old_layout_stays_old_and_loads), but once the Hub says the base is a qwen2_vl model,
    # the merge is written in the current layout, which PEFT loads as it is.
    repo = base_id("qwen2_vl")
    if repo not in hub.list_repos():
        hub.create_repo(repo, owner_token=TOKENS["alice"])
        hub.commit_files(repo, {"config.json": json.dumps({"model_type": "qwen2_vl"}).encode()})
    specs = ((1, ["q_proj", "qkv"]), (2, ["v_proj", "fc1"]))
    twins = [make_adapter(tmp_path / f"twin{i}", "qwen2_vl", seed=i, target_modules=t) for i, t in specs]
    old = [to_old_layout(Path(shutil.copytree(t, tmp_path / f"old{i}")), "qwen2_vl") for i, t in enumerate(twins)]
    result = hubmerge.merge(old, weights=[1.0, 0.5], resolve_base_model=True)
    out = result.save_pretrained(tmp_path / "out")
    keys = load_file(out / "adapter_model.safetensors")
    assert all(k.startswith(("base_model.model.model.language_model.", "base_model.model.model.visual.")) for k in keys)
    assert [w.code for w in result.report.warnings].count("layout_renamed") == 2
    assert_exact("qwen2_vl", [(twins[0], 1.0), (twins[1], 0.5)], out)


def test_one_layout_alone_is_left_as_it_is(tmp_path):
    # BLIP-2's current layout looks like Llava's old one: without an adapter in the new layout, nothing is renamed.
    keys = [["language_model.model.layers.0.self_attn.q_proj"], ["language_model.model.layers.1.self_attn.q_proj"]]
    keymaps, renamed = layout_keymaps(keys)
    assert keymaps == [{}, {}] and renamed == []
    assert layout_keymaps(keys, model_type="blip-2") == ([{}, {}], [])
    keymaps, _ = layout_keymaps(keys, model_type="llava")
    assert keymaps[1] == {keys[1][0]: "model.language_model.layers.1.self_attn.q_proj"}
    # a known type that no family lists renames nothing, even beside an adapter in a "new" layout
    assert layout_keymaps([*keys, ["model.language_model.layers.0.v_proj"]], model_type="blip-2")[1] == []
    keymaps, renamed = layout_keymaps([*keys, ["model.language_model.layers.0.self_attn.v_proj"]])
    assert keymaps[0] == {keys[0][0]: "model.language_model.layers.0.self_attn.q_proj"}
    assert [family for _, family in renamed] == ["llava", "llava"]


def test_every_family_says_where_it_comes_from():
    for family in LAYOUT_RENAMES:
        assert family.origin and family.model_types and family.markers
        for pattern, _ in family.renames:
            assert pattern.startswith("^"), "renames apply to the start of a key, as transformers' do"


def test_a_rename_that_would_merge_two_of_one_adapters_keys_is_not_applied():
    own = ["vision_tower.vision_model.encoder.layers.0.q_proj", "vision_tower.encoder.layers.0.q_proj"]
    keymaps, renamed = layout_keymaps([own, ["model.language_model.layers.0.q_proj"]])
    assert keymaps[0] == {} and renamed == []
