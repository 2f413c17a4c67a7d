"""The paper reproduction (experiments/paper) end to end in its quick mode, and its statistics by hand.

The quick mode builds a tiny random Llama from a config, uses byte tokens and a few
synthetic rows per domain: nothing is downloaded and the GGUF is never needed.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM

from experiments.paper.__main__ import main
from experiments.paper.calibrate import TOLERANCE, calibrate, round_down
from experiments.paper.data import DOMAINS, load_domain
from experiments.paper.model import ByteTokenizer
from experiments.paper.report import change, correlation, fit, pearson, perplexity, spearman
from experiments.paper.train import score
from hubmerge import Thresholds

PAGE_DIR = Path(__file__).resolve().parents[1] / "experiments" / "paper"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "run"
    assert main(["all", "--quick", "--out", str(out), "--seeds", "0"]) == 0
    return out


@pytest.mark.slow
def test_quick_run_writes_page_plot_results_and_cards(quick_run):
    page = (quick_run / "RESULTS.md").read_text()
    for combo in ("math+medicine", "math+finance", "medicine+finance", "math+medicine+finance"):
        assert f"`{combo}`" in page
    section = page.split("## Does the RMS cosine")[1].split("##")[0]
    assert "Pearson r = " in section and not re.search(r"\bnan\b", section)
    assert "In these runs the RMS cosine does" in section, "the page says what the points show"
    assert (quick_run / "cosine_vs_perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((quick_run / "results" / "summary.json").read_text())
    assert len(summary["points"]) == 8  # 4 combinations × 2 initialisations, one seed
    for domain in DOMAINS:
        card = ModelCard.load(quick_run / "examples" / domain / "README.md")
        assert card.data.library_name == "peft"
        assert card.data.license == ("mit" if domain == "math" else "cc-by-4.0")
        config = json.loads((quick_run / "examples" / domain / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"]) == (4, 64)


@pytest.mark.slow
def test_shared_seed_shares_a_and_independent_seeds_do_not(quick_run):
    points = json.loads((quick_run / "results" / "summary.json").read_text())["points"]
    shared = [p["a_overlap"] for p in points if p["condition"] == "shared"]
    independent = [p["a_overlap"] for p in points if p["condition"] == "independent"]
    # A is updated by training, so a shared start stays close to 1 but not exactly; random starts sit far below.
    assert min(shared) > 0.9 and max(independent) < 0.6
    assert all("shared_init" in p["warnings"] for p in points if p["condition"] == "shared")


@pytest.mark.slow
def test_naive_sum_scores_equal_peft_stacking_the_adapters(quick_run):
    """The experiment's naive sum (hubmerge → PEFT) against PEFT applying each adapter in turn."""
    settings = json.loads((quick_run / "settings.json").read_text())
    result = json.loads((quick_run / "results" / "seed0.json").read_text())
    examples = load_domain(
        quick_run / "quick-data", "finance", "test", ByteTokenizer(), settings["max_length"], settings["n_test"]
    )
    model = AutoModelForCausalLM.from_pretrained(settings["model_dir"], dtype=torch.float32)
    for name in ("math", "medicine-indep"):
        model = PeftModel.from_pretrained(model, str(quick_run / "adapters" / "seed0" / name)).merge_and_unload()
    reference = score(model, examples, batch_size=4, pad_id=ByteTokenizer.pad_token_id, device="cpu", bf16=False)
    measured = result["combos"]["independent:math+medicine"]["sum_scores"]["finance"]
    assert measured["tokens"] == reference["tokens"]
    assert measured["nll"] == pytest.approx(reference["nll"], rel=1e-5)


def test_statistics_by_hand():
    scores = {"a": {"nll": 2 * math.log(4), "tokens": 2, "answer_nll": math.log(2), "answer_tokens": 1}}
    other = {"a": {"nll": 2 * math.log(5), "tokens": 2, "answer_nll": math.log(2), "answer_tokens": 1}}
    assert perplexity(scores, ["a"]) == pytest.approx(4.0)
    assert perplexity(scores, ["a"], "answer_nll") == pytest.approx(2.0)
    assert change(other, scores, ["a"]) == pytest.approx(25.0)  # 5 vs 4: 25% worse
    x, y = [0.1, 0.2, 0.4, 0.8], [1.0, 3.0, 2.0, 9.0]
    assert pearson(x, y) == pytest.approx(statistics.correlation(x, y))
    assert spearman(x, y) == pytest.approx(0.8)  # ranks 0,1,2,3 vs 0,2,1,3: 1 − 6·2/(4·15)
    assert fit([0, 1, 2], [1, 3, 5]) == pytest.approx((1.0, 2.0))


def test_calibration_reads_the_threshold_off_the_fitted_line():
    rows = [{"rms_cosine": c, "change": -5 + 100 * c, "condition": "independent", "a_overlap": 0.1} for c in
            (0.02, 0.05, 0.1, 0.2, 0.3)]  # fmt: skip
    rows += [{"rms_cosine": 0.3, "change": 25.0, "condition": "shared", "a_overlap": 0.9}]
    stats = correlation(rows)
    found = calibrate(rows, stats)
    assert found["tolerance_percent"] == TOLERANCE == 10.0
    # Every row lies on change = -5 + 100·cos, which reaches +10% at cos = 0.15.
    assert found["rms_cosine"]["value"] == 0.15
    assert found["a_overlap"]["value"] == 0.5  # midpoint of 0.1 and 0.9
    # No relation (a flat cloud) and overlapping A groups: nothing is calibrated.
    flat = [{**r, "change": (-1) ** i, "a_overlap": 0.5} for i, r in enumerate(rows)]
    found = calibrate(flat, correlation(flat))
    assert found["rms_cosine"]["value"] is None and found["a_overlap"]["value"] is None
    assert round_down(0.01789) == 0.017 and round_down(0.8349) == 0.83


def test_hubmerge_default_thresholds_are_the_calibrated_ones():
    """The committed real-model results set hubmerge's defaults wherever they could set one."""
    summary = json.loads((PAGE_DIR / "results" / "summary.json").read_text())
    defaults = Thresholds()
    for key, found in summary["calibration"].items():
        if isinstance(found, dict) and found["value"] is not None:
            assert getattr(defaults, key) == found["value"], (key, found["why"])
