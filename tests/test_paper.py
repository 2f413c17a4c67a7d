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


# --- the retention experiment (experiments/paper/retention.py, measure.py, signals.py, retention_report.py)


@pytest.fixture(scope="module")
def retention_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("retention") / "run"
    assert main(["retention", "--quick", "--out", str(out), "--seeds", "0"]) == 0
    return out


def _dense_nll(model, examples) -> tuple[float, int]:
    """Σ NLL of the predicted tokens, one example at a time, written here (no batching, no padding)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([example.ids])
            logits = model(input_ids=ids).logits[0, :-1].double()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total += float(nll[example.start - 1 :].sum())
            tokens += len(example.ids) - example.start
    return total, tokens


@pytest.mark.slow
def test_retention_scores_equal_the_written_merge_in_peft(retention_run):
    """All sources active at scalings w·s (the measurement) = hubmerge's written merge loaded by PEFT, w < 0 too."""
    import hubmerge
    from experiments.paper.measure import load_scores, setting_id
    from experiments.paper.retention import adapter_dir
    from hubmerge.evaluation.data import read_eval_data, tokenise

    settings = json.loads((retention_run / "settings.json").read_text())
    cache = retention_run / "cache"
    scores = load_scores(cache, settings)
    data = read_eval_data("medicine", retention_run / "quick-data" / "medicine_qa.jsonl", split="test")
    base = AutoModelForCausalLM.from_pretrained(settings["model_dir"], dtype=torch.float32)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(settings["model_dir"])
    examples = tokenise(data, tokenizer, samples=settings["n_test"], max_length=settings["eval_max_length"])
    for weights in (
        {"math-seed0": -0.5, "medicine-seed1000": 1.0},
        {"finance-seed2000": 1.5, "medicine-seed1000": 1.5},
    ):
        dirs = [adapter_dir(cache, settings, name.split("-")[0], int(name.split("seed")[1])) for name in weights]
        merged = hubmerge.merge(dirs, weights=list(weights.values()))
        target = retention_run / "written" / setting_id(weights)
        merged.save_pretrained(target, overwrite=True, figure=False)
        model = PeftModel.from_pretrained(base, str(target))
        nll, tokens = _dense_nll(model, examples["examples"])
        base = model.unload()
        record = scores[(setting_id(weights), "medicine")]
        assert record["tokens"] == tokens
        assert record["nll"] / record["tokens"] == pytest.approx(nll / tokens, abs=1e-5)


@pytest.mark.slow
def test_retention_points_by_hand_and_page(retention_run):
    from experiments.paper.measure import load_scores

    settings = json.loads((retention_run / "settings.json").read_text())
    scores = load_scores(retention_run / "cache", settings)
    result = json.loads((retention_run / "retention.json").read_text())
    point = next(
        p for p in result["points"] if p["setting"] == "math-seed0@1+medicine-seed0@1" and p["source"] == "math"
    )
    loss = {key: scores[(key, "math")]["nll"] / scores[(key, "math")]["tokens"] for key in
            ("base", "math-seed0@1", "math-seed0@1+medicine-seed0@1")}  # fmt: skip
    expected = (loss["base"] - loss["math-seed0@1+medicine-seed0@1"]) / (loss["base"] - loss["math-seed0@1"])
    assert point["retention"] == pytest.approx(expected, rel=1e-12)
    # every pair and the triple, both initialisations, the weight sweep; subtracted sources are not points
    assert result["planned"] == len(result["points"]) == 3 * 2 * 12 + 2 * 8
    assert all(p["weight"] > 0 for p in result["points"])
    independent = {p["group"] for p in result["points"] if p["init"] == "independent"}
    assert "math-seed0+medicine-seed1000+finance-seed2000" in independent
    assert {p["init"] for p in result["points"]} == {"shared", "independent"}
    page = (retention_run / "RESULTS.md").read_text()
    assert "## Retention of merged adapters, measured" in page and "| rms_cosine |" in page
    assert (retention_run / "retention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun measures nothing new (every score is cached) and rewrites the same section in place
    assert main(["retention", "--quick", "--out", str(retention_run), "--seeds", "0"]) == 0
    assert (retention_run / "RESULTS.md").read_text().count("## Retention of merged adapters") == 1


def _dense_deltas(folder: Path, weight: float) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    scale = config["lora_alpha"] / config["r"]
    deltas = {}
    for key in tensors:
        if key.endswith("lora_A.weight"):
            b = tensors[key.replace("lora_A", "lora_B")].double()
            deltas[key.removesuffix(".lora_A.weight")] = weight * scale * (b @ tensors[key].double())
    return deltas


@pytest.mark.slow
def test_signals_equal_dense_math(retention_run):
    from experiments.paper.retention import adapter_dir
    from experiments.paper.signals import merge_signals

    settings = json.loads((retention_run / "settings.json").read_text())
    cache = retention_run / "cache"
    chosen = [("math", 0, 1.0), ("medicine", 1000, -0.5), ("finance", 0, 1.5)]
    paths = [adapter_dir(cache, settings, d, s) for d, s, _ in chosen]
    found = merge_signals(paths, [w for *_, w in chosen])
    deltas = [_dense_deltas(p, w) for p, (*_, w) in zip(paths, chosen)]
    modules = sorted(deltas[0])
    flat = [torch.cat([d[m].flatten() for m in modules]) for d in deltas]
    total = sum(flat)
    assert found["interference_ratio"] == pytest.approx(float(total @ total) / sum(float(f @ f) for f in flat))
    for i in range(3):
        others = sum(f for j, f in enumerate(flat) if j != i)
        source = found["sources"][i]
        assert source["others_projection"] == pytest.approx(float(flat[i] @ others) / float(flat[i] @ flat[i]))
        assert source["others_norm_ratio"] == pytest.approx(float(others.norm() / flat[i].norm()))
        assert source["norm_ratio"] == pytest.approx(max(float(flat[j].norm() / flat[i].norm()) for j in range(3)
                                                         if j != i))  # fmt: skip
    for (i, j), pair in found["pairs"].items():
        cos = [float(torch.nn.functional.cosine_similarity(deltas[i][m].flatten(), deltas[j][m].flatten(), dim=0))
               for m in modules]  # fmt: skip
        assert pair["rms_cosine"] == pytest.approx(math.sqrt(sum(c * c for c in cos) / len(cos)), abs=1e-6)
        assert pair["mean_cosine"] == pytest.approx(sum(cos) / len(cos), abs=1e-6)
        assert pair["norm_weighted_cosine"] == pytest.approx(
            float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm())), abs=1e-6
        )
        overlaps = []
        for m in modules:  # principal angles between the column spaces of the dense deltas
            bases = []
            for delta in (deltas[i][m], deltas[j][m]):
                u, s, _ = torch.linalg.svd(delta)
                bases.append(u[:, : int((s > s[0] * 1e-9).sum())])
            cosines = torch.linalg.svdvals(bases[0].T @ bases[1])
            overlaps.append(float((cosines**2).sum()) / min(b.shape[1] for b in bases))
        assert pair["output_overlap"] == pytest.approx(sum(overlaps) / len(overlaps), abs=1e-6)


def test_output_overlap_and_norm_ratio_by_hand():
    from hubmerge.interference import norm_ratio, output_overlap

    e = torch.eye(4)
    assert output_overlap(e[:, :2], e[:, 2:]) == pytest.approx(0.0)  # orthogonal output subspaces
    assert output_overlap(e[:, :2] @ torch.tensor([[2.0, 1.0], [0.0, 3.0]]), e[:, :2]) == pytest.approx(1.0)
    # span{e0} against span{(e0 + e1)/√2, e2}: cos² of the one principal angle is 1/2
    assert output_overlap(e[:, :1], torch.stack([e[:, 0] + e[:, 1], e[:, 2]], dim=1)) == pytest.approx(0.5)
    assert output_overlap(torch.zeros(4, 2), e[:, :2]) is None
    gram = torch.tensor([[4.0, 1.0], [1.0, 9.0]], dtype=torch.float64)
    assert norm_ratio(gram, 0, 1) == pytest.approx(2 / 3) and norm_ratio(torch.zeros(2, 2), 0, 1) is None


def test_retention_statistics_by_hand():
    from experiments.paper.retention_report import association, centred, ranks, spearman, supported

    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([0.1, 0.2, 0.4, 0.8], [1.0, 3.0, 2.0, 9.0]) == pytest.approx(0.8)
    rows = [{"domains": "a+b", "source": "a", "weights": [1, 1], "retention": 1 - 0.1 * i, "x": float(i),
             "group": f"g{i}"} for i in range(10)]  # fmt: skip
    assert centred(rows, "x") == [i - 4.5 for i in range(10)]
    found = association(rows, "x")
    assert found["spearman"] == pytest.approx(-1.0) and found["pearson"] == pytest.approx(-1.0)
    assert supported(found)  # every resample keeps the perfect negative relation
    noise = [{**r, "retention": [0.5, 0.9, 0.1, 0.9, 0.5, 0.2, 0.8, 0.3, 0.6, 0.5][i]} for i, r in enumerate(rows)]
    assert not supported(association(noise, "x"))
    assert not supported(association(rows[:5], "x")), "five merge groups are too few to call anything supported"


def test_thresholds_and_wording_follow_the_committed_retention_runs():
    """Defaults equal what the committed runs set; where they show no relation, nothing claims one."""
    from hubmerge.card import _interference
    from hubmerge.interference import SimilarityAccumulator, module_gram

    result = json.loads((PAGE_DIR / "retention.json").read_text())
    defaults = Thresholds()
    for key, found in result["calibration"].items():
        if found["value"] is not None:
            assert getattr(defaults, key) == found["value"], (key, found["why"])
    assert result["calibration"]["a_overlap"]["value"] is not None, "same-seed and different-seed pairs were measured"
    accumulator = SimilarityAccumulator(names=["a", "b"])
    factors = (torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), torch.randn(16, 4))
    accumulator.add("m", module_gram([factors, factors], [1.0, 1.0]))
    report, notes = accumulator.summary()
    message = next(n.message for n in notes if n.code == "high_cosine")
    card = _interference({"similarity": {"adapters": ["a", "b"], "rms_cosine": [[1, 1], [1, 1]]}}, None)
    if result["calibration"]["rms_cosine"]["value"] is None:
        assert "did not predict" in message and "interfere" not in message
        assert "did not predict retention" in card and "degrad" not in card
    if "kept slightly less" in card:  # the shared-init version of a plain sum against the independent one
        cells: dict = {}
        for point in result["points"]:
            if point["plain"]:
                cells.setdefault((point["domains"], point["source"], point["replicate"]), {})[point["init"]] = point
        diffs = [c["shared"]["retention"] - c["independent"]["retention"] for c in cells.values() if len(c) == 2]
        assert diffs and -0.1 < sum(diffs) / len(diffs) < 0, "the card's 'slightly less' is what the runs show"
    if result["calibration"]["cancel_ratio"]["value"] is None:
        assert "a choice" in Thresholds.__doc__.split("cancel_ratio:")[1].split("a_overlap:")[0].lower()
