"""LoRA on fused MoE expert parameters (``target_parameters``): exact sums on tiny Mixtral,
Qwen3-MoE and gpt-oss models, checked against PEFT applying the sources itself and against
base + Σ wᵢ·``get_delta_weight``; refusals where the files cannot say how to lay the sum out.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer, ParamWrapper
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DeepseekV3Config, GptOssConfig, MixtralConfig, Qwen3MoeConfig

import hubmerge
from hubmerge.cli import main
from hubmerge.experts import assemble, expert_factors
from tests.arch_zoo import peft_all_sources

BASE_ID = "test-org/tiny-moe"
VOCAB = 64
# Each tiny model has 3 experts whose fused parameters have distinct in/out sizes.
CONFIGS = {
    "mixtral": lambda: MixtralConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=3, num_experts_per_tok=2, tie_word_embeddings=False,
    ),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, moe_intermediate_size=12, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=3, num_experts_per_tok=2,
        tie_word_embeddings=False,
    ),
    # Layer 0 dense (gate_proj/up_proj/down_proj modules), layer 1 routed experts next to a shared MLP.
    "deepseek_v3": lambda: DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, moe_intermediate_size=12, num_hidden_layers=2,
        first_k_dense_replace=1, n_routed_experts=3, num_experts_per_tok=2, n_shared_experts=1,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=8, kv_lora_rank=8, qk_rope_head_dim=4,
        qk_nope_head_dim=4, v_head_dim=4, n_group=1, topk_group=1, tie_word_embeddings=False,
    ),
    # gpt-oss stores its experts transposed (E × in × out, ``is_transposed``), with biases.
    "gpt_oss": lambda: GptOssConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, num_local_experts=3, num_experts_per_tok=2, tie_word_embeddings=False,
    ),
}  # fmt: skip
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def tiny(arch: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch]()).eval()
    with torch.no_grad():  # gpt-oss zero-initialises its expert weights; give every weight some size
        for param in model.parameters():
            if param.abs().sum() == 0:
                param.normal_(0, 0.2)
    return model


def make(directory, arch: str, seed: int, **lora):
    lora.setdefault("r", 2)
    lora.setdefault("lora_alpha", 4)
    lora.setdefault("init_lora_weights", False)
    base = tiny(arch)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(**lora))
    model.peft_config["default"].base_model_name_or_path = BASE_ID
    with torch.no_grad():  # PEFT's random B is small; make the deltas move the logits clearly
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    model.save_pretrained(directory)
    return directory


def ids() -> torch.Tensor:
    return torch.arange(2, 2 + 2 * 10).remainder(VOCAB).reshape(2, 10)


@torch.no_grad()
def dense_reference(arch: str, sources) -> torch.Tensor:
    """Logits of the base with Σ wᵢ·ΔWᵢ added by hand, ΔWᵢ from PEFT's get_delta_weight (each source alone)."""
    model = tiny(arch)
    params = dict(model.named_parameters())
    for directory, weight in sources:
        peft_model = PeftModel.from_pretrained(tiny(arch), str(directory))
        for name, module in peft_model.base_model.model.named_modules():
            if not (isinstance(module, LoraLayer) and "default" in module.lora_A):
                continue
            if isinstance(module, ParamWrapper):
                target = f"{name.replace('.base_layer', '')}.{module.parameter_name}"
            else:
                target = f"{name}.weight"
            params[target].add_(weight * module.get_delta_weight("default"))
    return model(ids()).logits


@torch.no_grad()
def peft_reference(arch: str, sources) -> torch.Tensor:
    """Logits with PEFT applying every source at once, each layer's scaling multiplied by its weight."""
    return peft_all_sources(tiny(arch), sources)(ids()).logits


@torch.no_grad()
def merged_logits(arch: str, directory) -> torch.Tensor:
    return PeftModel.from_pretrained(tiny(arch), str(directory)).eval()(ids()).logits


def merge_to(tmp_path, sources, name="merged"):
    result = hubmerge.merge([str(d) for d, _ in sources], weights=[w for _, w in sources])
    out = tmp_path / name
    result.save_pretrained(out)
    return result, out


@torch.no_grad()
def base_logits(arch: str) -> torch.Tensor:
    return tiny(arch)(ids()).logits


@pytest.mark.parametrize(
    ("arch", "lora"),
    [
        # transformers 5 + all-linear: PEFT targets the fused experts and the router itself,
        # and (Mixtral, Qwen3-MoE) doubles the rank of the fused gate_up_proj through rank_pattern.
        ("mixtral", {"target_modules": "all-linear"}),
        ("qwen3_moe", {"target_modules": "all-linear"}),
        ("deepseek_v3", {"target_modules": "all-linear"}),
        ("gpt_oss", {"target_modules": ["q_proj", "v_proj"], "target_parameters": EXPERTS}),
    ],
)
def test_same_parameters_merge_exactly(tmp_path, arch, lora):
    a = make(tmp_path / "a", arch, seed=1, **lora)
    b = make(tmp_path / "b", arch, seed=2, **{**lora, "r": 3, "lora_alpha": 5, "use_rslora": True})
    sources = [(a, 1.0), (b, -0.7)]
    result, out = merge_to(tmp_path, sources)

    assert json.loads((a / "adapter_config.json").read_text())["target_parameters"]  # really parameter LoRA
    got = merged_logits(arch, out)
    dense, peft_both = dense_reference(arch, sources), peft_reference(arch, sources)
    assert (dense - base_logits(arch)).abs().max() > 0.05  # the deltas matter, so a wrong sum would show
    assert torch.allclose(dense, peft_both, atol=2e-5)
    assert torch.allclose(got, dense, atol=2e-5), (got - dense).abs().max()
    config = json.loads((out / "adapter_config.json").read_text())
    assert all(p.startswith("model.layers.") for p in config["target_parameters"])
    assert result.report.exact is True
    assert "needs_recent_peft" in {w.code for w in result.report.warnings}


def test_different_parameter_subsets(tmp_path):
    """One adapter adapts both expert parameters of every layer, another only layer 0's down_proj
    (and other attention modules): PEFT refuses to load them together, their deltas still add up."""
    a = make(tmp_path / "a", "mixtral", seed=1, target_modules=["q_proj"], target_parameters=EXPERTS)
    b = make(
        tmp_path / "b", "mixtral", seed=2, r=4, lora_alpha=3,
        target_modules=["v_proj"], target_parameters=["model.layers.0.mlp.experts.down_proj"],
    )  # fmt: skip
    sources = [(a, 0.5), (b, 2.0)]
    with pytest.raises(ValueError, match="same set of parameters"):
        peft_reference("mixtral", sources)
    _, out = merge_to(tmp_path, sources)
    dense = dense_reference("mixtral", sources)
    assert (dense - dense_reference("mixtral", sources[:1])).abs().max() > 0.05
    assert torch.allclose(merged_logits("mixtral", out), dense, atol=2e-5)


def test_disjoint_parameters_of_one_module_are_refused(tmp_path, capsys):
    """Nothing says in which order the model registers gate_up_proj and down_proj, so the merged
    file's nesting cannot be decided: refused with that reason first, nothing written."""
    a = make(tmp_path / "a", "qwen3_moe", seed=1, target_modules=[], target_parameters=["experts.gate_up_proj"])
    b = make(tmp_path / "b", "qwen3_moe", seed=2, target_modules=[], target_parameters=["experts.down_proj"])
    code = main([str(a), str(b), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert "no adapter adapts all of its parameters" in problems[0], err
    assert not (tmp_path / "out").exists()


def test_disjoint_parameters_merge_where_the_hub_names_the_model_type(tmp_path, hub):
    """The same two adapters, once the Hub says the base is a qwen3_moe model: transformers' Qwen3MoeExperts
    registers gate_up_proj before down_proj, so PEFT nests down_proj outside, and the merge is exact."""
    from tests.conftest import TOKENS

    if BASE_ID not in hub.list_repos():
        hub.create_repo(BASE_ID, owner_token=TOKENS["alice"])
        hub.commit_files(BASE_ID, {"config.json": json.dumps({"model_type": "qwen3_moe"}).encode()})
    a = make(tmp_path / "a", "qwen3_moe", seed=1, target_modules=[], target_parameters=["experts.gate_up_proj"])
    b = make(tmp_path / "b", "qwen3_moe", seed=2, target_modules=[], target_parameters=["experts.down_proj"])
    sources = [(a, 1.0), (b, -0.5)]
    result = hubmerge.merge([str(a), str(b)], weights=[1.0, -0.5], resolve_base_model=True)
    result.save_pretrained(tmp_path / "merged")
    dense = dense_reference("qwen3_moe", sources)
    assert (dense - dense_reference("qwen3_moe", sources[:1])).abs().max() > 0.05
    assert torch.allclose(merged_logits("qwen3_moe", tmp_path / "merged"), dense, atol=2e-5)


def test_equal_shapes_that_cannot_be_told_apart_are_refused(tmp_path):
    """Two same-shaped parameters on one module, each adapter targeting a different one: a guessed
    label could not be checked, so hubmerge refuses instead of risking a swapped sum."""
    from hubmerge.experts import ParameterLayout, plan_parameters

    both = {"m": ParameterLayout("m", ("w1", "w3"), ((8, 4, 2), (8, 4, 2)), ambiguous=True)}
    one = {"m": ParameterLayout("m", ("w3",), ((8, 4, 2),), ambiguous=False)}
    _, problems = plan_parameters(["a", "b"], [both, one])
    assert any("cannot tell which" in p for p in problems)
    _, problems = plan_parameters(["a", "b"], [both, both])  # same parameters: same nesting, depth by depth
    assert problems == []


def test_layout_round_trip_matches_peft():
    """PEFT's own reshape (ParamWrapper.get_delta_weight) against expert_factors, on hand-made factors."""
    torch.manual_seed(0)
    experts, rank, d_in, d_out = 3, 2, 5, 4
    a, b = torch.randn(experts * rank, d_in), torch.randn(d_out, rank * experts)
    peft_a = a.reshape(experts, -1, d_in)
    peft_b = b.reshape(d_out, -1, experts)
    delta = torch.einsum("o r e, e r i -> e o i", peft_b, peft_a)
    parts = [expert_factors(a, b, experts, e) for e in range(experts)]
    for e, (a_e, b_e) in enumerate(parts):
        assert torch.allclose(b_e @ a_e, delta[e])
    a2, b2 = assemble(parts)
    assert torch.equal(a2, a) and torch.equal(b2, b)


def test_expert_factors_are_read_once_per_parameter(tmp_path):
    a = make(tmp_path / "a", "mixtral", seed=1, target_modules=[], target_parameters=EXPERTS)
    adapter = hubmerge.load_adapters([str(a)])[0]
    keys = [k for k in adapter.modules if "[" in k]
    assert len(keys) == 2 * 2 * 3  # layers × parameters × experts
    saved = load_file(a / "adapter_model.safetensors")
    for key in keys:
        spec = adapter.modules[key]
        got = adapter.factors(key)
        want = expert_factors(saved[spec.a_name], saved[spec.b_name], spec.experts, spec.expert)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_methods_work_per_expert(tmp_path):
    """Each expert is a module of its own: svd at full rank is the exact sum, truncated it is not."""
    a = make(tmp_path / "a", "mixtral", seed=1, target_modules=[], target_parameters=EXPERTS)
    b = make(tmp_path / "b", "mixtral", seed=2, target_modules=[], target_parameters=EXPERTS)
    sources = [(a, 1.0), (b, 1.0)]
    full = hubmerge.merge([str(a), str(b)], method="svd", rank=4)
    full.save_pretrained(tmp_path / "full")
    assert full.report.exact is True
    assert torch.allclose(merged_logits("mixtral", tmp_path / "full"), dense_reference("mixtral", sources), atol=1e-4)
    cut = hubmerge.merge([str(a), str(b)], method="svd", rank=1)
    assert cut.report.exact is False
    per_module = cut.report.kept_energy.per_module
    assert len(per_module) == 2 * 2 * 3 and all(0 < share < 1 for share in per_module.values())  # layers·params·experts


def test_same_key_different_parameter(tmp_path):
    """``experts.lora_A.weight`` is down_proj in an adapter of both parameters but gate_up_proj in one of
    gate_up_proj alone: mapped through each adapter's target_parameters, not by key."""
    a = make(tmp_path / "a", "qwen3_moe", seed=1, target_modules=[], target_parameters=EXPERTS)
    c = make(tmp_path / "c", "qwen3_moe", seed=3, r=3, target_modules=[], target_parameters=["experts.gate_up_proj"])
    outer = "base_model.model.model.layers.0.mlp.experts.lora_A.weight"
    assert load_file(a / "adapter_model.safetensors")[outer].shape[1] == 12  # down_proj: moe_intermediate_size in
    assert load_file(c / "adapter_model.safetensors")[outer].shape[1] == 16  # gate_up_proj: hidden_size in
    sources = [(a, 1.0), (c, 1.5)]
    _, out = merge_to(tmp_path, sources)
    assert torch.allclose(merged_logits("qwen3_moe", out), dense_reference("qwen3_moe", sources), atol=2e-5)


def test_module_and_parameter_lora_on_one_module_are_refused():
    from hubmerge.experts import ParameterLayout, plan_parameters

    gate = {"m.gate": ParameterLayout("m.gate", ("weight",), ((16, 3, 1),), ambiguous=False)}
    _, problems = plan_parameters(["a", "b"], [gate, {}], [[], ["m.gate"]])
    assert len(problems) == 1 and "LoRA on its parameters in a and LoRA on the whole module in b" in problems[0]


def test_a_config_that_contradicts_the_tensors_says_so_first(tmp_path):
    """A rank_pattern that does not divide the expert factors: the first problem names the module and
    target_parameters, not a generic rank mismatch of a module called 'experts'."""
    a = make(tmp_path / "a", "mixtral", seed=1, target_modules=[], target_parameters=EXPERTS)
    config = json.loads((a / "adapter_config.json").read_text())
    config["rank_pattern"] = {"down_proj": 4, "gate_up_proj": 4}  # stored rank 2, 3 experts: 6 rows
    (a / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(hubmerge.IncompatibleAdaptersError) as info:
        hubmerge.merge([str(a)])
    first = str(info.value.problems[0])
    assert "module 'model.layers.0.mlp.experts' holds LoRA factors of 2 parameter(s)" in first
    assert "target_parameters" in first


# transformers 4's per-expert layout of each family: the router and the expert projections' names,
# in the order transformers 5 stacks gate before up into gate_up_proj (conversion_mapping.py).
OLD_LAYOUT = {
    "mixtral": ("block_sparse_moe", "gate", ("w1", "w3", "w2")),
    "qwen3_moe": ("mlp", "gate", ("gate_proj", "up_proj", "down_proj")),
}


def make_per_expert(
    directory,
    arch: str,
    seed: int,
    *,
    projections,
    experts=(0, 1, 2),
    router=True,
    attention=True,
    r=2,
    alpha=4,
    rank_pattern=None,
    alpha_pattern=None,
):
    """An adapter saved against transformers 4's per-expert layout (one Linear per expert and projection),
    written by hand with PEFT's key names; sizes from the tiny transformers-5 model."""
    from safetensors.torch import save_file

    from hubmerge.config import read_config

    block, gate, names = OLD_LAYOUT[arch]
    config = CONFIGS[arch]()
    hidden = config.hidden_size
    inter = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    count = getattr(config, "num_local_experts", None) or config.num_experts
    sizes = {names[0]: (hidden, inter), names[1]: (hidden, inter), names[2]: (inter, hidden)}
    lora = {"r": r, "lora_alpha": alpha, "rank_pattern": rank_pattern or {}, "alpha_pattern": alpha_pattern or {}}
    torch.manual_seed(seed)
    tensors, modules = {}, []
    for layer in range(config.num_hidden_layers):
        stem = f"model.layers.{layer}"
        for expert in experts:
            for proj in projections:
                modules.append((f"{stem}.{block}.experts.{expert}.{proj}", *sizes[proj]))
        if router:
            modules.append((f"{stem}.{block}.{gate}", hidden, count))
        if attention:
            modules.append((f"{stem}.self_attn.q_proj", hidden, config.num_attention_heads * 8))
    targets = sorted({key.rsplit(".", 1)[1] for key, *_ in modules})
    cfg = {"peft_type": "LORA", "base_model_name_or_path": BASE_ID, "target_modules": targets, **lora}
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps(cfg))
    parsed = read_config(directory / "adapter_config.json", "made")
    for key, d_in, d_out in modules:
        rank = parsed.rank_for(key)
        tensors[f"base_model.model.{key}.lora_A.weight"] = torch.randn(rank, d_in) * 0.5
        tensors[f"base_model.model.{key}.lora_B.weight"] = torch.randn(d_out, rank) * 0.5
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


def per_expert_deltas(arch: str, directory) -> dict[str, torch.Tensor]:
    """Each per-expert LoRA's s·B·A, placed by hand where transformers 5 keeps that weight: gate in the
    first half of gate_up_proj[e]'s rows, up in the second, down in down_proj[e], the router in gate.weight."""
    from hubmerge.config import read_config

    block, gate, (g, u, d) = OLD_LAYOUT[arch]
    config = read_config(directory / "adapter_config.json", "made")
    saved = load_file(directory / "adapter_model.safetensors")
    params = dict(tiny(arch).named_parameters())
    deltas: dict[str, torch.Tensor] = {}
    for name in saved:
        if not name.endswith(".lora_A.weight"):
            continue
        key = name[len("base_model.model.") : -len(".lora_A.weight")]
        delta = config.scale_for(key) * saved[name.replace("lora_A", "lora_B")] @ saved[name]
        head, _, proj = key.rpartition(".")
        if proj == gate:
            target, index = head.replace(f".{block}", ".mlp") + ".gate.weight", ()
        elif ".experts." in key:
            layer, expert = head.replace(f".{block}.", ".mlp.").rsplit(".", 1)
            fused = "down_proj" if proj == d else "gate_up_proj"
            rows = delta.shape[0]
            half = slice(0, rows) if proj in (g, d) else slice(rows, 2 * rows)
            target, index = f"{layer}.{fused}", (int(expert), half)
        else:
            target, index = f"{key}.weight", ()
        full = deltas.setdefault(target, torch.zeros_like(params[target]))
        full[index] += delta
    return deltas


@torch.no_grad()
def model_with(arch: str, deltas) -> torch.nn.Module:
    model = tiny(arch)
    params = dict(model.named_parameters())
    for weight, per_param in deltas:
        for name, delta in per_param.items():
            params[name].add_(weight * delta)
    return model


@torch.no_grad()
def peft_deltas(arch: str, directory) -> dict[str, torch.Tensor]:
    """Every parameter's delta as PEFT computes it (get_delta_weight) from one adapter loaded on the model."""
    model = PeftModel.from_pretrained(tiny(arch), str(directory))
    deltas: dict[str, torch.Tensor] = {}
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            if isinstance(module, ParamWrapper):
                target = f"{name.replace('.base_layer', '')}.{module.parameter_name}"
            else:
                target = f"{name.replace('.base_layer', '')}.weight"
            deltas[target] = deltas.get(target, 0) + module.get_delta_weight("default")
    return deltas


def test_peft_reads_the_per_expert_layout_as_the_reference_does(tmp_path):
    """The reference's reading of transformers 4's layout (gate before up in gate_up_proj) is the one
    PEFT applies when it loads such an adapter on a transformers-5 model."""
    old = make_per_expert(tmp_path / "old", "mixtral", seed=5, projections=("w1", "w2", "w3"))
    want = model_with("mixtral", [(1.0, per_expert_deltas("mixtral", old))])(ids()).logits
    assert (want - base_logits("mixtral")).abs().max() > 0.05
    assert torch.allclose(merged_logits("mixtral", old), want, atol=2e-5)


@pytest.mark.parametrize(
    ("arch", "old_lora", "new_lora"),
    [
        # Different ranks and alphas for gate and up: the stacked LoRA's blocks keep each one's scale.
        ("mixtral", {"projections": ("w1", "w2", "w3"), "rank_pattern": {"w3": 3}, "alpha_pattern": {"w1": 5}},
         {"target_modules": "all-linear"}),
        # Only the gate projection of experts 0 and 2, and no router: zeros elsewhere.
        ("qwen3_moe", {"projections": ("gate_proj",), "experts": (0, 2), "router": False},
         {"target_modules": ["q_proj"], "target_parameters": EXPERTS}),
        # down_proj in one, gate_up_proj in the other: the family's registration order decides the nesting.
        ("mixtral", {"projections": ("w2",), "router": False, "attention": False},
         {"target_modules": [], "target_parameters": ["mlp.experts.gate_up_proj"]}),
    ],
)  # fmt: skip
def test_per_expert_and_fused_layouts_merge_exactly(tmp_path, arch, old_lora, new_lora):
    """One adapter in transformers 4's per-expert layout, one in the fused layout (target_parameters): one
    module under two layouts is one module, rewritten exactly into the fused layout."""
    old = make_per_expert(tmp_path / "old", arch, seed=5, **old_lora)
    new = make(tmp_path / "new", arch, seed=6, **new_lora)
    sources = [(old, 0.8), (new, -1.3)]
    result, out = merge_to(tmp_path, sources)
    assert "experts_fused" in {w.code for w in result.report.warnings}
    assert result.report.output.min_peft == "0.17.0"  # target_parameters
    deltas = [(0.8, per_expert_deltas(arch, old)), (-1.3, peft_deltas(arch, new))]
    want = model_with(arch, deltas)
    assert (want(ids()).logits - base_logits(arch)).abs().max() > 0.05
    assert torch.allclose(merged_logits(arch, out), want(ids()).logits, atol=2e-5)
    got = peft_deltas(arch, out)  # every parameter's merged delta, as PEFT computes it from the output
    expected: dict[str, torch.Tensor] = {}
    for weight, per_param in deltas:
        for name, delta in per_param.items():
            expected[name] = expected.get(name, 0) + weight * delta
    assert set(got) == set(expected)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5), name
    saved = load_file(out / "adapter_model.safetensors")
    assert not any(".experts.0." in k or "block_sparse_moe" in k for k in saved)  # one layout: the fused one


def test_a_per_expert_adapter_of_more_experts_than_the_fused_layout_is_refused(tmp_path, capsys):
    old = make_per_expert(tmp_path / "old", "mixtral", seed=5, projections=("w2",), experts=(0, 3), router=False)
    new = make(tmp_path / "new", "mixtral", seed=6, target_modules=[], target_parameters=EXPERTS)
    assert main([str(old), str(new), "-o", str(tmp_path / "out")]) == 1
    problems = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert "is expert 3, but the fused layout of the other adapters has 3 experts" in problems[0]
    assert not (tmp_path / "out").exists()


def test_per_expert_adapters_alone_stay_in_their_layout(tmp_path):
    """With no adapter in the fused layout nothing is rewritten: the output is in transformers 4's
    layout, which PEFT also converts when it loads it under transformers 5."""
    a = make_per_expert(tmp_path / "a", "mixtral", seed=1, projections=("w1", "w2", "w3"))
    b = make_per_expert(tmp_path / "b", "mixtral", seed=2, projections=("w1", "w3", "w2"), r=3)
    sources = [(a, 1.0), (b, 0.5)]
    result, out = merge_to(tmp_path, sources)
    assert "experts_fused" not in {w.code for w in result.report.warnings}
    assert any(".block_sparse_moe.experts.2.w3." in k for k in load_file(out / "adapter_model.safetensors"))
    want = model_with("mixtral", [(w, per_expert_deltas("mixtral", d)) for d, w in sources])(ids()).logits
    assert torch.allclose(merged_logits("mixtral", out), want, atol=2e-5)


def test_per_expert_layout_of_an_unknown_family_next_to_fused_experts_is_refused(tmp_path):
    """Per-expert Linears whose names no family of hubmerge/expert_layouts.py has: refused, reason first,
    instead of writing both key sets."""
    from safetensors.torch import save_file

    old = make_per_expert(tmp_path / "old", "mixtral", seed=5, projections=("w1",), router=False)
    path = old / "adapter_model.safetensors"
    save_file({k.replace("block_sparse_moe", "feed_forward"): v for k, v in load_file(path).items()}, str(path))
    fused = make(tmp_path / "fused", "mixtral", seed=1, target_modules=[], target_parameters=EXPERTS)
    with pytest.raises(hubmerge.IncompatibleAdaptersError) as info:
        hubmerge.merge([str(old), str(fused)])
    first = info.value.problems[0]
    assert first.code == "expert_layouts_differ" and "feed_forward.experts.0.w1" in first.message
    assert "fused layout hubmerge does not know" in first.message
