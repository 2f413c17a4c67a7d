"""Scoring: logits only where a token is scored, and common prefixes run once, with PEFT's numbers.

The reference is PEFT's own forward, one example at a time with full logits
(``tests/eval_factory.reference_nll``); the tiny model's character tokenizer
makes long common prefixes easy to write.
"""

from __future__ import annotations

import random

import pytest
import torch

from hubmerge.evaluation.data import Example
from hubmerge.evaluation.model import Evaluator, load_base_model
from hubmerge.evaluation.scoring import MIN_SHARED, plan
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
