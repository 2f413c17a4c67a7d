"""The exact sum, checked on real models against independent references.

Reference 1: the base model with Σ wᵢ·ΔWᵢ added to its weights by hand, where
each ΔWᵢ comes from PEFT's own ``get_delta_weight``. Reference 2, where it is
correct: PEFT's ``add_weighted_adapter(combination_type="cat")``.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

import hubmerge
from hubmerge.methods.exact import concat_factors
from tests.arch_zoo import peft_selects
from tests.factory import BASES, input_ids, make_adapter, peft_logits, reference_logits

# fp32 logits of a 2-layer model: the merge rounds once per factor, the
# reference adds dense deltas; both agree far below this.
ATOL = 2e-5

SCENARIOS = {
    "two adapters": ("llama", [dict(seed=1), dict(seed=2)], [1.0, 1.0]),
    "three adapters, different ranks": (
        "llama",
        [dict(seed=1, r=2), dict(seed=2, r=4, lora_alpha=16), dict(seed=3, r=8, lora_alpha=4)],
        [1.0, 1.0, 1.0],
    ),
    "negative weight (task negation)": ("llama", [dict(seed=1), dict(seed=2)], [1.0, -0.5]),
    "rsLoRA": (
        "llama",
        [dict(seed=1, r=4, use_rslora=True), dict(seed=2, r=16, lora_alpha=4, use_rslora=True)],
        [0.7, 1.3],
    ),
    "rank and alpha patterns": (
        "llama",
        [
            dict(
                seed=1,
                r=4,
                target_modules=["q_proj", "v_proj", "down_proj"],
                rank_pattern={"down_proj": 2, "layers.1.self_attn.q_proj": 6},
                alpha_pattern={"v_proj": 3},
            ),
            dict(seed=2, r=2, rank_pattern={"v_proj": 5}, alpha_pattern={"layers.0.self_attn.q_proj": 32}),
        ],
        [1.0, 2.0],
    ),  # fmt: skip
    "partially overlapping targets": (
        "llama",
        [
            dict(seed=1, target_modules=["q_proj", "k_proj"]),
            dict(seed=2, target_modules=["k_proj", "up_proj"], layers_to_transform=[1]),
        ],
        [1.0, 1.0],
    ),  # fmt: skip
    "rsLoRA mixed with plain LoRA": ("llama", [dict(seed=1, use_rslora=True), dict(seed=2)], [1.0, 1.0]),
    "embedding LoRA": (
        "llama",
        [
            dict(seed=1, target_modules=["embed_tokens", "q_proj"]),
            dict(seed=2, target_modules=["embed_tokens"]),
        ],
        [1.0, 0.5],
    ),
    "modules_to_save carried over": (
        "llama",
        [dict(seed=1, modules_to_save=["lm_head"]), dict(seed=2, target_modules=["o_proj"])],
        [1.0, 1.0],
    ),
    "GPT-2 Conv1D plus a Linear head (fan_in_fan_out differs)": (
        "gpt2",
        [dict(seed=1, target_modules=["c_attn"]), dict(seed=2, target_modules=["lm_head"], fan_in_fan_out=False)],
        [1.0, 0.5],
    ),
    "GPT-2 Conv1D (fan_in_fan_out)": (
        "gpt2",
        [
            dict(seed=1, target_modules=["c_attn", "c_fc"]),
            dict(seed=2, r=8, target_modules=["c_attn", "c_proj"]),
        ],
        [1.0, -1.0],
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_merged_adapter_matches_dense_sum(tmp_path, scenario):
    base, specs, weights = SCENARIOS[scenario]
    dirs = [make_adapter(tmp_path / f"in{i}", base=base, **spec) for i, spec in enumerate(specs)]
    result = hubmerge.merge(dirs, weights=weights)
    out = result.save_pretrained(tmp_path / "merged")

    expected = reference_logits(base, list(zip(dirs, weights)))
    merged = peft_logits(base, out)
    unmerged = BASES[base][0]()(input_ids()).logits
    assert (expected - unmerged).abs().max() > 1e-3, "the adapters must actually change the logits"
    torch.testing.assert_close(merged, expected, atol=ATOL, rtol=1e-5)

    config = json.loads((out / "adapter_config.json").read_text())
    assert config.get("use_rslora", False) is False  # written only where a PEFT release needs it
    assert result.report.to_dict()["exact"] is True


def test_single_adapter_with_weight_one_reproduces_it(tmp_path):
    source = make_adapter(tmp_path / "a", seed=3, r=4, lora_alpha=4)  # scale 1: factors copied bit for bit
    out = hubmerge.merge([source]).save_pretrained(tmp_path / "out")
    original = load_file(source / "adapter_model.safetensors")
    merged = load_file(out / "adapter_model.safetensors")
    assert original.keys() == merged.keys()
    for key in original:
        assert torch.equal(original[key], merged[key]), key
    torch.testing.assert_close(peft_logits("llama", out), peft_logits("llama", source), atol=0, rtol=0)


def test_single_adapter_with_any_scale_gives_same_model(tmp_path):
    source = make_adapter(tmp_path / "a", seed=3, r=4, lora_alpha=32, use_rslora=True)
    out = hubmerge.merge([source]).save_pretrained(tmp_path / "out")
    torch.testing.assert_close(peft_logits("llama", out), peft_logits("llama", source), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("weights", [[1.0, 1.0], [0.3, 2.0]])
def test_equals_peft_cat_where_peft_is_correct(tmp_path, weights):
    # PEFT's "cat" is right for positive weights, no rsLoRA and no rank patterns.
    a = make_adapter(tmp_path / "a", seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    b = make_adapter(tmp_path / "b", seed=2, r=2, lora_alpha=16, target_modules=["v_proj", "down_proj"])
    out = hubmerge.merge([a, b], weights=weights).save_pretrained(tmp_path / "out")

    model = PeftModel.from_pretrained(BASES["llama"][0](), str(a), adapter_name="a")
    model.load_adapter(str(b), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], weights, "cat", combination_type="cat")
    model.set_adapter("cat")
    with torch.no_grad():
        peft_cat = model(input_ids()).logits
    torch.testing.assert_close(peft_logits("llama", out), peft_cat, atol=ATOL, rtol=1e-5)


def test_differs_from_peft_cat_on_rslora_where_peft_copies_the_config(tmp_path):
    # PEFT issue #3761: the "cat" config is a copy of the first input's, so
    # use_rslora=True survives and the merged delta is scaled by √R instead of 1.
    a = make_adapter(tmp_path / "a", seed=1, r=4, use_rslora=True)
    b = make_adapter(tmp_path / "b", seed=2, r=4, use_rslora=True)
    ours = peft_logits("llama", hubmerge.merge([a, b]).save_pretrained(tmp_path / "out"))
    expected = reference_logits("llama", [(a, 1.0), (b, 1.0)])
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=1e-5)

    model = PeftModel.from_pretrained(BASES["llama"][0](), str(a), adapter_name="a")
    model.load_adapter(str(b), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "cat", combination_type="cat")
    model.set_adapter("cat")
    with torch.no_grad():
        peft_cat = model(input_ids()).logits
    assert not torch.allclose(peft_cat, expected, atol=1e-3), "PEFT's cat was expected to be off for rsLoRA"


def test_output_config_is_built_not_copied(tmp_path):
    a = make_adapter(tmp_path / "a", seed=1, r=4, lora_alpha=64, lora_dropout=0.3, use_rslora=True,
                     rank_pattern={"v_proj": 2})  # fmt: skip
    b = make_adapter(tmp_path / "b", seed=2, r=2, target_modules=["q_proj"])
    result = hubmerge.merge([a, b])
    config = result.config
    assert config["lora_dropout"] == 0.0 and config.get("use_rslora", False) is False
    # one stored rank, scale exactly 1, no per-module patterns
    assert config["r"] == config["lora_alpha"] == 6
    assert not config.get("rank_pattern") and not config.get("alpha_pattern")
    modules = {f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")}
    names = {name for name, _ in BASES["llama"][0]().named_modules()}
    assert {n for n in names if peft_selects(config["target_modules"], n)} == modules, "selects exactly the merged"
    # b was limited to q_proj by name, a to q_proj and v_proj: a list of those names is exact
    assert config["target_modules"] == ["q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "test-org/tiny-llama"
    out = result.report.to_dict()["output"]
    assert (out["rank"], out["rank_min"], out["rank_max"], out["padded_modules"]) == (6, 2, 6, 2)
    v = result.tensors["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"]
    assert v.shape[0] == 6 and torch.count_nonzero(v[2:]) == 0, "v_proj (rank 2) is zero-padded"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_choice_and_default(tmp_path, dtype):
    a = make_adapter(tmp_path / "a", seed=1)
    b = make_adapter(tmp_path / "b", seed=2)
    result = hubmerge.merge([a, b], dtype=dtype)
    assert {t.dtype for t in result.tensors.values()} == {getattr(torch, dtype)}
    assert {t.dtype for t in hubmerge.merge([a, b]).tensors.values()} == {torch.float32}


def test_concat_factors_worked_example():
    # Small enough to check by hand: 2·[1 0]ᵀ[1 2] + (−1)·[0 1]ᵀ[3 4] = [[2, 4], [−3, −4]].
    a1, b1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0], [0.0]])
    a2, b2 = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0], [1.0]])
    a, b = concat_factors([(a1, b1), (a2, b2)], [2.0, -1.0], dtype=torch.float32)
    assert a.shape == (2, 2) and b.shape == (2, 2)
    assert torch.equal(b @ a, torch.tensor([[2.0, 4.0], [-3.0, -4.0]]))


class _Nested(torch.nn.Module):
    """A module key that is a dotted suffix of another ("lin" and "sub.lin")."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)
        self.sub = torch.nn.Module()
        self.sub.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.sub.lin(torch.relu(self.lin(x)))


def test_module_key_that_is_a_suffix_of_another_loads_exactly(tmp_path):
    from peft import LoraConfig, get_peft_model

    dirs = []
    for name, seed, config in (
        ("a", 1, LoraConfig(r=4, target_modules=["sub.lin"], init_lora_weights=False)),
        ("b", 2, LoraConfig(r=2, target_modules=["lin"], init_lora_weights=False)),  # both modules
    ):
        base = _Nested()
        torch.manual_seed(seed)
        get_peft_model(base, config).save_pretrained(tmp_path / name)
        dirs.append(tmp_path / name)
    out = hubmerge.merge(dirs, weights=[1.0, -2.0]).save_pretrained(tmp_path / "merged")

    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        merged = PeftModel.from_pretrained(_Nested(), str(out))(x)
        expected_model = _Nested()
        params = dict(expected_model.named_parameters())
        for directory, weight in zip(dirs, [1.0, -2.0]):
            peft_model = PeftModel.from_pretrained(_Nested(), str(directory))
            for name, module in peft_model.base_model.model.named_modules():
                if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
                    params[f"{name}.weight"].add_(weight * module.get_delta_weight("default"))
        expected = expected_model(x)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_nested_modules_to_save_of_a_classifier(tmp_path):
    # RoBERTa's classification head is a module with submodules (classifier.dense, classifier.out_proj),
    # saved in full by PEFT for task_type SEQ_CLS.
    from peft import LoraConfig, get_peft_model
    from transformers import RobertaConfig, RobertaForSequenceClassification

    def base():
        torch.manual_seed(0)
        config = RobertaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=64, num_labels=3)  # fmt: skip
        return RobertaForSequenceClassification(config).eval()

    dirs = []
    for name, seed, kwargs in (("cls", 1, {"task_type": "SEQ_CLS"}), ("plain", 2, {})):
        model = base()
        torch.manual_seed(seed)
        config = LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False, **kwargs)
        peft_model = get_peft_model(model, config)
        if name == "cls":  # a trained head, so the carried-over copy is distinguishable from the base
            with torch.no_grad():
                for p in peft_model.base_model.model.classifier.modules_to_save["default"].parameters():
                    p.add_(torch.randn_like(p))
        peft_model.save_pretrained(tmp_path / name)
        dirs.append(tmp_path / name)
    result = hubmerge.merge(dirs)
    assert result.report.to_dict()["modules_to_save"] == [{"module": "classifier", "from": "cls"}]
    out = result.save_pretrained(tmp_path / "merged")

    ids = torch.arange(3, 15).reshape(1, 12)
    with torch.no_grad():
        merged = PeftModel.from_pretrained(base(), str(out))(ids).logits
        expected = base()
        for directory in dirs:
            expected = PeftModel.from_pretrained(expected, str(directory)).merge_and_unload()
        torch.testing.assert_close(merged, expected(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_concat_factors_in_the_inputs_dtype_equals_rounding_the_float32_result(dtype):
    g = torch.Generator().manual_seed(7)
    factors = [(torch.randn(r, 40, generator=g).to(dtype), torch.randn(24, r, generator=g).to(dtype)) for r in (3, 5)]
    coefficients = [64 / 3, -0.37]  # not powers of two: the scaling rounds
    direct = concat_factors(factors, coefficients, dtype=dtype)
    via_float32 = [t.to(dtype) for t in concat_factors(factors, coefficients, dtype=torch.float32)]
    for ours, reference in zip(direct, via_float32):
        assert ours.dtype == dtype and torch.equal(ours, reference)


def test_concat_factors_in_a_scratch_buffer_equals_a_fresh_result():
    g = torch.Generator().manual_seed(8)
    factors = [(torch.randn(r, 40, generator=g).bfloat16(), torch.randn(24, r, generator=g).bfloat16()) for r in (3, 5)]
    scratch = torch.full((8 * 64 + 7,), float("nan"))  # larger than needed, and dirty
    in_scratch = concat_factors(factors, [1.5, -2.0], dtype=torch.float32, scratch=scratch)
    fresh = concat_factors(factors, [1.5, -2.0], dtype=torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(in_scratch, fresh))
    assert in_scratch[0].data_ptr() == scratch.data_ptr()  # built in place


@pytest.mark.parametrize("inputs", [torch.bfloat16, torch.float16, torch.float32, "mixed"])
@pytest.mark.parametrize("out", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_the_sum_built_from_the_analysis_copy_equals_the_sum_built_from_the_inputs(inputs, out):
    # The merge hands exact_sum the float32 concatenation it made for the analysis (in a buffer reused for
    # the next module); the written factors must be bit for bit what the inputs give directly, and not
    # share that buffer.
    from hubmerge.methods import MethodParams
    from hubmerge.methods.combine import ModuleInput, exact_sum

    g = torch.Generator().manual_seed(11)
    dtypes = [torch.bfloat16, torch.float32, torch.float16] if inputs == "mixed" else [inputs] * 3
    factors = [
        (torch.randn(r, 300, generator=g).to(d), torch.randn(200, r, generator=g).to(d))
        for r, d in zip((4, 8, 3), dtypes)
    ]
    weights, scales = [0.7, -1.3, 2.9], [64 / 3, 0.37, 16.0]  # products that round in every dtype
    coefficients = [w * s for w, s in zip(weights, scales)]
    scratch = torch.full((15 * 500 + 3,), float("nan"))
    concat = concat_factors(factors, coefficients, dtype=torch.float32, scratch=scratch)
    with_copy = exact_sum(ModuleInput("m", factors, weights, scales, concat=concat, out_dtype=out), MethodParams())
    direct = exact_sum(ModuleInput("m", factors, weights, scales, out_dtype=out), MethodParams())
    for ours, reference in ((with_copy.a, direct.a), (with_copy.b, direct.b)):
        assert ours.dtype == reference.dtype == out and torch.equal(ours, reference)
    scratch.fill_(float("nan"))  # the next module overwrites the buffer: the result must not change
    assert torch.equal(with_copy.a, direct.a) and torch.equal(with_copy.b, direct.b)
