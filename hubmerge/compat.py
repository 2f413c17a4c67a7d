"""Can these adapters be summed exactly? Collect every reason why not, raise once.

:func:`check_compatibility` looks at configs, tensor shapes and tensor values
before anything is merged or written. Each problem names the source, the
file or module key, and what differs, so one run tells the user everything
to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .adapter import LoraAdapter, ModuleFactors
from .errors import IncompatibleAdaptersError, Problem
from .expert_layouts import FusedModule, fuse_experts, fused_factors, unmatched_layouts, with_model_order
from .experts import plan_parameters
from .layouts import layout_keymaps
from .notice import Notice

__all__ = ["Compatibility", "check_compatibility", "nonfinite_factors", "normalize_base_model"]

# The base-model check was switched off (allow_base_mismatch): said in words every front end shares.
_MISMATCH_ALLOWED = " (merged anyway: the base-model check was switched off)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


@dataclass(frozen=True)
class Compatibility:
    """What the check learned about a set of adapters that can be merged.

    Attributes:
        base_model: the base model's name as the first adapter spells it (or ``None``).
        revision: the base model revision the adapters agree on (or ``None``).
        coverage: module key → indices of the adapters that adapt it (sorted by key).
        saved_modules: module key → index of the adapter whose full copy is carried over.
        base_layers: module key → index of the adapter whose saved base embedding is carried over.
        parameter_depths: parameter key → its nesting depth in the merged file (``target_parameters``).
        warnings: things the user should know that do not stop the merge.
        own_keys: per adapter, module key in the merge's layout → the adapter's own key,
            where they differ (an adapter saved against an older checkpoint layout).
        fused: per adapter, the modules built from its per-expert LoRAs in the fused
            experts layout (:mod:`hubmerge.expert_layouts`), by own key.
        parameter_experts: parameter key → its number of experts (3-D parameters).
    """

    base_model: str | None
    revision: str | None
    coverage: dict[str, list[int]]
    saved_modules: dict[str, int] = field(default_factory=dict)
    base_layers: dict[str, int] = field(default_factory=dict)
    warnings: list[Notice] = field(default_factory=list)
    parameter_depths: dict[str, int] = field(default_factory=dict)
    own_keys: list[dict[str, str]] = field(default_factory=list)
    fused: list[dict[str, FusedModule]] = field(default_factory=list)
    parameter_experts: dict[str, int] = field(default_factory=dict)

    def own_key(self, index: int, key: str) -> str:
        """The key adapter ``index`` itself uses for the merge's module ``key``."""
        return self.own_keys[index].get(key, key) if index < len(self.own_keys) else key

    def _fused(self, index: int, key: str) -> FusedModule | None:
        return self.fused[index].get(self.own_key(index, key)) if index < len(self.fused) else None

    def spec(self, adapter: LoraAdapter, index: int, key: str) -> ModuleFactors:
        """What adapter ``index`` (``adapter``) holds for the merge's module ``key``."""
        fused = self._fused(index, key)
        return fused.spec if fused is not None else adapter.modules[self.own_key(index, key)]

    def factors(self, adapter: LoraAdapter, index: int, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` of the merge's module ``key`` in adapter ``index``, to be scaled by :meth:`scale`."""
        fused = self._fused(index, key)
        return fused_factors(adapter, fused) if fused is not None else adapter.factors(self.own_key(index, key))

    def scale(self, adapter: LoraAdapter, index: int, key: str) -> float:
        """PEFT's scaling of that module (1 for a fused module: its parts' scales are in its B)."""
        return 1.0 if self._fused(index, key) is not None else adapter.scale(self.own_key(index, key))

    def nonfinite(self, adapter: LoraAdapter, index: int, key: str) -> list[str]:
        """The problems (file and key) of that module's factors that hold NaN/Inf."""
        fused = self._fused(index, key)
        owns = [own for own, *_ in fused.parts] if fused is not None else [self.own_key(index, key)]
        return [text for own in owns for text in nonfinite_factors(adapter, own)]


def normalize_base_model(name: str) -> str:
    """Normalise a ``base_model_name_or_path`` for comparison.

    Hub ids are case-insensitive and a trailing slash means nothing; local
    paths keep their case but are normalised (``a/./b/`` is ``a/b``).
    """
    name = name.strip().rstrip("/")
    if _HUB_ID.match(name) and not name.startswith("."):
        return name.lower()
    return os.path.normpath(os.path.expanduser(name))


def check_compatibility(
    adapters: Sequence[LoraAdapter],
    *,
    allow_base_mismatch: bool = False,
    check_values: bool = True,
    scan_factors: bool = True,
    canonical: Mapping[str, str] | None = None,
    model_types: Mapping[str, str] | None = None,
    names: Sequence[str] | None = None,
) -> Compatibility:
    """Check that ``adapters`` can be summed exactly.

    Args:
        adapters: the loaded adapters, in merge order.
        allow_base_mismatch: turn a base-model mismatch into a warning.
        check_values: also scan tensors for NaN/Inf and compare saved embeddings.
        scan_factors: include the LoRA factors in that scan (reads all tensor data
            once); :func:`hubmerge.merge` turns it off because its single pass over
            the factors detects NaN/Inf itself, from the Gram diagonals.
        canonical: base model name → its canonical Hub id, where the Hub was
            asked (so ``gpt2`` and ``openai-community/gpt2`` compare equal).
        model_types: base model name → its ``model_type``, where the Hub told it; it
            decides which checkpoint layout renames apply (:mod:`hubmerge.layouts`).
        names: how the warnings name each adapter (the merge's display names, which the report and card
            use; a local source's path never reaches them); default its source. Errors name the source.

    Returns:
        A :class:`Compatibility` with the module coverage and the warnings.

    Raises:
        IncompatibleAdaptersError: with every problem found.

    Example:
        >>> compat = check_compatibility([load_adapter("a"), load_adapter("b")])
        >>> compat.warnings
        []
    """
    problems: list[Problem | str] = []
    warnings: list[Notice] = []
    if not adapters:
        raise IncompatibleAdaptersError(["no adapters given"])

    for adapter in adapters:
        config = adapter.config
        # The config says why first (DoRA, lora_bias …); the tensors it explains come after.
        if (config.peft_type or "").upper() != "LORA":
            problems.append(
                f"{adapter.source}: peft_type is {config.peft_type!r}, not 'LORA'; only LoRA adapters can be merged"
            )
        for key, reason in config.unsupported.items():
            problems.append(f"{adapter.source}: {key} is set: {reason}")
        problems.extend(adapter.problems)
        if not adapter.modules and not adapter.problems:  # else the problems say why none could be used
            problems.append(f"{adapter.source}: {adapter.weights_file.name} holds no LoRA factors")

    labels = list(names) if names is not None else [a.source for a in adapters]
    base_model, revision = _check_base(adapters, labels, problems, warnings, allow_base_mismatch, canonical or {})
    _check_fields(adapters, labels, warnings)
    known = {t for a in adapters if (t := (model_types or {}).get(a.config.base_model_name_or_path or ""))}
    model_type = known.pop() if len(known) == 1 else None
    fusion = fuse_experts(adapters, model_type=model_type, names=labels)
    problems.extend(Problem(text, code="expert_layouts_differ") for text in fusion.problems)
    warnings.extend(fusion.notices)
    layouts = [
        with_model_order({**a.parameter_layouts, **extra}, model_type) for a, extra in zip(adapters, fusion.layouts)
    ]
    parameter_depths, parameter_problems = plan_parameters(
        [a.source for a in adapters],
        layouts,
        [
            [k for k, spec in a.modules.items() if spec.parameter is None and k not in consumed]
            for a, consumed in zip(adapters, fusion.consumed)
        ],
    )
    problems.extend(Problem(text, code="parameter_layout") for text in parameter_problems)
    views = _layout_views(adapters, labels, warnings, model_type, fusion)
    coverage = _check_modules(adapters, views, problems)
    unmatched = unmatched_layouts([a.source for a in adapters], [view["modules"] for view in views])
    if unmatched is not None:
        problems.append(unmatched)
    saved_modules = _check_saved_modules(adapters, views, problems)
    # A module saved in full (modules_to_save) is what PEFT runs, whatever base weight another adapter saved for
    # it (save_embedding_layers); both would be written under one tensor name, so the copy alone is carried.
    base_layers = {key: owners[0] for key, owners in _owners(views, "base_layers").items() if key not in saved_modules}
    if check_values:
        # Without scan_factors the caller checks the factors in its own pass; but when the
        # check fails anyway, scanning costs nothing that matters and completes the list.
        _check_values(adapters, problems, factors=scan_factors or bool(problems))
        _check_base_layers_agree(adapters, views, problems)

    if problems:
        raise IncompatibleAdaptersError(problems)
    for key, owner in saved_modules.items():
        warnings.append(
            Notice(
                "modules_to_save",
                f"{labels[owner]} saves a full copy of {key!r} (modules_to_save); "
                "it is carried over unchanged, not merged",
            )
        )
    return Compatibility(
        base_model=base_model,
        revision=revision,
        coverage=coverage,
        saved_modules=saved_modules,
        base_layers=base_layers,
        warnings=warnings,
        parameter_depths=parameter_depths,
        own_keys=[{new: own for own, new in view["renames"].items()} for view in views],
        fused=fusion.modules,
        parameter_experts={
            f"{container}.{p}": experts
            for per_adapter in layouts
            for container, layout in per_adapter.items()
            for p, (_, _, experts) in zip(layout.labels, layout.features)
            if experts > 1
        },
    )


def _layout_views(adapters, labels, warnings, model_type: str | None, fusion) -> list[dict]:
    """Each adapter's modules, saved modules and saved base layers under the merge's layout keys
    (per-expert LoRAs rewritten into the fused experts layout where ``fusion`` says so)."""
    attributes = ("modules", "saved_modules", "base_layers")
    own: list[dict[str, dict]] = []
    for adapter, fused, consumed in zip(adapters, fusion.modules, fusion.consumed):
        modules = {k: v for k, v in adapter.modules.items() if k not in consumed}
        modules.update((k, f.spec) for k, f in fused.items())
        own.append({"modules": modules, "saved_modules": adapter.saved_modules, "base_layers": adapter.base_layers})
    keymaps, renamed = layout_keymaps([[k for a in attributes for k in view[a]] for view in own], model_type=model_type)
    for index, family in renamed:
        warnings.append(
            Notice(
                "layout_renamed",
                f"{labels[index]} was saved against an older checkpoint layout of the model ({family}: "
                f"e.g. {next(iter(keymaps[index].items()))[0]!r}); its module keys are renamed as transformers and "
                "PEFT rename them at load, so a module is merged once under its current name",
            )
        )
    views = []
    for mine, keymap in zip(own, keymaps):
        view = {a: {keymap.get(k, k): v for k, v in mine[a].items()} for a in attributes}
        view["renames"] = keymap
        views.append(view)
    return views


def _check_base(adapters, labels, problems, warnings, allow_mismatch, canonical) -> tuple[str | None, str | None]:
    def identity(name: str) -> str:
        return normalize_base_model(canonical.get(name) or name)

    named = [a for a in adapters if a.config.base_model_name_or_path]
    # A mismatch allowed is a warning (in the report and card): it names adapters as they do; refused, their sources.
    who = dict(zip(map(id, adapters), labels if allow_mismatch else [a.source for a in adapters]))
    for adapter, label in zip(adapters, labels):
        if not adapter.config.base_model_name_or_path:
            warnings.append(
                Notice(
                    "unknown_base_model",
                    f"{label}: adapter_config.json does not name its base model "
                    "(base_model_name_or_path is empty), so hubmerge cannot check it matches the others",
                )
            )
    base = named[0].config.base_model_name_or_path if named else None
    for adapter in named[1:]:
        theirs = adapter.config.base_model_name_or_path or ""
        if identity(theirs) != identity(base or ""):
            unresolved = [n for n in (base, theirs) if n not in canonical]
            message = (
                f"{who[id(adapter)]}: base model {theirs!r} differs from {who[id(named[0])]}'s {base!r}; "
                "LoRA deltas only add up on the same base model"
                + (
                    f" ({', '.join(map(repr, unresolved))} not resolved on the Hub, so compared by name: a renamed "
                    "repo or a quantized mirror of the same model is only recognised online)"
                    if unresolved
                    else ""
                )
            )
            if allow_mismatch:
                warnings.append(Notice("base_model_mismatch", message + _MISMATCH_ALLOWED))
            else:
                problems.append(Problem(message, code="base_model_mismatch", source=adapter.source))
    revisions = {a.config.revision for a in adapters if a.config.revision}
    if len(revisions) > 1:
        listing = ", ".join(f"{who[id(a)]}: {a.config.revision!r}" for a in adapters if a.config.revision)
        message = f"base model revisions differ ({listing})"
        if allow_mismatch:
            warnings.append(Notice("base_model_mismatch", message + _MISMATCH_ALLOWED))
        else:
            problems.append(Problem(message, code="base_model_mismatch"))
    return base, (revisions.pop() if len(revisions) == 1 else None)


def _check_fields(adapters, labels, warnings) -> None:
    # fan_in_fan_out is not compared: PEFT sets it per layer type (True for Conv1D, False for
    # Linear) whatever the config says, and the stored A (r×in) and B (out×r) are the same either way.
    tasks = {a.config.task_type for a in adapters}
    if len(tasks) > 1:
        listing = ", ".join(f"{label}: {a.config.task_type}" for a, label in zip(adapters, labels))
        warnings.append(
            Notice(
                "task_type_mismatch",
                f"task_type differs ({listing}); the merged adapter's task_type is left empty",
            )
        )


def _check_modules(adapters, views, problems) -> dict[str, list[int]]:
    coverage: dict[str, list[int]] = {}
    for index, view in enumerate(views):
        for key in view["modules"]:
            coverage.setdefault(key, []).append(index)
    for key, owners in coverage.items():
        first = views[owners[0]]["modules"][key]
        for index in owners[1:]:
            spec = views[index]["modules"][key]
            if spec.kind != first.kind:
                problems.append(
                    f"{adapters[index].source}: module {key!r} is {spec.kind} LoRA but "
                    f"{first.kind} LoRA in {adapters[owners[0]].source}"
                )
            elif (spec.in_features, spec.out_features, spec.kernel) != (
                first.in_features,
                first.out_features,
                first.kernel,
            ):
                problems.append(
                    f"{adapters[index].source}: module {key!r} maps {_shape(spec)} but {_shape(first)} in "
                    f"{adapters[owners[0]].source}; "
                    "the adapters were trained on different model shapes"
                )
    return dict(sorted(coverage.items()))


def _shape(spec: ModuleFactors) -> str:
    shape = f"{spec.in_features}→{spec.out_features} features"
    return shape if spec.kernel is None else f"{shape} (convolution, lora_A {list(spec.kernel)} per rank)"


def _owners(views, attribute: str) -> dict[str, list[int]]:
    owners: dict[str, list[int]] = {}
    for index, view in enumerate(views):
        for key in view[attribute]:
            owners.setdefault(key, []).append(index)
    return owners


def _check_saved_modules(adapters, views, problems) -> dict[str, int]:
    carried = {}
    saved = _owners(views, "saved_modules")
    for key, owners in saved.items():
        # A module saved inside another adapter's saved module (classifier.out_proj inside classifier): two
        # full copies of the same weights, and PEFT cannot load the inner one into the wrapped outer module.
        outer = next((o for o in saved if key.startswith(o + ".") and set(saved[o]) != set(owners)), None)
        if outer is not None:
            problems.append(
                Problem(
                    f"module {key!r} is saved in full (modules_to_save) by "
                    f"{', '.join(adapters[i].source for i in owners)} and lies inside {outer!r}, saved in full by "
                    f"{', '.join(adapters[i].source for i in saved[outer])}; two full copies of the same weights "
                    "cannot be summed; drop one of them from modules_to_save",
                    code="saved_module_twice",
                    module=key,
                )
            )
        if len(owners) > 1:
            listing = ", ".join(adapters[i].source for i in owners)
            problems.append(
                f"module {key!r} is saved in full (modules_to_save) by several adapters ({listing}); "
                "two full copies cannot be summed; drop it from all but one adapter"
            )
        else:
            carried[key] = owners[0]
        # The module itself or any module inside it (a LoRA on classifier.dense under a saved classifier):
        # PEFT loads the full copy and drops the LoRA keys under it.
        lora = {
            adapters[i].source: inner
            for i, view in enumerate(views)
            for inner in view["modules"]
            if inner == key or inner.startswith(key + ".")
        }
        if lora:
            listing = ", ".join(f"{source} ({inner!r})" for source, inner in lora.items())
            problems.append(
                Problem(
                    f"module {key!r} is saved in full (modules_to_save) by {adapters[owners[0]].source} and "
                    f"LoRA-adapted by {listing}; PEFT loads the full copy and drops the LoRA delta inside it, "
                    "so the sum would not be exact; drop the module from modules_to_save or from the LoRA targets",
                    code="saved_module_adapted",
                    source=adapters[owners[0]].source,
                    module=key,
                )
            )
    return carried


def _check_values(adapters, problems, *, factors: bool = True) -> None:
    for adapter in adapters:
        names = (
            adapter.iter_tensor_names()
            if factors
            else (
                name
                for group in (adapter.saved_modules, adapter.base_layers)
                for names in group.values()
                for name in names
            )
        )
        for name in names:
            tensor = adapter.tensor(name)
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                problems.append(
                    f"{adapter.source}: {adapter.weights_file.name} key {name!r} holds {bad} NaN/Inf value(s)"
                )


def _check_base_layers_agree(adapters, views, problems) -> None:
    for key, owners in _owners(views, "base_layers").items():
        reference = adapters[owners[0]]
        first = [reference.tensor(n) for n in views[owners[0]]["base_layers"][key]]
        for index in owners[1:]:
            other = [adapters[index].tensor(n) for n in views[index]["base_layers"][key]]
            same = len(first) == len(other) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other)
            )
            if same:
                continue
            shapes = [tuple(t.shape) for t in other], [tuple(t.shape) for t in first]
            dtypes = [_dtype(t) for t in other], [_dtype(t) for t in first]
            if shapes[0] == shapes[1] and dtypes[0] != dtypes[1]:
                why = (
                    f"saved as {', '.join(dtypes[0])} vs {', '.join(dtypes[1])}; the base model was loaded in "
                    "different precisions, so its weights were rounded differently"
                )
            else:
                why = (
                    f"shapes {shapes[0]} vs {shapes[1]}; the adapters were trained with different embeddings, "
                    "e.g. a differently resized vocabulary"
                )
            problems.append(
                f"{adapters[index].source}: the full weights of {key!r} saved with the adapter differ from "
                f"{reference.source}'s ({why})"
            )


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def nonfinite_factors(adapter: LoraAdapter, module: str) -> list[str]:
    """The problems (file and key) of a module whose factors hold NaN/Inf."""
    spec = adapter.modules[module]
    found = []
    for name in (spec.a_name, spec.b_name):
        tensor = adapter.tensor(name)
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            found.append(f"{adapter.source}: {adapter.weights_file.name} key {name!r} holds {bad} NaN/Inf value(s)")
    return found
