"""One forward pass over a batch of examples, with logits only where a token is scored.

A causal LM's output layer (``lm_head``, a vocabulary of ~50k) costs as much
memory as the rest of a forward pass put together when it runs on every
position: float32 logits of a batch of 8 × 512 tokens over 49k entries are
0.8 GB, and cross-entropy makes two more such tensors. Only the positions that
predict a scored token need it (a prompt/completion example scores its
completion only), so a forward pre-hook on the output layer hands it the hidden
states of those positions alone, packed as one sequence. Whatever the model does
to its logits afterwards (soft-capping, scaling) is elementwise, so it applies
unchanged. Cross-entropy then runs in float32 in chunks.

Models whose output layer does not see the ``(batch, length, hidden)`` states
that this expects keep their full logits (checked on every call).

Examples that begin with the same tokens (questions on one table, a shared
instruction, a few-shot preamble) share the forward pass of that prefix: it runs
once, and the rest of each example attends to its cached keys and values
(:func:`plan` groups them; a group's prefix never reaches a scored position, so
every logit that is scored comes from the second pass). The numbers are those of
full forward passes up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import Example

__all__ = ["Batch", "batch_nll", "pass_cost", "plan"]

CHUNK = 1024  # positions per float32 cross-entropy: bounds its temporaries to CHUNK × vocabulary
MIN_SHARED = 16  # a shorter common prefix is not worth a forward pass of its own
CPU_PASS_COST = 32  # on CPU a forward pass's fixed cost is about that of this many positions (SmolLM2-135M, 2 cores)


@dataclass(frozen=True)
class Batch:
    """Examples scored in one forward pass, the first ``shared`` tokens of which are the same in all."""

    examples: tuple[Example, ...]
    shared: int = 0


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pass_cost(device: torch.device) -> float:
    """What one more forward pass costs, in token positions, when :func:`plan` cuts examples into batches.

    On CPU a position costs about the same in any batch shape, so padding is pure waste and a pass
    costs little more than its Python overhead; on an accelerator padding is nearly free and a pass
    is not, so batches stay full.
    """
    return CPU_PASS_COST if device.type == "cpu" else math.inf


def _runs(lengths: Sequence[int], batch_size: int, cost: float) -> list[tuple[int, int]]:
    """Cut ``lengths`` (longest first) into runs of at most ``batch_size``, minimising the positions run.

    A run of k examples pads to its first (longest) one: it runs k × that many positions, and each
    run costs ``cost`` positions more. Dynamic programming over the sorted order; with an infinite
    ``cost``: the fewest runs, then the fewest positions.

    Returns:
        ``(start, end)`` of each run, in order.
    """
    best: list[tuple[float, float]] = [(0.0, 0.0)] + [(math.inf, math.inf)] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(max(0, end - batch_size), end):
            positions = lengths[start] * (end - start)
            step = (1.0, positions) if math.isinf(cost) else (positions + cost, 0.0)
            value = (best[start][0] + step[0], best[start][1] + step[1])
            if value < best[end]:
                best[end], cut[end] = value, start
    runs, end = [], len(lengths)
    while end:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


def _batches(members: list[Example], batch_size: int, cost: float, shared: int = 0) -> list[Batch]:
    members = sorted(members, key=lambda e: len(e.ids), reverse=True)
    runs = _runs([len(e.ids) - shared for e in members], batch_size, cost)
    return [Batch(tuple(members[start:end]), shared) for start, end in runs]


def plan(
    examples: Sequence[Example], batch_size: int, *, share: bool = True, per_pass: float = math.inf
) -> list[Batch]:
    """The batches that score ``examples``: groups with a common prefix, then the rest by length.

    Examples sorted by their tokens put those with the longest common prefixes next to each other
    (the common prefix of a run is the smallest of its neighbours'); a run grows while its saving,
    prefix × (members − 1), does not shrink. The prefix stops before each member's first scored
    position. Within a group, and among the examples in no group, examples sorted by length are cut
    into batches that run the fewest positions, padding included, counting ``per_pass`` positions
    per forward pass (:func:`pass_cost`; infinite: full batches).

    Args:
        examples: the examples.
        batch_size: at most this many examples per batch.
        share: group examples by common prefix (else: by length only).
        per_pass: what a forward pass costs, in positions (a shared prefix's pass and its
            positions are counted for each batch of its group).

    Returns:
        The :class:`Batch` list; every example is in exactly one.
    """
    groups: list[tuple[int, list[Example]]] = []
    for example in sorted(examples, key=lambda e: e.ids) if share else ():
        if groups:
            shared, members = groups[-1]
            last = members[-1]
            common = min(_common(last.ids, example.ids), example.start - 1, last.start - 1)
            if len(members) > 1:
                common = min(common, shared)
            if common >= MIN_SHARED and common * len(members) >= shared * (len(members) - 1):
                groups[-1] = (common, [*members, example])
                continue
        groups.append((0, [example]))
    batches = []
    for shared, members in groups:
        if len(members) > 1:
            batches += _batches(members, batch_size, 2 * per_pass + shared, shared)
    alone = [members[0] for _, members in groups if len(members) == 1] if share else list(examples)
    return batches + _batches(alone, batch_size, per_pass)


def _inputs(batch: Sequence[Example], pad: int, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(e.ids) for e in batch) - skip
    ids = torch.full((len(batch), length), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, example in enumerate(batch):
        ids[row, : len(example.ids) - skip] = torch.tensor(example.ids[skip:])
        mask[row, : len(example.ids) - skip] = 1
    return ids, mask


def _positions(batch: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position, target) of every scored token: position p predicts the token at p + 1."""
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for row, example in enumerate(batch):
        rows += [row] * example.predicted
        cols += range(example.start - 1, len(example.ids) - 1)
        targets += example.ids[example.start :]
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return as_long(rows), as_long(cols), as_long(targets)


class _ScoredOnly:
    """While active, the output layer sees only the hidden states at (rows, cols), as one sequence."""

    def __init__(self, layer: torch.nn.Module | None, shape: tuple[int, int], rows, cols):
        self.layer, self.shape, self.rows, self.cols = layer, shape, rows, cols
        self.handle = None
        self.applied = False

    def _hook(self, module, args):
        hidden = args[0] if args else None
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or tuple(hidden.shape[:2]) != self.shape:
            return None  # not the states this expects: the model keeps its full logits
        self.applied = True
        return (hidden[self.rows, self.cols].unsqueeze(0), *args[1:])

    def __enter__(self):
        if self.layer is not None:
            self.handle = self.layer.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()


def batch_nll(
    model: torch.nn.Module,
    output_layer: torch.nn.Module | None,
    batch: Batch,
    *,
    pad: int,
    device: torch.device,
    cache_argument: str | None = "cache",
) -> torch.Tensor:
    """Per example, Σ NLL (natural log, float64) of its predicted tokens, with the adapters active now.

    Args:
        model: the causal LM (a PEFT model or a plain one) to call.
        output_layer: its output embedding (``get_output_embeddings()``), or ``None`` for full logits.
        batch: the examples (right-padded with ``pad``: no real token attends to a pad), and how many
            leading tokens they share (run once, then attended to from the cache).
        pad: the padding id.
        device: where the model is.
        cache_argument: the name under which the model's forward takes a cache (``cache`` in
            transformers 5.2x, ``past_key_values`` before); ``None``: no prefix is shared.

    Returns:
        A float64 tensor of ``len(batch.examples)`` sums, differentiable when gradients are enabled.
    """
    examples, shared = batch.examples, batch.shared if cache_argument else 0
    ids, mask = _inputs(examples, pad, skip=shared)
    rows, cols, targets = _positions(examples)
    cols = cols - shared
    extra: dict = {}
    if shared:
        prefix = torch.tensor([examples[0].ids[:shared]], dtype=torch.long, device=device)
        nothing = torch.zeros(0, dtype=torch.long, device=device)
        with _ScoredOnly(output_layer, (1, shared), nothing, nothing):
            out = model(input_ids=prefix, use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):  # not a transformers Cache: no sharing
            return batch_nll(model, output_layer, Batch(examples), pad=pad, device=device, cache_argument=None)
        cache.batch_repeat_interleave(len(examples))
        mask = torch.cat([torch.ones((len(examples), shared), dtype=torch.long), mask], dim=1)
        positions = torch.arange(shared, shared + ids.shape[1]).expand(len(examples), -1)
        extra = {cache_argument: cache, "position_ids": positions.to(device), "use_cache": True}
    with _ScoredOnly(output_layer, (ids.shape[0], ids.shape[1]), rows.to(device), cols.to(device)) as scope:
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits
    if scope.applied:
        picked = logits[0]
    else:  # full logits, (batch, length kept, vocabulary): the kept positions are the last ones
        offset = ids.shape[1] - logits.shape[1]
        picked = logits[rows.to(device), (cols - offset).to(device)]
    targets = targets.to(device)
    losses = [
        torch.nn.functional.cross_entropy(picked[i : i + CHUNK].float(), targets[i : i + CHUNK], reduction="none")
        for i in range(0, len(targets), CHUNK)
    ]
    flat = torch.cat(losses).double()
    return torch.zeros(len(examples), dtype=torch.float64, device=flat.device).index_add(0, rows.to(flat.device), flat)
