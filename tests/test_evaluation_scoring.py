"""Scoring: logits only where a token is scored, and common prefixes run once, with PEFT's numbers.

The reference is PEFT's own forward, one example at a time with full logits
(``tests/eval_factory.reference_nll``); the tiny model's character tokenizer
makes long common prefixes easy to write.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from hubmerge.evaluation.data import Example
from hubmerge.evaluation.model import Evaluator, load_base_model
from hubmerge.evaluation.scoring import MIN_SHARED, _runs, pass_cost, plan
from hubmerge.loading import load_adapters
from tests.eval_factory import domains, reference_nll, sentence

TOL = 1e-5


def _example(ids, start):
    return Example(tuple(ids), start, False)


def test_plan_groups_common_prefixes_and_keeps_them_before_every_scored_token():
    shared = list(range(10, 10 + 30))
    # the third scores from position 30: the logit at 29 predicts it, so 29 tokens are shared
    group = [_example(shared + [1, 2, 3], 31), _example(shared + [4, 5], 30), _example(shared + [4, 6, 7], 32)]
    short = [_example([9, 8, 7, 6], 2), _example([9, 8, 5], 1)]  # a common prefix of 2: not worth a pass
    late = _example(shared + [1, 2], 12)  # scores from position 12: at most 11 tokens could be shared
    batches = plan([*group, *short, late], batch_size=8)
    seen = sorted(e.ids for b in batches for e in b.examples)
    assert seen == sorted(e.ids for e in [*group, *short, late])  # every example exactly once
    grouped = [b for b in batches if b.shared]
    assert len(grouped) == 1 and grouped[0].shared == 29 and set(grouped[0].examples) == set(group)
    for batch in batches:
        for example in batch.examples:
            assert batch.shared <= example.start - 1  # the logit of the first scored token is in the second pass
            assert list(example.ids[: batch.shared]) == list(batch.examples[0].ids[: batch.shared])
    assert plan(group, batch_size=2)[0].shared == 29 and max(len(b.examples) for b in plan(group, batch_size=2)) == 2
    assert all(b.shared == 0 for b in plan(group, batch_size=8, share=False))
    assert MIN_SHARED > 2


@pytest.fixture(scope="module")
def shared_prompts(tmp_path_factory):
    paths = domains()
    rng = random.Random(5)
    contexts = ["context: " + sentence(rng) + " " + sentence(rng) for _ in range(2)]
    rows = [{"prompt": f"{contexts[i % 2]} q{i}:", "completion": " " + sentence(rng)} for i in range(7)]
    rows.append({"prompt": "alone:", "completion": " " + sentence(rng)})
    return paths, rows


def test_shared_prefixes_and_scored_positions_give_pefts_losses(shared_prompts):
    paths, rows = shared_prompts
    base = load_base_model(str(paths["base"]), device="cpu")
    evaluator = Evaluator(base, load_adapters([paths["math"], paths["words"]]))
    tokenizer = base.tokenizer
    examples = []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        examples.append(Example(tuple(prompt + completion), len(prompt), False))
    batches = evaluator.batches(examples)
    assert sum(len(b.examples) for b in batches if b.shared >= MIN_SHARED) == 7  # both contexts are shared

    seen: list[int] = []
    layer = evaluator.model.get_base_model().get_output_embeddings()
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.shape[-2]))
    try:
        for row, adapter_dir in ((None, None), ("source_0", paths["math"]), ("source_1", paths["words"])):
            nll, tokens = evaluator.score(row, examples)
            reference = reference_nll(paths["base"], adapter_dir, [(list(e.ids), e.start) for e in examples])
            assert nll / tokens == pytest.approx(reference, abs=TOL)
            assert tokens == sum(len(r) for r in (e.ids[e.start :] for e in examples))
    finally:
        handle.remove()
        evaluator.close()
    scored = sum(e.predicted for e in examples)
    # the output layer saw the scored positions of each row and nothing else (the prefix passes: none)
    assert sum(seen) == 3 * scored
    assert torch.is_inference_mode_enabled() is False


def _all_cuts(count: int, batch_size: int):
    """Every way to cut ``count`` sorted items into contiguous runs of at most ``batch_size``."""
    if count == 0:
        yield []
        return
    for first in range(1, min(batch_size, count) + 1):
        for rest in _all_cuts(count - first, batch_size):
            yield [(0, first)] + [(a + first, b + first) for a, b in rest]


@pytest.mark.parametrize("cost", [0.0, 5.0, 40.0, math.inf])
def test_batches_run_the_fewest_positions_of_every_possible_cut(cost):
    rng = random.Random(int(cost) if cost != math.inf else 99)
    for _ in range(30):
        lengths = sorted((rng.randint(1, 60) for _ in range(rng.randint(1, 8))), reverse=True)
        batch_size = rng.randint(1, 4)

        def price(cut, lengths=lengths):
            positions = sum(lengths[a] * (b - a) for a, b in cut)
            return (len(cut), positions) if math.isinf(cost) else (positions + cost * len(cut), 0)

        chosen = _runs(lengths, batch_size, cost)
        assert [a for a, _ in chosen] == [0] + [b for _, b in chosen[:-1]] and chosen[-1][1] == len(lengths)
        assert all(b - a <= batch_size for a, b in chosen)
        assert price(chosen) == min(price(cut) for cut in _all_cuts(len(lengths), batch_size))


def test_padding_is_cut_on_cpu_and_batches_stay_full_elsewhere():
    examples = [_example([7] * n, 1) for n in (200, 190, 40, 38, 36)]
    on_cpu = plan(examples, batch_size=8, share=False, per_pass=pass_cost(torch.device("cpu")))
    assert [len(b.examples) for b in on_cpu] == [2, 3]  # the long ones apart from the short ones
    full = plan(examples, batch_size=8, share=False, per_pass=pass_cost(torch.device("cuda")))
    assert [len(b.examples) for b in full] == [5]


def _parameters(model) -> dict[str, torch.Tensor]:
    """The base model's own parameters (not the adapters'), by their names before PEFT wrapped a layer."""
    named = model.get_base_model().named_parameters()
    return {name.replace(".base_layer", ""): p.detach().clone() for name, p in named if "lora_" not in name}


def test_rows_run_merged_on_float32_and_leave_the_base_bit_for_bit(shared_prompts):
    """A row's adapters are merged into the base weights while it is scored, then the base comes back exactly."""
    paths, rows = shared_prompts
    base = load_base_model(str(paths["base"]), device="cpu")
    evaluator = Evaluator(base, load_adapters([paths["math"], paths["words"]]))
    examples = [Example(tuple(base.tokenizer(r["prompt"] + r["completion"])["input_ids"]), 3, False) for r in rows]
    before = _parameters(evaluator.model)
    layers = evaluator._tuner_layers()
    try:
        with torch.inference_mode(), evaluator.active("source_0"):
            assert all(layer.merged for layer in layers if "source_0" in layer.lora_A)
        assert not any(layer.merged for layer in layers)
        for name, value in _parameters(evaluator.model).items():
            assert torch.equal(value, before[name]), name

        # both sources at once, at scalings of our own: merged equals PEFT's side-by-side forward
        for layer in layers:
            for name in layer.scaling:
                layer.scaling[name] *= -0.7 if name == "source_1" else 1.3
        with torch.enable_grad(), evaluator.active(["source_0", "source_1"]):  # gradients on: never merged
            assert not any(layer.merged for layer in layers)
            beside = sum(float(evaluator.nll(b).sum()) for b in evaluator.batches(examples))
        merged, _ = evaluator.score(["source_0", "source_1"], examples)
        assert merged == pytest.approx(beside, rel=1e-6)
        for name, value in _parameters(evaluator.model).items():
            assert torch.equal(value, before[name]), name

        # autocast (half-precision matmuls) would round a merged delta away: the adapters stay beside the base
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode(), evaluator.active("source_0"):
            assert not any(layer.merged for layer in layers)
    finally:
        evaluator.close()


def test_a_merge_that_fails_half_way_is_undone_and_the_row_runs_beside_the_base(shared_prompts, monkeypatch):
    paths, rows = shared_prompts
    base = load_base_model(str(paths["base"]), device="cpu")
    evaluator = Evaluator(base, load_adapters([paths["math"]]))
    examples = [Example(tuple(base.tokenizer(r["prompt"] + r["completion"])["input_ids"]), 3, False) for r in rows]
    before = _parameters(evaluator.model)
    layers = evaluator._tuner_layers()

    def half_merge(*args, **kwargs):
        for layer in layers[: len(layers) // 2]:
            layer.merge()
        raise ValueError("this layer cannot be merged")

    monkeypatch.setattr(evaluator.model, "merge_adapter", half_merge)
    try:
        nll, tokens = evaluator.score("source_0", examples)
        reference = reference_nll(paths["base"], paths["math"], [(list(e.ids), e.start) for e in examples])
        assert nll / tokens == pytest.approx(reference, abs=TOL)
        assert not any(layer.merged for layer in layers)
        for name, value in _parameters(evaluator.model).items():
            assert torch.equal(value, before[name]), name
    finally:
        evaluator.close()


def test_an_adapted_embedding_tied_to_the_output_layer_is_never_merged(tmp_path):
    """Merging into a tied embedding would change the output layer too: such rows run beside the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.eval_factory import make_tokenizer

    torch.manual_seed(3)
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=2,
        tie_word_embeddings=True,
    )  # fmt: skip
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    LlamaForCausalLM(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False)
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), lora)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(adapter_dir)

    base = load_base_model(str(base_dir), device="cpu")
    evaluator = Evaluator(base, load_adapters([adapter_dir]))
    examples = [Example(tuple(base.tokenizer(text)["input_ids"]), 2, False) for text in ("a cat sees", "the dog runs")]
    try:
        nll, tokens = evaluator.score("source_0", examples)
        reference = reference_nll(base_dir, adapter_dir, [(list(e.ids), e.start) for e in examples])
        assert nll / tokens == pytest.approx(reference, abs=TOL)
        with torch.inference_mode(), evaluator.active("source_0"):
            assert not any(layer.merged for layer in evaluator._tuner_layers())
    finally:
        evaluator.close()


def test_a_merge_attached_later_that_adapts_new_layers_leaves_the_base_bit_for_bit(shared_prompts, tmp_path):
    """The copy of the base is taken again when a merge adapts layers no source did (here k_proj)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    import hubmerge

    paths, rows = shared_prompts
    torch.manual_seed(11)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    extra = get_peft_model(LlamaForCausalLM.from_pretrained(paths["base"]), lora)
    extra.peft_config["default"].base_model_name_or_path = str(paths["base"])
    extra.save_pretrained(tmp_path / "keys")
    base = load_base_model(str(paths["base"]), device="cpu")
    evaluator = Evaluator(base, load_adapters([paths["math"]]))  # no source adapts k_proj
    examples = [Example(tuple(base.tokenizer(r["prompt"] + r["completion"])["input_ids"]), 3, False) for r in rows]
    before = _parameters(evaluator.model)
    try:
        evaluator.score("source_0", examples)  # the copy of the base is taken here
        evaluator.add_merge("merged", hubmerge.merge([paths["math"], tmp_path / "keys"]))
        nll, tokens = evaluator.score("merged", examples)
        after = _parameters(evaluator.model)
        assert after.keys() == before.keys()
        for name, value in after.items():
            assert torch.equal(value, before[name]), name
        with torch.enable_grad(), evaluator.active("merged"):  # beside the base: PEFT's own forward
            beside = sum(float(evaluator.nll(b).sum()) for b in evaluator.batches(examples))
        assert nll == pytest.approx(beside, rel=1e-6)
    finally:
        evaluator.close()
