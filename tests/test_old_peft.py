"""Adapters saved by old PEFT releases (0.2 …), merged exactly.

The fixtures in ``tests/old_peft/fixtures/<release>/`` were saved by each release itself
(``tests/old_peft/make_fixtures.py`` regenerates them). References, both independent of
hubmerge: the dense deltas computed here from each fixture's own factors with that
release's scaling rules (α/r, α/√r with rsLoRA, plain-name rank/alpha patterns; PEFT 0.2's
``MergedLinear`` by running its Conv1d forward on the identity), and current PEFT loading
the fixture and the merged result on a tiny model of the same architecture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file

import hubmerge

FIXTURES = Path(__file__).parent / "old_peft" / "fixtures"
RELEASES = sorted((p.name for p in FIXTURES.iterdir() if p.is_dir()), key=lambda v: tuple(map(int, v.split("."))))
PAIRS = {"linear": ("linear-a", "linear-b"), "conv1d": ("conv1d-a", "conv1d-b")}
WEIGHTS = (1.0, -0.5)
PREFIX = "base_model.model."
MODEL_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "opt": ("OPTConfig", "OPTForCausalLM"),
                 "gpt2": ("GPT2Config", "GPT2LMHeadModel")}  # fmt: skip


def manifest(release: str) -> dict:
    return json.loads((FIXTURES / release / "manifest.json").read_text())


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / "adapter_model.safetensors").exists():
        return load_file(directory / "adapter_model.safetensors")
    return torch.load(directory / "adapter_model.bin", map_location="cpu", weights_only=True)


def _pattern(patterns: dict, module: str, default):
    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return value
    return default


def merged_linear_delta(a: torch.Tensor, b: torch.Tensor, enable_lora: list[bool]) -> torch.Tensor:
    """PEFT 0.2's MergedLinear forward on the identity: lora_A, a Conv1d with 2 groups, zero_pad."""
    d_in = a.shape[1]
    after_a = torch.eye(d_in) @ a.T  # (in, S·r): one row per input direction
    after_b = torch.nn.functional.conv1d(after_a.T.unsqueeze(0), b, groups=2).squeeze(0)  # (S·out_p, in)
    out_p = b.shape[0] // sum(enable_lora)
    index = torch.tensor(enable_lora).repeat_interleave(out_p)
    delta = torch.zeros(out_p * len(enable_lora), d_in)
    delta[index] = after_b
    return delta


def fixture_deltas(directory: Path) -> dict[str, torch.Tensor]:
    """Module → s·ΔW (out × in), from the fixture's factors and its release's scaling rules."""
    config = json.loads((directory / "adapter_config.json").read_text())
    state = tensors(directory)
    deltas = {}
    for name, a in state.items():
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[len(PREFIX) : -len(".lora_A.weight")]
        b = state[f"{PREFIX}{module}.lora_B.weight"]
        r = _pattern(config.get("rank_pattern") or {}, module, config["r"])
        alpha = _pattern(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        delta = merged_linear_delta(a, b, config["enable_lora"]) if b.dim() == 3 else b @ a
        deltas[module] = scale * delta.double()
    return deltas


def tiny_model(spec: dict):
    config_cls, model_cls = MODEL_CLASSES[spec["model"]]
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**spec["model_config"])).eval()


def input_ids() -> torch.Tensor:
    return torch.arange(1, 17).reshape(2, 8)


@torch.no_grad()
def dense_logits(spec: dict, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    model = tiny_model(spec)
    params = dict(model.named_parameters())
    for module, delta in deltas.items():
        weight = params[f"{module}.weight"]
        weight.add_((delta.T if spec["model"] == "gpt2" else delta).to(weight.dtype))  # Conv1D stores in × out
    return model(input_ids()).logits


@torch.no_grad()
def peft_logits(spec: dict, directory: Path) -> torch.Tensor:
    return PeftModel.from_pretrained(tiny_model(spec), str(directory)).eval()(input_ids()).logits


CASES = [(release, family) for release in RELEASES for family in PAIRS]


@pytest.mark.parametrize(("release", "family"), CASES, ids=[f"{r}-{f}" for r, f in CASES])
def test_old_release_merges_exactly(tmp_path, release, family):
    info = manifest(release)
    dirs = [FIXTURES / release / name for name in PAIRS[family]]
    spec = info["adapters"][PAIRS[family][0]]
    result = hubmerge.merge([str(d) for d in dirs], weights=list(WEIGHTS), allow_pickle=True)
    out = tmp_path / "merged"
    result.save_pretrained(out)

    want: dict[str, torch.Tensor] = {}
    for directory, weight in zip(dirs, WEIGHTS):
        for module, delta in fixture_deltas(directory).items():
            want[module] = want.get(module, 0) + weight * delta
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] and not config.get("use_rslora", False)
    got_state = load_file(out / "adapter_model.safetensors")
    got = {
        name[len(PREFIX) : -len(".lora_A.weight")]: got_state[name.replace("lora_A", "lora_B")].double() @ a.double()
        for name, a in got_state.items()
        if name.endswith(".lora_A.weight")
    }
    assert set(got) == set(want)
    for module, delta in want.items():
        assert torch.allclose(got[module], delta, atol=1e-5, rtol=1e-5), (module, (got[module] - delta).abs().max())

    # Current PEFT applies the merged output as base + Σ wᵢ·ΔWᵢ …
    reference = dense_logits(spec, want)
    assert (reference - tiny_model(spec)(input_ids()).logits).abs().max() > 1e-2
    assert torch.allclose(peft_logits(spec, out), reference, atol=2e-5)
    # … and reads each fixture as the dense reference does, except PEFT 0.2's MergedLinear, which
    # no later release can load.
    for directory in dirs:
        if json.loads((directory / "adapter_config.json").read_text()).get("enable_lora"):
            continue
        assert torch.allclose(peft_logits(spec, directory), dense_logits(spec, fixture_deltas(directory)), atol=2e-5)


def test_fixtures_come_from_the_releases_they_claim():
    assert {"0.2.0", "0.3.0", "0.6.0", "0.10.0", "0.13.0", "0.17.0"} <= set(RELEASES)
    for release in RELEASES:
        info = manifest(release)
        assert info["peft"] == release
        for name in info["adapters"]:
            config = json.loads((FIXTURES / release / name / "adapter_config.json").read_text())
            assert config["peft_type"] == "LORA"
            assert sum(p.stat().st_size for p in (FIXTURES / release / name).iterdir()) < 32_000  # tiny


def test_merged_linear_with_other_group_counts_is_refused(tmp_path):
    """enable_lora with three parts: PEFT 0.2 convolves in 2 groups but merges in 3, so no single delta."""
    source = FIXTURES / "0.2.0" / "conv1d-a"
    broken = tmp_path / "three-parts"
    broken.mkdir()
    config = json.loads((source / "adapter_config.json").read_text())
    state = tensors(source)
    a_name = next(n for n in state if n.endswith("lora_A.weight"))
    b_name = a_name.replace("lora_A", "lora_B")
    r, out_p = config["r"], state[b_name].shape[0] // 2
    state[a_name] = torch.randn(3 * r, state[a_name].shape[1])
    state[b_name] = torch.randn(3 * out_p, 3 * r // 2 if (3 * r) % 2 == 0 else 1, 1)
    config["enable_lora"] = [True, True, True]
    (broken / "adapter_config.json").write_text(json.dumps(config))
    torch.save(state, broken / "adapter_model.bin")
    with pytest.raises(hubmerge.IncompatibleAdaptersError) as info:
        hubmerge.merge([str(broken)], allow_pickle=True)
    assert str(info.value.problems[0]).split(": ", 2)[-1].startswith("enable_lora=[True, True, True] enables 3 parts")


def test_compatibility_page_is_generated_from_its_data():
    """docs/compatibility-peft.md is rendered from the recorded rows, one per fixture release (no hand edits)."""
    from tests.old_peft.check_loading import DOC, RESULTS, render

    rows = json.loads(RESULTS.read_text())
    assert [row["release"] for row in rows] == RELEASES
    assert DOC.read_text() == render(rows)
