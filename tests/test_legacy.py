"""PEFT 0.2's MergedLinear converted to a plain B·A (``hubmerge.legacy``); real 0.2 fixtures are in
``tests/test_old_peft.py``."""

from __future__ import annotations

import pytest
import torch

from hubmerge.legacy import expand_lora_b, merged_linear_problem


def test_worked_example():
    """Two enabled parts of three, two rows each, rank 1: B's blocks land on rows 0-1 and 4-5."""
    b = torch.tensor([[[1.0]], [[2.0]], [[3.0]], [[4.0]]])  # (S·out_p, r, 1) = (4, 1, 1)
    assert expand_lora_b(b, [True, False, True]).tolist() == [[1, 0], [2, 0], [0, 0], [0, 0], [0, 3], [0, 4]]


@pytest.mark.parametrize("enable_lora", [[True, False, True], [False, True, True], [True, True]])
@pytest.mark.parametrize("r", [1, 3])
def test_equals_peft_02_forward(enable_lora, r):
    """PEFT 0.2's layer: lora_A, a kernel-1 Conv1d with 2 groups, then zero_pad into the enabled parts."""
    torch.manual_seed(r)
    d_in, out_p, parts = 5, 4, sum(enable_lora)
    a, b = torch.randn(parts * r, d_in), torch.randn(parts * out_p, parts * r // 2, 1)
    x = torch.randn(7, d_in)
    after_b = torch.nn.functional.conv1d((x @ a.T).T.unsqueeze(0), b, groups=2).squeeze(0).T  # (7, S·out_p)
    want = torch.zeros(7, out_p * len(enable_lora))
    want[:, torch.tensor(enable_lora).repeat_interleave(out_p)] = after_b
    assert merged_linear_problem(enable_lora, r, a.shape, b.shape) is None
    assert torch.allclose(x @ (expand_lora_b(b, enable_lora) @ a).T, want, atol=1e-5)


def test_problems_name_enable_lora_first():
    assert merged_linear_problem([True, True, True], 2, (6, 5), (12, 3, 1)).startswith(
        "enable_lora=[True, True, True] enables 3 parts but lora_B is convolved in 2 groups"
    )
    assert "should have 4 rows, not 6" in merged_linear_problem([True, False, True], 2, (6, 5), (8, 3, 1))
    assert "enables no part" in merged_linear_problem([False, False], 2, (4, 5), (8, 2, 1))
