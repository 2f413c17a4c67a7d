"""Rank-space similarity against dense ΔW computations written here."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import hubmerge
from hubmerge.interference import SimilarityAccumulator, Thresholds, module_gram
from tests.factory import make_adapter


def random_factors(seed: int, rank: int, d_in: int = 40, d_out: int = 24, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, d_in, generator=g, dtype=dtype), torch.randn(d_out, rank, generator=g, dtype=dtype)


def dense(factors, c):
    a, b = factors
    return c * (b.to(torch.float64) @ a.to(torch.float64))


def dense_cos(x, y):
    return float((x * y).sum() / (x.norm() * y.norm()))


@pytest.mark.parametrize("seed", range(5))
def test_rank_space_gram_equals_dense(seed):
    factors = [random_factors(seed * 10 + i, rank) for i, rank in enumerate((2, 5, 3))]
    coefficients = [1.5, -0.25, 3.0]
    stats = module_gram(factors, coefficients)
    deltas = [dense(f, c) for f, c in zip(factors, coefficients)]
    for i in range(3):
        for j in range(3):
            expected = float((deltas[i] * deltas[j]).sum())
            assert math.isclose(float(stats.gram[i, j]), expected, rel_tol=1e-9, abs_tol=1e-9)
            assert math.isclose(float(stats.cosine()[i, j]), dense_cos(deltas[i], deltas[j]), abs_tol=1e-6)
    total = sum(deltas)
    expected_ratio = float((total * total).sum()) / sum(float((d * d).sum()) for d in deltas)
    assert math.isclose(stats.interference, expected_ratio, rel_tol=1e-9)


@pytest.mark.parametrize("ranks", [(16,) * 9, (40, 3, 97)])  # Σr ≥ 128: the Gram mirrors its lower blocks
def test_rank_space_gram_of_many_adapters_equals_dense(ranks):
    factors = [random_factors(70 + i, rank, 48, 40) for i, rank in enumerate(ranks)]
    coefficients = [0.5 + i for i in range(len(ranks))]
    gram = module_gram(factors, coefficients).gram
    deltas = [dense(f, c) for f, c in zip(factors, coefficients)]
    expected = torch.tensor([[float((x * y).sum()) for y in deltas] for x in deltas], dtype=torch.float64)
    torch.testing.assert_close(gram, expected, rtol=1e-9, atol=1e-9)


def test_rank_space_cosine_in_float32_inputs_within_1e6():
    factors = [random_factors(i, 8, 256, 128, dtype=torch.float32) for i in range(2)]
    cos = float(module_gram(factors, [1.0, 1.0]).cosine()[0, 1])
    assert abs(cos - dense_cos(dense(factors[0], 1), dense(factors[1], 1))) < 1e-6


def test_self_is_one_and_negated_is_minus_one():
    f = random_factors(7, 4)
    cos = module_gram([f, f, f], [2.0, -3.0, 0.5]).cosine()
    assert cos[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert cos[0, 1] == pytest.approx(-1.0, abs=1e-12)
    assert cos[0, 2] == pytest.approx(1.0, abs=1e-12)
    stats = module_gram([f, f], [1.0, -1.0])
    assert stats.interference == pytest.approx(0.0, abs=1e-12)  # perfect cancellation


def test_absent_adapter_gives_undefined_cosine():
    stats = module_gram([random_factors(1, 2), None], [1.0, 1.0])
    assert stats.present == [0]
    assert math.isnan(stats.cosine()[0, 1])
    assert stats.gram[1, 1] == 0


def test_a_overlap_detects_shared_initialisation():
    a, b1 = random_factors(1, 4, d_in=512)
    _, b2 = random_factors(2, 4, d_in=512)
    other_a, _ = random_factors(3, 4, d_in=512)
    shared = module_gram([(a, b1), (a + 0.01 * torch.randn_like(a), b2)], [1.0, 1.0]).a_overlap[0, 1]
    independent = module_gram([(a, b1), (other_a, b2)], [1.0, 1.0]).a_overlap[0, 1]
    assert shared > 0.99
    assert independent < 0.25  # ≈ √(r/d) = 0.09 by chance


def test_pair_statistics_match_dense_definitions():
    # Three modules; adapter 2 is absent from the last one.
    modules = {
        f"m{k}": [random_factors(100 + 3 * k + i, 3) if not (k == 2 and i == 2) else None for i in range(3)]
        for k in range(3)
    }
    weights = [1.0, 0.5, -2.0]
    acc = SimilarityAccumulator(["a", "b", "c"])
    one_by_one = SimilarityAccumulator(["a", "b", "c"], batch=1)  # each module folded alone
    deltas = {}
    for key, factors in modules.items():
        acc.add(key, module_gram(factors, weights))
        one_by_one.add(key, module_gram(factors, weights))
        deltas[key] = [dense(f, w) if f is not None else None for f, w in zip(factors, weights)]
    summary = dataclasses.asdict(acc.summary()[0])
    assert dataclasses.asdict(one_by_one.summary()[0]) == summary

    for i, j in [(0, 1), (0, 2), (1, 2)]:
        shared = [k for k in deltas if deltas[k][i] is not None and deltas[k][j] is not None]
        cos = [dense_cos(deltas[k][i], deltas[k][j]) for k in shared]
        assert summary["rms_cosine"][i][j] == pytest.approx(math.sqrt(sum(c * c for c in cos) / len(cos)), abs=1e-6)
        assert summary["mean_cosine"][i][j] == pytest.approx(sum(cos) / len(cos), abs=1e-6)
        inner = sum(float((deltas[k][i] * deltas[k][j]).sum()) for k in shared)
        ei = sum(float((deltas[k][i] ** 2).sum()) for k in shared)
        ej = sum(float((deltas[k][j] ** 2).sum()) for k in shared)
        assert summary["norm_weighted_cosine"][i][j] == pytest.approx(inner / math.sqrt(ei * ej), abs=1e-6)
        assert summary["shared_modules"][i][j] == len(shared)

    total = sum(float((sum(d for d in ds if d is not None) ** 2).sum()) for ds in deltas.values())
    parts = sum(float((d**2).sum()) for ds in deltas.values() for d in ds if d is not None)
    assert summary["interference_ratio"] == pytest.approx(total / parts, rel=1e-5)
    for key, ds in deltas.items():  # each module's own detail, the absent adapter left out
        module = summary["per_module"][key]
        present = [i for i, d in enumerate(ds) if d is not None]
        assert module["adapters"] == tuple("abc"[i] for i in present)
        assert module["norms"] == pytest.approx([float(ds[i].norm()) for i in present], rel=1e-5)  # 6 digits
        pairs = [(i, j) for n, i in enumerate(present) for j in present[n + 1 :]]
        assert module["cosine"] == pytest.approx(
            {f"{'abc'[i]}|{'abc'[j]}": dense_cos(ds[i], ds[j]) for i, j in pairs}, abs=1e-6
        )
        energy = sum(float((ds[i] ** 2).sum()) for i in present)
        assert module["interference"] == pytest.approx(
            float((sum(ds[i] for i in present) ** 2).sum()) / energy, rel=1e-5
        )


def test_warnings_follow_thresholds():
    f = random_factors(1, 4)
    g = random_factors(2, 4)
    acc = SimilarityAccumulator(["x", "y"], Thresholds(rms_cosine=0.5, cancel_ratio=0.5))
    acc.add("m", module_gram([f, (f[0], -f[1] + 0.1 * g[1])], [1.0, 1.0]))  # nearly opposite: cancels
    _, notes = acc.summary()
    codes = {n.code for n in notes}
    assert {"high_cosine", "cancelling_modules", "shared_init"} <= codes
    assert any("opposing" in n.message for n in notes if n.code == "high_cosine")

    acc = SimilarityAccumulator(["x", "y"], Thresholds(rms_cosine=1.01, a_overlap=1.01))
    acc.add("m", module_gram([f, f], [1.0, 1.0]))
    _, notes = acc.summary()
    assert not [n for n in notes if n.code in ("high_cosine", "shared_init")]


def test_similarity_api_on_real_adapters(tmp_path):
    a = make_adapter(tmp_path / "a", seed=1)
    b = make_adapter(tmp_path / "b", seed=2)
    sim = hubmerge.similarity([a, b, a], weights=[1.0, 1.0, -1.0]).to_dict()["similarity"]
    assert sim["adapters"] == ["a", "b", "a-2"]
    assert sim["rms_cosine"][0][2] == pytest.approx(1.0)
    assert sim["mean_cosine"][0][2] == pytest.approx(-1.0)
    assert abs(sim["mean_cosine"][0][1]) < 0.5
    assert sim["shared_modules"][0][1] == 4


@pytest.mark.parametrize("rows", [127, 128, 130, 161, 255])
@pytest.mark.parametrize("layout", ["rows", "transposed"])
def test_self_gram_multiplies_the_upper_blocks_and_mirrors_them(rows, layout):
    from hubmerge.interference import _self_gram

    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 300, generator=generator, dtype=torch.float64)
    if layout == "transposed":  # how the B factors arrive: a transposed view of out × R
        x = x.T.contiguous().T
    gram = _self_gram(x)
    torch.testing.assert_close(gram, x @ x.T, rtol=1e-12, atol=1e-10)
