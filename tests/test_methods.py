"""Merge methods beyond the exact sum, against dense references written here and against PEFT."""

from __future__ import annotations

import hashlib

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

import hubmerge
from hubmerge.cli import main
from hubmerge.methods import METHODS, MethodParams, ModuleInput, get_method
from tests.factory import BASES, make_adapter


def random_module(seed: int, ranks=(3, 5), d_in=24, d_out=16, key="m") -> ModuleInput:
    g = torch.Generator().manual_seed(seed)
    factors = [(torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)) for r in ranks]
    return ModuleInput(key, factors, weights=[1.0, -0.7][: len(ranks)], scales=[2.0, 0.5][: len(ranks)])


def dense_sum(module: ModuleInput) -> torch.Tensor:
    return sum(w * s * (b.double() @ a.double()) for (a, b), w, s in zip(module.factors, module.weights, module.scales))


def product(result) -> torch.Tensor:
    return result.b.double() @ result.a.double()


# -- svd -------------------------------------------------------------------------


def test_svd_at_full_rank_equals_the_exact_sum():
    module = random_module(1)
    result = get_method("svd").combine(module, MethodParams(rank=8))
    torch.testing.assert_close(product(result), dense_sum(module), atol=1e-5, rtol=1e-5)
    assert result.kept == 1.0


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_truncated_svd_is_the_best_rank_k_approximation(rank):
    module = random_module(2)
    result = get_method("svd").combine(module, MethodParams(rank=rank))
    u, s, vh = torch.linalg.svd(dense_sum(module))
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    torch.testing.assert_close(product(result), best, atol=1e-5, rtol=1e-5)
    assert result.kept == pytest.approx(float((s[:rank] ** 2).sum() / (s**2).sum()), rel=1e-6)
    assert result.a.shape == (rank, 24) and result.b.shape == (16, rank)


# -- dense methods: references written from their definitions --------------------


def deltas(module):
    return [s * (b.double() @ a.double()) for (a, b), s in zip(module.factors, module.scales)]


def ref_trim(x, density):
    k = int(density * x.numel())
    threshold = x.abs().flatten().sort(descending=True).values[k - 1]
    return torch.where(x.abs() >= threshold, x, torch.zeros_like(x))


def ref_drop(x, density, generator):
    return x * torch.bernoulli(torch.full_like(x, density), generator=generator) / density


def ref_ties_merge(xs, weights, sign_method):
    elected = torch.zeros_like(xs[0])
    for x in xs:  # the sign of the total, or of the count of signs
        elected += x if sign_method == "total" else x.sign()
    elected = torch.where(elected >= 0, 1.0, -1.0).double()
    total = torch.zeros_like(xs[0])
    count = torch.zeros_like(xs[0])
    for x, w in zip(xs, weights):
        agree = (x.sign() == elected).double()
        total += w * x * agree
        count += agree
    return total / count.clamp(min=1)


def generator_for(seed, key):
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def reference(name, module, density, sign, seed):
    xs = deltas(module)
    if name in ("ties", "magnitude_prune"):
        xs = [ref_trim(x, density) for x in xs]
    else:
        g = generator_for(seed, module.key)
        xs = [ref_drop(x.float(), density, g).double() for x in xs]
    if name in ("ties", "dare_ties"):
        return ref_ties_merge(xs, module.weights, sign)
    return sum(w * x for w, x in zip(module.weights, xs))


@pytest.mark.parametrize("name", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_dense_methods_equal_straightforward_references(name, sign):
    module = random_module(3, ranks=(3, 4))
    params = MethodParams(rank=16, density=0.3, majority_sign=sign, seed=7)  # rank 16 = full: no cut
    result = get_method(name).combine(module, params)
    expected = reference(name, module, 0.3, sign, 7)
    # float32 SVD round trip: errors scale with the largest entry (DARE rescales by 1/density)
    torch.testing.assert_close(product(result), expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-4)
    assert result.kept == pytest.approx(1.0, abs=1e-6)


def test_dense_method_truncation_keeps_the_reported_energy():
    module = random_module(4)
    result = get_method("ties").combine(module, MethodParams(rank=3, density=0.5))
    target = reference("ties", module, 0.5, "total", 0)
    s = torch.linalg.svdvals(target)
    assert result.kept == pytest.approx(float((s[:3] ** 2).sum() / (s**2).sum()), rel=1e-5)
    assert result.energy == pytest.approx(float((target**2).sum()), rel=1e-6)


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_seeds(name):
    module = random_module(5)
    run = lambda seed: product(get_method(name).combine(module, MethodParams(rank=16, density=0.5, seed=seed)))  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_dare_linear_at_density_one_is_the_sum():
    module = random_module(6)
    result = get_method("dare_linear").combine(module, MethodParams(rank=16, density=1.0))
    torch.testing.assert_close(product(result), dense_sum(module), atol=1e-5, rtol=1e-5)


def test_bad_parameters():
    with pytest.raises(hubmerge.InvalidArgumentError, match="density"):
        MethodParams(density=0).validate()
    with pytest.raises(hubmerge.InvalidArgumentError, match="rank"):
        MethodParams(rank=0).validate()
    with pytest.raises(hubmerge.InvalidArgumentError, match="choose one of sum, mean, svd"):
        get_method("frankenmerge")


# -- end to end -------------------------------------------------------------------


def test_mean_is_the_sum_with_weights_over_n(tmp_path):
    a, b = make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)
    mean = hubmerge.merge([a, b], weights=[1.0, 3.0], method="mean").tensors
    total = hubmerge.merge([a, b], weights=[0.5, 1.5]).tensors
    assert all(torch.equal(mean[k], total[k]) for k in mean)


def test_report_states_exactness_and_kept_energy(tmp_path):
    a, b = make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)
    exact = hubmerge.merge([a, b], method="svd", rank=8).report.to_dict()
    assert exact["exact"] is True and exact["kept_energy"]["overall"] == 1.0
    cut_report = hubmerge.merge([a, b], method="svd", rank=2).report
    cut = cut_report.to_dict()
    assert cut["exact"] is False and 0 < cut["kept_energy"]["overall"] < 1
    assert cut["method_info"]["parameters"] == {"rank": 2}
    assert set(cut["kept_energy"]["per_module"]) == set(cut["modules"]["coverage"])
    ties = hubmerge.merge([a, b], method="ties", density=0.5).report.to_dict()
    assert ties["exact"] is False and ties["method_info"]["paper"].startswith("https://arxiv.org/")
    assert hubmerge.merge([a, b]).report.to_dict()["kept_energy"] is None

    from hubmerge.card import build_card
    from hubmerge.report import render_text

    card = str(build_card(cut, repo_id="me/x", command="hubmerge a b --method=svd --rank=2"))
    assert "method: `svd`" in card and "not exact" in card and "kept energy" in card
    assert f"{100 * cut['kept_energy']['overall']:.2f}%" in card
    assert "kept energy" in render_text(cut_report)


def test_cli_help_lists_every_method(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for name, method in METHODS.items():
        assert f"{name} {method.description}" in flat


def test_recipe_reproduces_a_lossy_merge(tmp_path, capsys):
    a, b = make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)
    code = main([str(a), str(b), "--method", "dare_ties", "--density", "0.4", "--seed", "3", "--rank", "4",
                 "-o", str(tmp_path / "one")])  # fmt: skip
    assert code == 0
    code = main(["--recipe", str(tmp_path / "one" / "hubmerge_recipe.json"), "-o", str(tmp_path / "two")])
    assert code == 0
    from safetensors.torch import load_file

    one, two = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("one", "two"))
    assert all(torch.equal(one[k], two[k]) for k in one)


# -- against PEFT's add_weighted_adapter on a real model ---------------------------


def peft_deltas(model, adapter):
    return {
        name: module.get_delta_weight(adapter).detach().double()
        for name, module in model.base_model.model.named_modules()
        if isinstance(module, LoraLayer) and adapter in module.lora_A
    }


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        ("svd", "svd", {"rank": 3}),
        ("ties", "ties_svd", {"rank": 5, "density": 0.4}),
        ("dare_ties", "dare_ties_svd", {"rank": 5, "density": 1.0}),  # DARE's drops are random: see below
        ("magnitude_prune", "magnitude_prune_svd", {"rank": 5, "density": 0.3}),
    ],
)
def test_same_delta_as_peft(tmp_path, ours, theirs, kwargs):
    a = make_adapter(tmp_path / "a", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    b = make_adapter(tmp_path / "b", seed=2, r=2, lora_alpha=6, target_modules=["q_proj", "v_proj"])
    weights = [1.0, 0.6]
    out = hubmerge.merge([a, b], weights=weights, method=ours, **kwargs).save_pretrained(tmp_path / "ours")

    model = PeftModel.from_pretrained(BASES["llama"][0](), str(a), adapter_name="a")
    model.load_adapter(str(b), adapter_name="b")
    model.add_weighted_adapter(
        ["a", "b"], weights, "peft", combination_type=theirs, svd_rank=kwargs["rank"],
        density=kwargs.get("density"), majority_sign_method="total",
    )  # fmt: skip
    expected = peft_deltas(model, "peft")
    got = peft_deltas(PeftModel.from_pretrained(BASES["llama"][0](), str(out), adapter_name="x"), "x")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.99])
def test_magnitude_trim_keeps_exactly_the_k_largest(density):
    from hubmerge.methods.dense import magnitude_trim

    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(3))
    assert torch.equal(magnitude_trim(x, density), ref_trim(x, density))
    # Equal magnitudes at the cut-off: still exactly k kept, all of them among the largest.
    tied = torch.tensor([[3.0, -1.0, 1.0, 2.0], [1.0, -1.0, 0.5, -3.0]])
    trimmed = magnitude_trim(tied, 0.5)  # k = 4: both 3s, the 2 and one of the four 1s
    assert int((trimmed != 0).sum()) == 4
    assert set(trimmed[trimmed != 0].abs().tolist()) == {3.0, 2.0, 1.0}
