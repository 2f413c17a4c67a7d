"""MoE experts under two checkpoint layouts: one Linear per expert, or fused parameters.

transformers 4 held every expert of Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3, OLMoE … as
Linears (``block_sparse_moe.experts.e.w1`` / ``w3`` / ``w2`` in Mixtral,
``mlp.experts.e.gate_proj`` / ``up_proj`` / ``down_proj`` in the Qwen2-MoE family) and
the router as a Linear (``block_sparse_moe.gate``, ``mlp.gate``). transformers 5 fuses
them (``conversion_mapping.py``: ``MergeModulelist(dim=0)`` stacks the experts,
``Concatenate(dim=1)`` puts the gate projection before the up projection):

* ``…mlp.experts.gate_up_proj`` (E × 2I × H): expert e's gate projection is rows
  ``0 … I−1`` of ``gate_up_proj[e]``, its up projection rows ``I … 2I−1``
  (``MixtralExperts.forward``: ``gate, up = linear(x, gate_up_proj[e]).chunk(2)``);
* ``…mlp.experts.down_proj`` (E × H × I): expert e's down projection;
* the router ``…mlp.gate`` is a module whose ``weight`` (E × H) is a parameter.

PEFT ≥ 0.17 adapts the fused ones through ``target_parameters`` (:mod:`hubmerge.experts`).
A per-expert LoRA maps onto them exactly, which is how PEFT itself converts an old
adapter at load (``peft/utils/transformers_weight_conversion.py``, ``PeftConcatenate``):
with ``ΔW_gate = s_g·B_g·A_g`` and ``ΔW_up = s_u·B_u·A_u`` on expert e,

    ΔW_gate_up[e] = [ΔW_gate; ΔW_up] = [[s_g·B_g, 0], [0, s_u·B_u]] · [A_g; A_u]

a LoRA of rank r_g + r_u (a missing half is zero rows of B); ``w2`` / ``down_proj`` and the
router are the same matrix under a new name. :data:`EXPERT_FUSIONS` holds each family's
names as data. An adapter's per-expert LoRAs are rewritten this way only when another
adapter of the merge is in the fused layout (a parameter LoRA on the family's fused
experts or router): adapters all in the per-expert layout are merged as they are (that
output loads in transformers 4, and PEFT converts it at load under transformers 5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from .adapter import LoraAdapter, ModuleFactors
from .errors import Problem
from .experts import ParameterLayout
from .notice import Notice

__all__ = [
    "EXPERT_FUSIONS",
    "ExpertFusion",
    "FusedModule",
    "Fusion",
    "fuse_experts",
    "fused_factors",
    "unmatched_layouts",
    "with_model_order",
]


@dataclass(frozen=True)
class ExpertFusion:
    """One family's move from per-expert Linears to fused expert parameters.

    Attributes:
        name: the family, as transformers' conversion mapping calls it.
        model_types: the model types transformers converts this way.
        expert: regex of a per-expert module key, with groups ``prefix``, ``expert``, ``proj``.
        container: the fused experts' module key, as a replacement of ``expert``'s match.
        parts: ``proj`` → (fused parameter, slot): the slot-th equal block of the parameter's rows.
        slots: fused parameter → how many projections it stacks.
        registered: the fused parameters in the order the model registers them (PEFT nests
            the LoRAs of one module's parameters in that order, the first innermost).
        router: (regex, replacement): the per-expert layout's router Linear → the fused
            layout's router parameter key.
        fused: regexes of parameter-LoRA containers that only the fused layout has.
        origin: where the names come from.
    """

    name: str
    model_types: tuple[str, ...]
    expert: str
    container: str
    parts: dict[str, tuple[str, int]]
    slots: dict[str, int]
    registered: tuple[str, ...]
    router: tuple[str, str]
    fused: tuple[str, ...]
    origin: str


_ORIGIN = (
    "transformers 5.x conversion_mapping.py ('{0}': MergeModulelist(dim=0), Concatenate(dim=1)); "
    "PEFT 0.21 utils/transformers_weight_conversion.py (_MOE_TARGET_MODULE_MAPPING['{0}'])"
)
EXPERT_FUSIONS: tuple[ExpertFusion, ...] = (
    ExpertFusion(
        name="mixtral",
        model_types=("mixtral", "minimax", "minimax_m2"),
        expert=r"^(?P<prefix>.+)\.block_sparse_moe\.experts\.(?P<expert>\d+)\.(?P<proj>w1|w2|w3)$",
        container=r"\g<prefix>.mlp.experts",
        parts={"w1": ("gate_up_proj", 0), "w3": ("gate_up_proj", 1), "w2": ("down_proj", 0)},
        slots={"gate_up_proj": 2, "down_proj": 1},
        registered=("gate_up_proj", "down_proj"),
        router=(r"^(?P<prefix>.+)\.block_sparse_moe\.gate$", r"\g<prefix>.mlp.gate.weight"),
        fused=(r"\.mlp\.experts$", r"\.mlp\.gate$"),
        origin=_ORIGIN.format("mixtral"),
    ),
    ExpertFusion(
        name="qwen2_moe",
        model_types=(
            "qwen2_moe", "qwen3_moe", "qwen3_next", "deepseek_v2", "deepseek_v3", "olmoe", "flex_olmo", "glm4_moe",
            "glm4v_moe", "dots1", "ernie4_5_moe", "hunyuan_v1_moe", "exaone_moe",
        ),
        expert=r"^(?P<prefix>.+)\.mlp\.experts\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)$",
        container=r"\g<prefix>.mlp.experts",
        parts={"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1), "down_proj": ("down_proj", 0)},
        slots={"gate_up_proj": 2, "down_proj": 1},
        registered=("gate_up_proj", "down_proj"),
        router=(r"^(?P<prefix>.+)\.mlp\.gate$", r"\g<prefix>.mlp.gate.weight"),
        fused=(r"\.mlp\.experts$", r"\.mlp\.gate$"),
        origin=_ORIGIN.format("qwen2_moe"),
    ),
)  # fmt: skip


@dataclass(frozen=True)
class FusedModule:
    """One module of the fused layout built from an adapter's per-expert LoRAs.

    Attributes:
        spec: the module as the merge sees it (its scale is folded into B: scale 1).
        parts: ``(own module key, first output row, first rank column)`` of each LoRA it stacks.
    """

    spec: ModuleFactors
    parts: tuple[tuple[str, int, int], ...]


@dataclass
class Fusion:
    """What :func:`fuse_experts` decided, per adapter (same order as the adapters)."""

    modules: list[dict[str, FusedModule]]
    consumed: list[set[str]]
    layouts: list[dict[str, ParameterLayout]]
    problems: list[str] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


def fused_factors(adapter: LoraAdapter, module: FusedModule) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of ``module`` with each part's scale folded into its block of B (float32 or float64)."""
    pieces = [(adapter.factors(own), adapter.scale(own), row, col) for own, row, col in module.parts]
    work = torch.float64 if any(a.dtype == torch.float64 for (a, _), *_ in pieces) else torch.float32
    spec = module.spec
    a_out = torch.zeros(spec.rank, spec.in_features, dtype=work)
    b_out = torch.zeros(spec.out_features, spec.rank, dtype=work)
    for (a, b), scale, row, col in pieces:
        a_out[col : col + a.shape[0]] = a.to(work)
        b_out[row : row + b.shape[0], col : col + b.shape[1]] = b.to(work) * scale
    return a_out, b_out


def with_model_order(layouts: dict[str, ParameterLayout], model_type: str | None) -> dict[str, ParameterLayout]:
    """``layouts`` with the model's nesting of its fused experts' LoRAs, where the Hub told the base's
    ``model_type`` and a family lists it: the files then need not show it (adapters may each target
    a different parameter of one module)."""
    families = [f for f in EXPERT_FUSIONS if model_type in f.model_types] if model_type else []
    out = dict(layouts)
    for container, layout in layouts.items():
        for family in families:
            fits = re.search(family.fused[0], container) and set(layout.labels) <= set(family.registered)
            if fits and layout.order is None:
                out[container] = replace(layout, order=tuple(reversed(family.registered)))
    return out


def _families(model_type: str | None) -> tuple[ExpertFusion, ...]:
    if model_type is None:
        return EXPERT_FUSIONS
    return tuple(f for f in EXPERT_FUSIONS if model_type in f.model_types)


def fuse_experts(
    adapters: Sequence[LoraAdapter], *, model_type: str | None = None, names: Sequence[str] | None = None
) -> Fusion:
    """Rewrite per-expert LoRAs into the fused layout where another adapter is in it.

    Args:
        adapters: the merge's adapters.
        model_type: the base model's ``model_type`` where the Hub told it (restricts the families).
        names: how the notices name each adapter (the merge's display names); default its source.

    Returns:
        The :class:`Fusion`: per adapter the fused modules by key, the own module keys they
        replace, their parameter layouts; the problems that stop the merge and the notices.
    """
    count = len(adapters)
    fusion = Fusion([{} for _ in adapters], [set() for _ in adapters], [{} for _ in adapters])
    for family in _families(model_type):
        fused_in = [
            i for i, a in enumerate(adapters) if any(re.search(m, c) for c in a.parameter_layouts for m in family.fused)
        ]
        if not fused_in:
            continue
        # A router another adapter adapts as a module stays a module (a model whose router is still a Linear).
        linear = {k for i in fused_in for k, s in adapters[i].modules.items() if s.parameter is None}
        per_adapter = [_matches(a, family, linear) for a in adapters]
        holders = [i for i in range(count) if per_adapter[i][0] or per_adapter[i][1]]
        if not holders:
            continue
        experts, where = _expert_counts(adapters, family, fused_in, per_adapter)
        if len(experts) != 1:
            listing = "; ".join(f"{e} in {', '.join(sorted(w))}" for e, w in sorted(where.items()))
            fusion.problems.append(
                f"{adapters[holders[0]].source} adapts MoE experts one Linear per expert ({family.name} layout of "
                "transformers before 5) and another adapter the fused expert parameters, but "
                + (
                    f"the adapters disagree on the number of experts ({listing}): they were trained on different models"
                    if experts
                    else "no adapter shows how many experts a layer has (the fused parameters stack all of them), "
                    "so the per-expert LoRAs cannot be laid out in the fused layout"
                )
            )
            continue
        total = experts.pop()
        for i in holders:
            if i in fused_in:
                fusion.problems.append(
                    f"{adapters[i].source} holds LoRAs of MoE experts in both layouts: one Linear per expert "
                    f"({next(iter(per_adapter[i][0] or per_adapter[i][1]))!r}) and fused parameters; such a file "
                    "matches no single model"
                )
                continue
            _fuse_one(adapters[i], i, family, total, per_adapter[i], fusion, names[i] if names else adapters[i].source)
    return fusion


def _matches(
    adapter: LoraAdapter, family: ExpertFusion, linear: set[str]
) -> tuple[dict[str, re.Match[str]], dict[str, str]]:
    experts: dict[str, re.Match[str]] = {}
    routers: dict[str, str] = {}
    for key, spec in adapter.modules.items():
        if spec.parameter is not None or spec.kind != "linear":
            continue
        if (match := re.match(family.expert, key)) is not None:
            experts[key] = match
            continue
        renamed, hits = re.subn(family.router[0], family.router[1], key)
        if hits and renamed.rsplit(".", 1)[0] not in linear:
            routers[key] = renamed
    return experts, routers


def _expert_counts(adapters, family: ExpertFusion, fused_in, per_adapter) -> tuple[set[int], dict[int, set[str]]]:
    """How many experts a layer has, as the fused LoRAs and every router LoRA show it."""
    where: dict[int, set[str]] = {}
    for i in fused_in:
        for container, layout in adapters[i].parameter_layouts.items():
            if re.search(family.fused[0], container):
                for _, _, experts in layout.features:
                    if experts > 1:
                        where.setdefault(experts, set()).add(adapters[i].source)
            elif re.search(family.fused[1], container):
                for _, out, _ in layout.features:
                    where.setdefault(out, set()).add(adapters[i].source)
    for i, (_, routers) in enumerate(per_adapter):
        for key in routers:
            where.setdefault(adapters[i].modules[key].out_features, set()).add(adapters[i].source)
    return set(where), where


def _fuse_one(
    adapter: LoraAdapter, index: int, family: ExpertFusion, total: int, found, fusion: Fusion, label: str
) -> None:
    experts, routers = found
    groups: dict[tuple[str, str, int], list[tuple[int, str]]] = {}
    for key, match in experts.items():
        parameter, slot = family.parts[match["proj"]]
        expert = int(match["expert"])
        if expert >= total:
            fusion.problems.append(
                f"{adapter.source}: module {key!r} is expert {expert}, but the fused layout of the other adapters has "
                f"{total} experts per layer: the adapters were trained on different models"
            )
            return
        groups.setdefault((match.expand(family.container), parameter, expert), []).append((slot, key))
    modules: dict[str, FusedModule] = {}
    adapted: dict[str, dict[str, tuple[int, int, int]]] = {}  # container → parameter → features
    for (container, parameter, expert), members in sorted(groups.items()):
        members.sort()
        specs = [adapter.modules[key] for _, key in members]
        shapes = {(s.in_features, s.out_features) for s in specs}
        if len(shapes) > 1:
            fusion.problems.append(
                f"{adapter.source}: the projections {', '.join(k for _, k in members)} that the fused layout stacks "
                f"into {container}.{parameter} have different shapes ({sorted(shapes)}); they cannot be stacked"
            )
            return
        d_in, part_out = shapes.pop()
        parts, col = [], 0
        for (slot, key), spec in zip(members, specs):
            parts.append((key, slot * part_out, col))
            col += spec.rank
        out = part_out * family.slots[parameter]
        spec = ModuleFactors(
            key=f"{container}.{parameter}[{expert}]", a_name=specs[0].a_name, b_name=specs[0].b_name, rank=col,
            in_features=d_in, out_features=out, kind="linear", parameter=f"{container}.{parameter}",
            experts=total, expert=expert,
        )  # fmt: skip
        modules[spec.key] = FusedModule(spec, tuple(parts))
        adapted.setdefault(container, {})[parameter] = (d_in, out, total)
    layouts: dict[str, ParameterLayout] = {}
    order = tuple(reversed(family.registered))  # outermost first
    for container, parameters in adapted.items():
        labels = tuple(p for p in order if p in parameters)
        layouts[container] = ParameterLayout(
            container, labels, tuple(parameters[p] for p in labels), ambiguous=False, order=order
        )
    for key, parameter in routers.items():
        old = adapter.modules[key]
        spec = ModuleFactors(
            key=parameter, a_name=old.a_name, b_name=old.b_name, rank=old.rank, in_features=old.in_features,
            out_features=old.out_features, kind="linear", parameter=parameter,
        )  # fmt: skip
        modules[parameter] = FusedModule(spec, ((key, 0, 0),))
        container = parameter.rsplit(".", 1)[0]
        layouts[container] = ParameterLayout(
            container, ("weight",), ((old.in_features, old.out_features, 1),), ambiguous=False, order=("weight",)
        )
    fusion.modules[index].update(modules)
    fusion.consumed[index].update(experts, routers)
    fusion.layouts[index].update(layouts)
    example = next(iter(experts or routers))
    fusion.notices.append(
        Notice(
            "experts_fused",
            f"{label} adapts MoE experts one Linear per expert ({family.name} layout of transformers before "
            f"5, e.g. {example!r}) and another adapter the fused expert parameters: its LoRAs are rewritten exactly "
            "into the fused layout (gate and up projections stacked as one LoRA of their summed rank), as PEFT "
            "converts them at load",
        )
    )


# transformers before 5 held MoE experts as one Linear each (…experts.3.w1); from 5 on, many models hold them
# fused, as 3-D parameters that PEFT adapts through target_parameters (…experts.gate_up_proj).
_PER_EXPERT = re.compile(r"\.experts\.\d+\.")


def unmatched_layouts(sources: Sequence[str], modules: Sequence[Mapping[str, ModuleFactors]]) -> Problem | None:
    """The refusal of per-expert Linear LoRAs next to fused expert parameters that :func:`fuse_experts`
    left as they are (a family not in :data:`EXPERT_FUSIONS`), or ``None``.

    Args:
        sources: each adapter's source.
        modules: each adapter's modules under the merge's keys (after :func:`fuse_experts`).

    Writing both key sets would leave one of them matching nothing in the model PEFT loads it on.
    """
    per_expert: dict[int, str] = {}
    fused: dict[int, str] = {}
    for i, view in enumerate(modules):
        for key, spec in view.items():
            if spec.expert is not None:
                fused.setdefault(i, key)
            elif _PER_EXPERT.search(key):
                per_expert.setdefault(i, key)
    if not (per_expert and fused and set(per_expert) != set(fused)):
        return None
    first, other = min(per_expert), min(fused)
    return Problem(
        f"{sources[first]} adapts MoE experts one Linear per expert ({per_expert[first]!r}, transformers' layout "
        f"before 5) and {sources[other]} the fused expert parameters ({fused[other]!r}), in a model family whose "
        "fused layout hubmerge does not know: the two layouts of the experts cannot be matched module by module, "
        "so they are not merged",
        code="expert_layouts_differ",
        source=sources[first],
        module=per_expert[first],
    )
