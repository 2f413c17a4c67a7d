"""--max-rank and --fit vllm: exact at the sum's true rank when it fits, the best truncation when it does not.

References are independent of the code under test: PEFT's own dense deltas
(``get_delta_weight``) summed by hand, dense ``torch.linalg.svd`` for the best
rank-K approximation and its energy, ``torch.linalg.matrix_rank`` for the true rank.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import hubmerge
from hubmerge.errors import InvalidArgumentError
from hubmerge.methods.fit import VLLM_MAX_LORA_RANKS, fit_module, numerical_rank, parse_fit, smallest_vllm_rank
from tests.factory import dense_deltas, make_adapter, peft_logits, reference_logits

LEGAL = set(VLLM_MAX_LORA_RANKS)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two independent adapters, and a third that shares the first one's A (same init, different B)."""
    root = tmp_path_factory.mktemp("fit")
    one = make_adapter(root / "one", seed=1, target_modules=["q_proj", "v_proj", "o_proj"])
    two = make_adapter(root / "two", seed=2, target_modules=["q_proj", "v_proj", "o_proj"])
    shared = make_adapter(root / "shared", seed=3, target_modules=["q_proj", "v_proj", "o_proj"])
    tensors, first = load_file(shared / "adapter_model.safetensors"), load_file(one / "adapter_model.safetensors")
    tensors.update({k: v.clone() for k, v in first.items() if ".lora_A." in k})
    save_file(tensors, shared / "adapter_model.safetensors")
    return {"one": one, "two": two, "shared": shared}


def _dense(merged_dir):
    return dense_deltas("llama", merged_dir)


def _reference_sum(dirs_weights):
    total: dict[str, torch.Tensor] = {}
    for directory, weight in dirs_weights:
        for name, delta in dense_deltas("llama", directory).items():
            total[name] = total.get(name, 0) + weight * delta.double()
    return total


def test_shared_a_sums_exactly_at_the_true_rank(adapters, tmp_path):
    # [B1 B3]·[A; A] = (B1 + B3)·A: rank 4, not 8. A cap of 4 must keep the sum exact.
    result = hubmerge.merge([adapters["one"], adapters["shared"]], max_rank=4)
    fit = result.report.serving["rank_fit"]
    assert result.report.exact is True and fit["exact"] is True
    assert fit["truncated"] == 0 and fit["reduced"] == fit["modules"] == 6
    assert result.config["r"] == 4 and fit["rank"] == 4
    for info in fit["per_module"].values():
        assert (info["stacked_rank"], info["true_rank"], info["rank"]) == (8, 4, 4)
        assert info["kept"] == pytest.approx(1.0, abs=1e-6)
    out = result.save_pretrained(tmp_path / "merged")
    reference = _reference_sum([(adapters["one"], 1.0), (adapters["shared"], 1.0)])
    for name, delta in _dense(out).items():
        # the independent view of the true rank (rtol above the float32 noise of PEFT's deltas)
        assert torch.linalg.matrix_rank(reference[name], rtol=1e-5).item() == 4
        torch.testing.assert_close(delta.double(), reference[name], atol=1e-5, rtol=1e-4)
    expected = reference_logits("llama", [(adapters["one"], 1.0), (adapters["shared"], 1.0)])
    torch.testing.assert_close(peft_logits("llama", out), expected, atol=2e-5, rtol=1e-5)


def test_a_duplicated_source_is_exact_at_its_own_rank(adapters, tmp_path):
    result = hubmerge.merge([adapters["one"], adapters["one"]], weights=[0.5, 1.5], fit="vllm=8")
    fit = result.report.serving["rank_fit"]
    assert fit["exact"] and fit["rank"] == 4 and fit["vllm_max_lora_rank"] == 8
    expected = reference_logits("llama", [(adapters["one"], 2.0)])
    torch.testing.assert_close(
        peft_logits("llama", result.save_pretrained(tmp_path / "m")), expected, atol=2e-5, rtol=1e-5
    )


def test_truncation_keeps_the_best_rank_k_and_reports_its_energy(adapters, tmp_path):
    result = hubmerge.merge([adapters["one"], adapters["two"]], max_rank=3)
    fit = result.report.serving["rank_fit"]
    assert result.report.exact is False and fit["truncated"] == fit["modules"] == 6
    reference = _reference_sum([(adapters["one"], 1.0), (adapters["two"], 1.0)])
    merged = _dense(result.save_pretrained(tmp_path / "merged"))
    total = kept_total = 0.0
    per_module = result.report.kept_energy.per_module
    for name, dense in reference.items():
        u, s, vh = torch.linalg.svd(dense, full_matrices=False)
        best = (u[:, :3] * s[:3]) @ vh[:3]
        torch.testing.assert_close(merged[name].double(), best, atol=1e-5, rtol=1e-4)  # Eckart–Young
        kept = float((s[:3] ** 2).sum() / (s**2).sum())
        key = name.removesuffix(".weight")
        assert per_module[key] == pytest.approx(kept, rel=1e-5)
        assert fit["per_module"][key]["kept"] == pytest.approx(kept, rel=1e-5)
        assert kept < 0.999  # a real cut, or the test would not show anything
        total, kept_total = total + float((s**2).sum()), kept_total + float((s[:3] ** 2).sum())
    assert result.report.kept_energy.overall == pytest.approx(kept_total / total, rel=1e-5)
    assert fit["kept_energy"] == pytest.approx(kept_total / total, rel=1e-5)


def test_fit_vllm_keeps_the_plain_sum_bit_for_bit_when_it_fits(adapters):
    plain = hubmerge.merge([adapters["one"], adapters["two"], adapters["one"]], weights=[1, 1, -0.5])
    fitted = hubmerge.merge([adapters["one"], adapters["two"], adapters["one"]], weights=[1, 1, -0.5], fit="vllm")
    fit = fitted.report.serving["rank_fit"]
    # one and -0.5·one share A: the true rank is 8 of the stacked 12, so those modules are refactored exactly
    assert fit["exact"] and fit["rank"] == 8 and fit["vllm_max_lora_rank"] == 8
    two = hubmerge.merge([adapters["one"], adapters["two"]], fit="vllm")
    assert two.report.serving["rank_fit"]["reduced"] == 0
    plain_two = hubmerge.merge([adapters["one"], adapters["two"]])
    assert two.tensors.keys() == plain_two.tensors.keys()
    assert all(torch.equal(two.tensors[k], plain_two.tensors[k]) for k in two.tensors)
    assert plain.config["r"] == 12 and fitted.config["r"] == 8
    vllm = next(v for v in fitted.report.serving["engines"] if v["engine"] == "vllm")
    assert vllm["servable"] and vllm["command"].endswith("--max-lora-rank 8")


def test_fit_vllm_truncates_above_max_and_serves_at_max(adapters):
    result = hubmerge.merge([adapters["one"], adapters["two"], adapters["shared"]], fit="vllm=8")
    fit = result.report.serving["rank_fit"]
    # shared's A equals one's, so the true rank is 8 of 12: it fits vLLM 8 exactly
    assert fit["exact"] and fit["rank"] == 8 and fit["vllm_max_lora_rank"] == 8
    result = hubmerge.merge([adapters["one"], adapters["two"], adapters["shared"]], fit="vllm=1")
    fit = result.report.serving["rank_fit"]
    assert not fit["exact"] and fit["rank"] == 1 and fit["vllm_max_lora_rank"] == 1 and 0 < fit["kept_energy"] < 1


@pytest.mark.parametrize("bad", ["vllm=12", "vllm=0", "vllm=x", "sglang=16", "vllm=1024"])
def test_fit_refuses_ranks_vllm_refuses(bad, adapters):
    with pytest.raises(InvalidArgumentError, match="vLLM|engine"):
        hubmerge.merge([adapters["one"]], fit=bad)


def test_fit_and_max_rank_take_the_smaller_cap():
    assert parse_fit("vllm=32", 10).max_rank == 10
    assert parse_fit("vllm", None).max_rank == 16 and parse_fit(None, 5).engine is None
    with pytest.raises(InvalidArgumentError):
        parse_fit(None, 0)


@given(st.integers(min_value=1, max_value=512))
def test_smallest_vllm_rank_is_legal_and_holds_the_rank(rank):
    legal = smallest_vllm_rank(rank)
    assert legal in LEGAL and legal >= rank
    assert all(other < rank for other in VLLM_MAX_LORA_RANKS if other < legal)


def test_above_vllms_largest_rank_there_is_none():
    assert smallest_vllm_rank(513) is None


def test_numerical_rank_agrees_with_matrix_rank():
    torch.manual_seed(0)
    for true in (1, 3, 5):
        a = torch.randn(true, 40)
        b = torch.randn(30, true)
        stacked_a, stacked_b = torch.cat([a, 2 * a, a[:1]]), torch.cat([b, -b, b[:, :1]], dim=1)
        fit = fit_module(stacked_a, stacked_b, cap=64)
        dense = stacked_b.double() @ stacked_a.double()
        assert fit.true_rank == torch.linalg.matrix_rank(dense).item() and not fit.truncated
        torch.testing.assert_close(fit.result.b.double() @ fit.result.a.double(), dense, atol=1e-4, rtol=1e-4)
    assert numerical_rank(torch.zeros(3), (4, 4)) == 0


def test_cli_max_rank_and_fit(adapters, tmp_path, capsys):
    from hubmerge.cli import main

    code = main([str(adapters["one"]), str(adapters["two"]), "--fit", "vllm=8", "-o", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 0 and "rank fit (vLLM --max-lora-rank 8): rank 8, exact" in out
    assert "--max-lora-rank 8" in out and str(tmp_path / "o") in out
    recipe = json.loads((tmp_path / "o" / "hubmerge_recipe.json").read_text())
    assert recipe["command"].endswith("--fit=vllm=8") and recipe["fit"] == "vllm=8" and "max_rank" not in recipe
    code = main([str(adapters["one"]), "--fit", "vllm=7", "--report-only"])
    assert code == 1 and "vLLM refuses max_lora_rank 7" in capsys.readouterr().err


def test_report_only_fits_nothing_and_says_the_rank_is_an_upper_bound(adapters):
    report = hubmerge.merge([adapters["one"], adapters["two"]], fit="vllm", report_only=True)
    assert report.serving["rank_fit"] is None
    assert report.serving["facts"]["rank"] == 8 and report.serving["facts"]["rank_is_upper_bound"] is True


def test_a_recipe_replays_the_rank_cap(adapters, tmp_path, capsys, monkeypatch):
    from hubmerge.cli import main

    monkeypatch.chdir(adapters["one"].parent)  # a recipe names local sources by folder name
    assert main([str(adapters["one"]), str(adapters["two"]), "--max-rank", "3", "-o", str(tmp_path / "a")]) == 0
    assert main(["--recipe", str(tmp_path / "a" / "hubmerge_recipe.json"), "-o", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    first, again = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("a", "b"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["r"] == 3
