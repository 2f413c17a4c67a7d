"""The shipped example adapters: what ``make demo`` merges, checked against dense math.

The adapters were trained on SmolLM2-135M-Instruct (experiments/paper); the base model is
not needed to merge them, and this test does not load it either.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import hubmerge
from hubmerge.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "adapters"
NAMES = ["math", "medicine", "finance"]


def _deltas(folder: Path) -> dict[str, torch.Tensor]:
    """Module → s·B·A as a dense float64 matrix, read straight from the files."""
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    scale = config["lora_alpha"] / config["r"]
    return {
        key.removesuffix(".lora_A.weight"): scale
        * tensors[key.replace("lora_A", "lora_B")].double()
        @ tensors[key].double()
        for key in tensors
        if key.endswith(".lora_A.weight")
    }


def test_demo_merge_is_the_dense_sum_of_the_example_adapters(tmp_path, capsys):
    code = main([*(str(EXAMPLES / n) for n in NAMES), "-o", str(tmp_path / "merged"), "--dtype", "float32"])
    out = capsys.readouterr().out
    assert code == 0
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in out
    merged = _deltas(tmp_path / "merged")
    parts = [_deltas(EXAMPLES / n) for n in NAMES]
    assert set(merged) == set(parts[0]) and len(merged) == 30 * 7  # 30 layers × 7 projections
    for key, delta in merged.items():
        expected = sum(p[key] for p in parts)
        torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))


def test_each_example_has_a_model_card_naming_its_base_and_licence():
    licences = {"math": "mit", "medicine": "cc-by-4.0", "finance": "cc-by-4.0"}
    for name in NAMES:
        card = ModelCard.load(EXAMPLES / name / "README.md")
        assert card.data.library_name == "peft"
        assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert card.data.license == licences[name]
        config = json.loads((EXAMPLES / name / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert (config["r"], config["lora_alpha"]) == (4, 64)
        assert load_file(EXAMPLES / name / "adapter_model.safetensors").popitem()[1].dtype == torch.bfloat16


def test_the_docstring_examples_on_the_shipped_adapters_run_and_print_what_they_say(tmp_path, monkeypatch):
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    names = ["merge", "load_adapter", "load_adapters", "parse_source"]
    for obj in [hubmerge, *(getattr(hubmerge, name) for name in names)]:
        # Each runs where examples/adapters/… is, as from the repository root, and may write "merged" there.
        folder = tmp_path / obj.__name__
        folder.mkdir()
        (folder / "examples").symlink_to(EXAMPLES.parent)
        monkeypatch.chdir(folder)
        for test in doctest.DocTestFinder(recurse=False).find(obj, globs={"hubmerge": hubmerge, **vars(hubmerge)}):
            assert test.examples, test.name
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
