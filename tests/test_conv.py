"""Convolution LoRA (PEFT's lora_A a convolution with the layer's kernel, lora_B a 1×1 one) summed exactly
by rank concatenation, checked against PEFT applying every source at once and against base +
Σ wᵢ·``get_delta_weight``; the analysis compares the flattened kernels; grouped convolutions are refused.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch import nn

import hubmerge
from hubmerge.cli import main
from tests.arch_zoo import peft_all_sources

BASE_ID = "test-org/tiny-convnet"


class TinyConvNet(nn.Module):
    """Conv2d 3×3 (padded), Conv2d 3×1 with stride, Conv2d 1×1, Conv1d, Linear: every kind PEFT adapts."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.tall = nn.Conv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0), groups=groups)
        self.pointwise = nn.Conv2d(8, 6, 1)
        self.temporal = nn.Conv1d(6, 5, 3)
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = torch.relu(self.pointwise(torch.relu(self.tall(x))))
        x = torch.relu(self.temporal(x.flatten(2)))
        return self.head(x.mean(dim=2))


def tiny(groups: int = 1) -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet(groups).eval()


def inputs() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def make(directory, seed: int, groups: int = 1, *, base: torch.nn.Module | None = None, **lora):
    """A PEFT adapter on ``base`` (default: the tiny conv net) with random factors, saved to ``directory``."""
    lora.setdefault("r", 2)
    lora.setdefault("lora_alpha", 4)
    model = get_peft_model(tiny(groups) if base is None else base, LoraConfig(init_lora_weights=False, **lora))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.4)
    model.peft_config["default"].base_model_name_or_path = BASE_ID
    model.save_pretrained(directory)
    return directory


@torch.no_grad()
def peft_all_at_once(sources) -> torch.Tensor:
    return peft_all_sources(tiny(), sources)(inputs())


def deltas(directory) -> dict[str, torch.Tensor]:
    """Each adapted layer's weight delta as PEFT computes it (get_delta_weight)."""
    model = PeftModel.from_pretrained(tiny(), str(directory))
    return {
        f"{name.removeprefix('base_model.model.')}.weight": module.get_delta_weight("default")
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


@torch.no_grad()
def dense(sources) -> torch.Tensor:
    model = tiny()
    params = dict(model.named_parameters())
    for directory, weight in sources:
        for name, delta in deltas(directory).items():
            params[name].add_(weight * delta)
    return model(inputs())


def test_convolution_lora_sums_exactly(tmp_path):
    a = make(tmp_path / "a", seed=1, target_modules=["conv", "tall", "pointwise", "temporal", "head"])
    b = make(
        tmp_path / "b", seed=2, r=3, lora_alpha=5, use_rslora=True, rank_pattern={"tall": 1},
        target_modules=["conv", "tall", "temporal"],
    )  # fmt: skip
    c = make(tmp_path / "c", seed=3, target_modules=["pointwise", "head"])
    sources = [(a, 1.0), (b, -0.6), (c, 0.3)]
    assert load_file(a / "adapter_model.safetensors")["base_model.model.conv.lora_A.weight"].dim() == 4
    result = hubmerge.merge([str(d) for d, _ in sources], weights=[w for _, w in sources])
    result.save_pretrained(tmp_path / "out")

    with torch.no_grad():
        got = PeftModel.from_pretrained(tiny(), str(tmp_path / "out"))(inputs())
        base = tiny()(inputs())
    want, at_once = dense(sources), peft_all_at_once(sources)
    assert (want - base).abs().max() > 0.05  # the deltas matter
    assert torch.allclose(want, at_once, atol=1e-5)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    merged = deltas(tmp_path / "out")
    for name in merged:
        expected = sum(w * deltas(d).get(name, 0) for d, w in sources)
        assert torch.allclose(merged[name], expected, atol=1e-5), name
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert saved["base_model.model.tall.lora_B.weight"].shape[2:] == (1, 1)  # PEFT's layout: lora_B is 1×1

    # The analysis compares the flattened kernels: cosine of a's and b's weighted deltas on `conv`, by hand.
    da, db = 1.0 * deltas(a)["conv.weight"].flatten(), -0.6 * deltas(b)["conv.weight"].flatten()
    cosine = float(da @ db / (da.norm() * db.norm()))
    module = result.report.similarity.per_module["conv"]
    assert module.cosine["a|b"] == pytest.approx(cosine, abs=1e-3)
    assert result.report.exact is True
    assert result.report.output.min_peft == "0.15.0"  # the first release with LoRA on nn.Conv1d


def test_grouped_convolution_lora_is_refused(tmp_path, capsys):
    a = make(tmp_path / "a", seed=1, groups=2, target_modules=["tall", "head"])
    b = make(tmp_path / "b", seed=2, target_modules=["head"])
    assert main([str(a), str(b), "-o", str(tmp_path / "out")]) == 1
    problems = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert "tall.lora_B.weight" in problems[0] and "is the LoRA of a grouped convolution" in problems[0]
    assert "groups=2" in problems[0]
    assert not (tmp_path / "out").exists()


def test_convolutions_of_different_kernels_are_refused(tmp_path):
    """Two files whose flattened factors agree but whose kernels differ cannot be the same layer."""
    a = make(tmp_path / "a", seed=1, target_modules=["tall"])
    b = make(tmp_path / "b", seed=2, target_modules=["tall"])
    path = b / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.tall.lora_A.weight"
    tensors[key] = tensors[key].reshape(2, 8, 1, 3).contiguous()  # 3×1 kernel written as 1×3
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    with pytest.raises(hubmerge.IncompatibleAdaptersError) as info:
        hubmerge.merge([str(a), str(b)])
    assert "convolution, lora_A [8, 1, 3] per rank" in str(info.value.problems[0])
    config = json.loads((a / "adapter_config.json").read_text())
    assert config["target_modules"] == ["tall"]


class TinyVolumeNet(nn.Module):
    """A Conv3d (video / volume models) and a Linear."""

    def __init__(self):
        super().__init__()
        self.volume = nn.Conv3d(2, 4, (2, 3, 3), padding=(0, 1, 1))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.volume(x)).mean(dim=(2, 3, 4)))


def test_conv3d_lora_sums_exactly(tmp_path):
    def base() -> TinyVolumeNet:
        torch.manual_seed(0)
        return TinyVolumeNet().eval()

    x = torch.randn(2, 2, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    dirs = [
        make(tmp_path / f"s{seed}", seed, base=base(), r=r, target_modules=["volume", "head"])
        for seed, r in ((1, 2), (2, 3))
    ]
    result = hubmerge.merge([str(d) for d in dirs], weights=[1.0, -0.7])
    result.save_pretrained(tmp_path / "out")
    with torch.no_grad():
        want = base()
        params = dict(want.named_parameters())
        for directory, weight in zip(dirs, (1.0, -0.7)):
            loaded = PeftModel.from_pretrained(base(), str(directory))
            for name, module in loaded.named_modules():
                if isinstance(module, LoraLayer):
                    params[f"{name.removeprefix('base_model.model.')}.weight"].add_(
                        weight * module.get_delta_weight("default")
                    )
        got = PeftModel.from_pretrained(base(), str(tmp_path / "out"))(x)
        assert (want(x) - base()(x)).abs().max() > 0.05
        assert torch.allclose(got, want(x), atol=1e-5)
    assert result.report.output.min_peft == "0.14.0"  # the first release with LoRA on nn.Conv3d
