"""The embedded example: what ``make demo`` runs, loaded back with PEFT."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from hubmerge.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_demo_merge_loads_on_the_example_base(tmp_path, capsys):
    names = ["evens", "odds", "odds-same-init"]
    code = main([*(str(EXAMPLES / "adapters" / n) for n in names), "-o", str(tmp_path / "merged")])
    out = capsys.readouterr().out
    assert code == 0
    assert "same seed" in out, "the example pair with a shared initialisation is flagged"

    ids = torch.arange(4, 20).reshape(1, 16)
    with torch.no_grad():
        merged = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(EXAMPLES / "tiny-llama"), str(tmp_path / "merged")
        )(ids).logits
        # Reference: apply each adapter's merged-in weights with PEFT, one after another.
        model = AutoModelForCausalLM.from_pretrained(EXAMPLES / "tiny-llama")
        for name in names:
            model = PeftModel.from_pretrained(model, str(EXAMPLES / "adapters" / name)).merge_and_unload()
        expected = model(ids).logits
    torch.testing.assert_close(merged, expected, atol=2e-5, rtol=1e-5)
