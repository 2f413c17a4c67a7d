"""LoRA on parameters (PEFT's ``target_parameters``), fused MoE experts included.

PEFT ≥ 0.17 can put LoRA on an ``nn.Parameter`` instead of a module
(``lora.ParamWrapper`` in ``peft/tuners/lora/layer.py``); with transformers 5,
``target_modules="all-linear"`` does so on the fused expert weights of Mixtral,
Qwen3-MoE, DeepSeek-V3 and others, and gpt-oss adapters name them by hand
(``target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]``).

The saved layout, for parameter ``p`` of module ``M`` with rank r and scale s
(``rank_pattern`` / ``alpha_pattern`` are matched against the parameter key
``M.p``, not against ``M``):

* **2-D parameter** (``out × in``, e.g. a router's ``gate.weight``): ``lora_A``
  is ``r × in``, ``lora_B`` ``out × r`` and ΔW = s·B·A, exactly as for a Linear.
* **3-D parameter with E experts** (``E × out × in``, or ``E × in × out`` where
  the module sets ``is_transposed``, as gpt-oss does): one B·A per expert, stored
  in two 2-D tensors whose groupings differ —

  - ``lora_A`` is ``E·r × in`` with its rows **grouped by expert**: rows
    ``e·r … e·r + r − 1`` are expert e's ``A_e``;
  - ``lora_B`` is ``out × r·E`` with its columns **grouped by rank**: column
    ``k·E + e`` is column k of expert e's ``B_e``;
  - ΔW_e = s·B_e·A_e, written transposed into the parameter when it is
    ``is_transposed``. Every adapter of one model shares that orientation, so a
    sum never needs to know it. ``in`` and ``out`` are the factors' own sizes.

  Concatenating the two tensors as they are, as for a Linear, would pair one
  expert's A with other experts' B columns.
* **Keys name the module, not the parameter**: ``M.lora_A.weight``. Several
  parameters of one module nest: the first targeted parameter the module
  registers wraps the module, the next one wraps that wrapper, and so on, so the
  outermost (``M.lora_A.weight``) is the last one registered, the one inside it is
  ``M.base_layer.lora_A.weight``, the next ``M.base_layer.base_layer.lora_A…``.
  Which parameter sits at which depth depends on the model class and on which
  parameters the adapter targets; the file does not say. hubmerge reads it from
  the adapter's ``target_parameters`` (an entry matches the parameter key
  ``M.p`` exactly or as a dotted suffix, as in PEFT; an entry naming ``M``'s path
  is preferred over a bare parameter name) and from the factor shapes (A's rows
  must be a multiple of the rank PEFT gives ``M.p``). Where the tensors cannot
  tell the candidates apart, hubmerge labels them in sorted order, outermost
  first, and accepts that only where the other adapters confirm it: all of them
  adapt the same parameters of ``M`` (the same model nests them the same way), or
  the candidates' shapes differ, so that a wrong label would show.
* PEFT refuses to load two adapters whose ``target_parameters`` differ into one
  model, but their deltas still add up parameter by parameter.

Each expert being a LoRA of its own, hubmerge treats expert e of ``M.p`` as a
module keyed ``M.p[e]`` (a 2-D parameter: ``M.p``): the sum, the other merge
methods and the similarity analysis work on it like on any module, and
:func:`assemble` puts the merged experts back into PEFT's layout. The output
config lists the full parameter keys in ``target_parameters``, so it wraps
exactly those; such adapters load in PEFT ≥ 0.17 (:data:`MIN_PEFT`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .config import AdapterConfig
from .notice import Notice

__all__ = [
    "MIN_PEFT",
    "ParameterLayout",
    "assemble",
    "expert_factors",
    "output_notice",
    "index_parameters",
    "place_parameters",
    "plan_parameters",
    "saved_names",
]

# The first PEFT release with target_parameters (lora.ParamWrapper).
MIN_PEFT = "0.17.0"
_BASE_LAYER = ".base_layer"
# Injective labellings tried per module; a module has a handful of parameters.
_MAX_LABELLINGS = 5040


@dataclass(frozen=True)
class ParameterLayout:
    """What one adapter's file holds for the parameters of one module.

    Attributes:
        container: the module that holds the parameters (``…mlp.experts``).
        labels: the parameter name at each nesting depth (0 = outermost).
        features: ``(in, out, experts)`` at each depth.
        ambiguous: the shapes fit more than one labelling; ``labels`` is the sorted one.
        order: where the model's class is known (:mod:`hubmerge.expert_layouts`), the nesting
            of all the parameters PEFT can adapt there, outermost first.
    """

    container: str
    labels: tuple[str, ...]
    features: tuple[tuple[int, int, int], ...]
    ambiguous: bool
    order: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ParameterModule:
    """One virtual module: a 2-D parameter, or one expert of a 3-D one."""

    key: str
    parameter: str  # PEFT's parameter key M.p
    a_name: str
    b_name: str
    rank: int
    in_features: int
    out_features: int
    experts: int
    expert: int | None
    depth: int


def saved_names(container: str, depth: int, prefix: str) -> tuple[str, str]:
    """The tensor names PEFT saves for the parameter at ``depth`` of ``container``."""
    stem = f"{prefix}{container}{_BASE_LAYER * depth}"
    return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"


def expert_factors(a: torch.Tensor, b: torch.Tensor, experts: int, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ``expert``'s ``(A_e, B_e)`` from PEFT's ``lora_A`` (E·r × in) and ``lora_B`` (out × r·E)."""
    rank = a.shape[0] // experts
    return a[expert * rank : (expert + 1) * rank], b[:, expert::experts]


def assemble(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's ``(lora_A, lora_B)`` from each expert's ``(A_e, B_e)``, all of one rank R.

    Returns:
        ``lora_A`` (E·R × in, rows grouped by expert) and ``lora_B`` (out × R·E,
        columns grouped by rank), so that :func:`expert_factors` gives the parts back.
    """
    a = torch.cat([a for a, _ in parts], dim=0)
    b = torch.stack([b for _, b in parts], dim=2)  # out × R × E: column k·E + e after the reshape
    return a.contiguous(), b.reshape(b.shape[0], -1).contiguous()


def _matches_modules(target_modules: list[str] | str | None, module: str) -> bool:
    # PEFT's rule for target_modules: a regex string must match the whole key; a list entry
    # matches the key or a dotted suffix of it.
    if isinstance(target_modules, str):
        try:
            return re.fullmatch(target_modules, module) is not None
        except re.error:
            return False
    return any(module == t or module.endswith("." + t) for t in target_modules or ())


def _candidates(entries: Sequence[str], container: str) -> tuple[set[str], set[str]]:
    """Parameter names that ``target_parameters`` could select on ``container``: those an entry
    names with the container's path, and bare names, which match a parameter of any module."""
    named: set[str] = set()
    bare: set[str] = set()
    for entry in entries:
        path, dot, name = entry.rpartition(".")
        if not dot:
            bare.add(name)
        elif container == path or container.endswith("." + path):
            named.add(name)
    return named, bare


def _split(module: str) -> tuple[str, int]:
    depth = 0
    while module.endswith(_BASE_LAYER):
        module, depth = module[: -len(_BASE_LAYER)], depth + 1
    return module, depth


def index_parameters(
    config: AdapterConfig,
    halves: Mapping[str, Mapping[str, str]],
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, torch.dtype],
    where: str,
) -> tuple[set[str], dict[str, ParameterModule], dict[str, ParameterLayout], list[str]]:
    """Find the parameter LoRAs among one adapter's factors and label them.

    Args:
        config: the adapter's :class:`~hubmerge.config.AdapterConfig`.
        halves: module key → ``{"lA": name, "lB": name}`` as the tensor names give them.
        shapes, dtypes: of every tensor in the file.
        where: the source and file, for messages.

    Returns:
        The module keys of ``halves`` that are parameter LoRAs (the caller skips them),
        the virtual modules by key, the layout of each container, and the problems found.
    """
    if not config.target_parameters:
        return set(), {}, {}, []
    chains: dict[str, dict[int, str]] = {}
    for module, half in halves.items():
        if not {"lA", "lB"} & set(half):
            continue  # embedding LoRA: PEFT only wraps modules that way
        container, depth = _split(module)
        chains.setdefault(container, {})[depth] = module
    taken: set[str] = set()
    modules: dict[str, ParameterModule] = {}
    layouts: dict[str, ParameterLayout] = {}
    problems: list[str] = []
    for container, by_depth in sorted(chains.items()):
        named, bare = _candidates(config.target_parameters, container)
        nested = max(by_depth) > 0
        if not nested and (_matches_modules(config.target_modules, container) or not (named or bare)):
            continue  # a module LoRA
        taken.update(by_depth.values())
        result = _label(config, container, by_depth, halves, shapes, dtypes, named, bare, where)
        if isinstance(result, str):
            problems.append(result)
            continue
        layout, virtual = result
        layouts[container] = layout
        modules.update((m.key, m) for m in virtual)
    return taken, modules, layouts, problems


def _label(config, container, by_depth, halves, shapes, dtypes, named, bare, where):
    """The labelling of one container's nested parameter LoRAs, or the problem that stops it."""
    depths = len(by_depth)
    if sorted(by_depth) != list(range(depths)):
        return (
            f"{where}: the LoRA factors of module {container!r}'s parameters skip a nesting depth "
            f"(found depths {sorted(by_depth)}); the file is incomplete"
        )
    features = []
    for depth in range(depths):
        half = halves[by_depth[depth]]
        if "lA" not in half or "lB" not in half:
            missing = "lora_B" if "lB" not in half else "lora_A"
            return f"{where}: the parameter LoRA at {by_depth[depth]!r} has no {missing} (the file is incomplete)"
        a_shape, b_shape = shapes[half["lA"]], shapes[half["lB"]]
        for name in (half["lA"], half["lB"]):
            if not dtypes[name].is_floating_point or len(shapes[name]) != 2:
                return (
                    f"{where} key {name!r} has dtype {dtypes[name]} and shape {list(shapes[name])}; "
                    "PEFT stores parameter LoRA factors as 2-D float tensors"
                )
        if a_shape[0] != b_shape[1]:
            return (
                f"{where} key {half['lB']!r} has shape {list(b_shape)} but its lora_A has {a_shape[0]} rows: "
                "B's second dimension must equal A's first"
            )
        features.append((a_shape[1], b_shape[0], a_shape[0]))  # in, out, E·r

    pool = sorted(named) if len(named) >= depths else sorted(named | bare)
    fits = []
    for labels in itertools.islice(itertools.permutations(pool, depths), _MAX_LABELLINGS):
        if len(named) <= depths and not named <= set(labels):
            continue  # an entry that names this module's path must be among its parameters
        ranks = [config.rank_for(f"{container}.{p}") for p in labels]
        if all(rows % r == 0 for (_, _, rows), r in zip(features, ranks)):
            fits.append(labels)
    entries = ", ".join(config.target_parameters)
    if not fits:
        return (
            f"{where}: module {container!r} holds LoRA factors of {depths} parameter(s) (rows "
            f"{[rows for *_, rows in features]}), but no parameter that target_parameters [{entries}] selects "
            "there has a rank (r / rank_pattern) that divides them: the config contradicts the tensors"
        )
    scales = {
        tuple((config.rank_for(f"{container}.{p}"), config.alpha_for(f"{container}.{p}")) for p in labels)
        for labels in fits
    }
    if len({frozenset(labels) for labels in fits}) > 1 or len(scales) > 1:
        options = "; ".join(", ".join(labels) for labels in fits[:4])
        return (
            f"{where}: cannot tell which parameters of module {container!r} its {depths} LoRA(s) adapt: "
            f"target_parameters [{entries}] and the shapes fit several ({options}), with different "
            "parameters or scales, and PEFT's file does not name them"
        )
    labels = fits[0]
    virtual = []
    with_experts = []
    for depth, (p, (d_in, d_out, rows)) in enumerate(zip(labels, features)):
        rank = config.rank_for(f"{container}.{p}")
        experts = rows // rank
        with_experts.append((d_in, d_out, experts))
        a_name, b_name = halves[container + _BASE_LAYER * depth]["lA"], halves[container + _BASE_LAYER * depth]["lB"]
        key = f"{container}.{p}"
        for expert in range(experts) if experts > 1 else (None,):
            virtual.append(
                ParameterModule(
                    key=key if expert is None else f"{key}[{expert}]",
                    parameter=key,
                    a_name=a_name,
                    b_name=b_name,
                    rank=rank,
                    in_features=d_in,
                    out_features=d_out,
                    experts=experts,
                    expert=expert,
                    depth=depth,
                )
            )
    layout = ParameterLayout(container, tuple(labels), tuple(with_experts), ambiguous=len(fits) > 1)
    return layout, virtual


def plan_parameters(
    sources: Sequence[str],
    layouts: Sequence[Mapping[str, ParameterLayout]],
    modules: Sequence[Sequence[str]] = (),
) -> tuple[dict[str, int], list[str]]:
    """Where each adapted parameter goes in the merged file, and what stops the merge.

    Args:
        sources: each adapter's source, for messages.
        layouts: each adapter's :class:`ParameterLayout` per container.
        modules: each adapter's module LoRA keys (a module cannot carry both kinds).

    The nesting follows an adapter that adapts every parameter the others adapt on a module,
    or, where the model is known (a :attr:`ParameterLayout.order`), the model's own order.

    Returns:
        ``({parameter key: nesting depth in the output}, problems)``.
    """
    owners: dict[str, list[int]] = {}
    for index, per_container in enumerate(layouts):
        for container in per_container:
            owners.setdefault(container, []).append(index)
    depth_of: dict[str, int] = {}
    problems: list[str] = []
    for container, present in sorted(owners.items()):
        found = {i: layouts[i][container] for i in present}
        as_module = [sources[i] for i, keys in enumerate(modules) if container in keys]
        if as_module:
            problems.append(
                f"module {container!r} has LoRA on its parameters in {', '.join(sources[i] for i in present)} "
                f"and LoRA on the whole module in {', '.join(as_module)}; PEFT cannot load both on one module"
            )
        union = set().union(*(set(layout.labels) for layout in found.values()))
        seen: dict[str, tuple[int, tuple[int, int, int]]] = {}
        for i, layout in found.items():
            for p, feature in zip(layout.labels, layout.features):
                if p in seen and seen[p][1] != feature:
                    j, other = seen[p]
                    problems.append(
                        f"{sources[i]}: parameter {container}.{p} has {_describe(feature)} but "
                        f"{_describe(other)} in {sources[j]}; the adapters were trained on different model shapes"
                    )
                seen.setdefault(p, (i, feature))
        full = [i for i, layout in found.items() if set(layout.labels) == union]
        if len(full) < len(found):
            # Parameters are matched across adapters by name: a guessed label must be checkable by shape.
            for i, layout in found.items():
                if layout.ambiguous and len(set(layout.features)) < len(layout.features):
                    problems.append(
                        f"{sources[i]}: cannot tell which of module {container!r}'s parameters "
                        f"({', '.join(sorted(layout.labels))}) each of its LoRAs adapts: they have the same shapes "
                        "and ranks, PEFT's file does not name them, and the other adapters target other "
                        "parameters of this module"
                    )
        known = {layout.order for layout in found.values() if layout.order is not None and union <= set(layout.order)}
        if len(known) == 1:  # the model's own nesting: every file's labels must agree with it
            order = tuple(p for p in known.pop() if p in union)
            for i, layout in found.items():
                if layout.labels != tuple(p for p in order if p in layout.labels):
                    problems.append(
                        f"{sources[i]}: module {container!r} nests LoRAs of {', '.join(layout.labels)} from the "
                        f"outside in, but the model nests {', '.join(order)}; the file does not fit that model"
                    )
            depth_of.update((f"{container}.{p}", depth) for depth, p in enumerate(order))
            continue
        if not full:
            listing = "; ".join(f"{sources[i]}: {', '.join(found[i].labels)}" for i in found)
            problems.append(
                f"module {container!r}: no adapter adapts all of its parameters that the others adapt ({listing}); "
                "PEFT nests the LoRAs of one module's parameters in the order the model registers them, which "
                "the adapter files do not record, so the merged file cannot be laid out"
            )
            continue
        orders = {found[i].labels for i in full}
        if len(orders) > 1:
            listing = "; ".join(f"{sources[i]}: {', '.join(found[i].labels)}" for i in full)
            problems.append(
                f"module {container!r}: adapters targeting the same parameters label its nested LoRAs "
                f"differently from the outside in ({listing}); the same model nests them one way, so at least one "
                "labelling is a guess from equal shapes that the others contradict"
            )
            continue
        for depth, p in enumerate(found[full[0]].labels):
            depth_of[f"{container}.{p}"] = depth
    return depth_of, problems


def _describe(feature: tuple[int, int, int]) -> str:
    d_in, d_out, experts = feature
    return f"{experts} expert(s) of {d_in}→{d_out} features" if experts > 1 else f"{d_in}→{d_out} features"


def place_parameters(
    parts: Mapping[str, Mapping[int | None, tuple[torch.Tensor, torch.Tensor]]],
    depth_of: Mapping[str, int],
    rank: int,
    prefix: str,
    experts: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The merged parameter LoRAs as PEFT saves them.

    Args:
        parts: parameter key → expert (``None`` for a 2-D parameter) → merged ``(A_e, B_e)``.
        depth_of: parameter key → nesting depth in the output (from :func:`plan_parameters`).
        rank: the stored rank; every expert is zero-padded to it (B·A is unchanged).
        prefix: PEFT's key prefix.
        experts: parameter key → its number of experts, where an input may adapt only some
            (per-expert LoRAs rewritten by :mod:`hubmerge.expert_layouts`): the others get zeros.

    Returns:
        Tensor name → tensor.
    """
    from .methods.exact import pad_rank

    tensors: dict[str, torch.Tensor] = {}
    for parameter, by_expert in parts.items():
        by_expert = dict(by_expert)
        a_any, b_any = next(iter(by_expert.values()))
        for e in range((experts or {}).get(parameter, 0)):
            by_expert.setdefault(e, (a_any.new_zeros(0, a_any.shape[1]), b_any.new_zeros(b_any.shape[0], 0)))
        padded = [pad_rank(*by_expert[e], rank) for e in sorted(by_expert, key=lambda e: -1 if e is None else e)]
        a, b = assemble(padded) if len(padded) > 1 else padded[0]
        a_name, b_name = saved_names(parameter.rsplit(".", 1)[0], depth_of[parameter], prefix)
        tensors[a_name], tensors[b_name] = a, b
    return tensors


def output_notice(parameters: Sequence[str]) -> list[Notice]:
    """The note that an output with parameter LoRAs needs a PEFT release that reads ``target_parameters``."""
    if not parameters:
        return []
    return [
        Notice(
            "needs_recent_peft",
            f"the merged adapter puts LoRA on {len(parameters)} parameter(s) (target_parameters, e.g. "
            f"{parameters[0]}); PEFT loads such adapters from release {MIN_PEFT} on, and fused MoE experts of "
            "Mixtral, Qwen3-MoE or DeepSeek-V3 also need transformers 5",
        )
    ]
