"""One LoRA adapter as hubmerge sees it: its parsed config and its factors.

Reads local files only, and only ``adapter_config.json`` plus
``adapter_model.safetensors`` (or, when explicitly allowed,
``adapter_model.bin``). Tensors are read lazily, one module at a time, so a
merge never holds every input in memory at once.

For a module ``m`` PEFT computes ``W + s·B·A`` with ``A`` of shape (r, in),
``B`` of shape (out, r) and the scale ``s`` from the config (:mod:`.config`).
Embedding LoRA stores the same two factors under
``lora_embedding_A/B``; its delta is ``(s·B·A)ᵀ``, which sums and compares the
same way, so it is handled. Convolution LoRA is read flattened (:mod:`.conv`;
:attr:`ModuleFactors.kernel` keeps the shape to write it back). Problems that concern the math (variants whose
delta is not B·A, a missing partner, a shape that contradicts the config) are
collected in :attr:`LoraAdapter.problems` for the compatibility check to
report together; files that cannot be parsed at all raise at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CONFIG_NAME, AdapterConfig, read_config
from .conv import conv_problem, flat_in_features
from .errors import AdapterNotFoundError, UnsafeAdapterError
from .experts import ParameterLayout, expert_factors, index_parameters
from .legacy import expand_lora_b, merged_linear_problem
from .provenance import HubOrigin, LocalOrigin, Origin, local_origin_soon
from .weights_file import TensorReader, check_regular_file, read_pickle, read_safetensors_header

__all__ = ["LoraAdapter", "ModuleFactors", "load_adapter"]

SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
# PEFT prefixes every saved key with the PeftModel's path to the base model.
KEY_PREFIX = "base_model.model."


@dataclass(frozen=True)
class ModuleFactors:
    """Where one adapted module's factors live, and their shapes (no data).

    A LoRA on a parameter (``target_parameters``, :mod:`hubmerge.experts`) is a module too:
    ``parameter`` is PEFT's key for it, and each expert of a 3-D parameter is a module of its own.
    """

    key: str
    a_name: str
    b_name: str
    rank: int
    in_features: int
    out_features: int
    kind: str  # "linear", "embedding" or "conv"
    parameter: str | None = None  # M.p for a parameter LoRA
    experts: int = 1
    expert: int | None = None  # which expert of the stored factors, for a 3-D parameter
    depth: int = 0  # the parameter's nesting depth in the saved keys
    enable_lora: tuple[bool, ...] | None = None  # PEFT 0.2's MergedLinear: B is stored grouped
    kernel: tuple[int, ...] | None = None  # conv LoRA: lora_A's shape after the rank (in, k…)


class LoraAdapter:
    """A LoRA adapter on disk: config plus lazily read factors.

    Attributes:
        name: short display name (unique within one merge).
        source: the reference the user gave (path or ``user/repo[/sub][@rev]``).
        path: the local directory holding the files.
        config: the parsed :class:`AdapterConfig`.
        modules: module key → :class:`ModuleFactors`, sorted by key.
        saved_modules: module key → tensor names of full modules stored
            alongside because of ``modules_to_save``.
        base_layers: module key → tensor names of full embedding weights PEFT saved
            next to an embedding LoRA or for a resized vocabulary (not deltas).
        problems: structural problems found while reading, for the compatibility check.
        dtype: the dtype of the factors (the most common one if mixed).
        weights_file: the tensor file that was read.
        hub_origin: the Hub commit it was downloaded from (with the repo card's licence and
            datasets), or ``None`` for a local folder; see :attr:`origin`.

    hubmerge never changes an adapter once loaded: a merge gives it its own display
    name and weight without touching the object.
    """

    def __init__(
        self,
        *,
        name: str,
        source: str,
        path: Path,
        config: AdapterConfig,
        weights_file: Path,
        tensor_names: list[str],
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, torch.dtype],
        reader: TensorReader,
        hub_origin: HubOrigin | None = None,
    ):
        self.name = name
        self.source = source
        self.path = path
        self.config = config
        self.weights_file = weights_file
        self.hub_origin = hub_origin
        self._local_origin: Future[LocalOrigin] | None = None
        self._reader = reader
        self._dtypes = dtypes
        self._shapes = shapes
        self.problems: list[str] = []
        self.parameter_layouts: dict[str, ParameterLayout] = {}
        self._last: tuple[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None
        self.modules, self.saved_modules, self.base_layers = self._index(tensor_names)
        counts: dict[torch.dtype, int] = {}
        for spec in self.modules.values():
            counts[dtypes[spec.a_name]] = counts.get(dtypes[spec.a_name], 0) + 1
        self.dtype = max(counts, key=lambda d: counts[d]) if counts else torch.float32

    def __repr__(self) -> str:
        return f"LoraAdapter(name={self.name!r}, source={self.source!r}, modules={len(self.modules)})"

    @property
    def origin(self) -> Origin:
        """Where it came from: the :class:`HubOrigin`, or for a local folder its name and the
        sha256 of its config and weights file (computed on first use)."""
        if self.hub_origin is not None:
            return self.hub_origin
        if self._local_origin is None:
            self.hash_files()
        assert self._local_origin is not None
        return self._local_origin.result()

    def hash_files(self) -> None:
        """Start computing a local adapter's sha256 digests in the background (see :attr:`origin`)."""
        if self.hub_origin is None and self._local_origin is None:
            self._local_origin = local_origin_soon(self.path, (self.path / CONFIG_NAME, self.weights_file))

    # -- reading -----------------------------------------------------------------
    def tensor(self, name: str) -> torch.Tensor:
        """Read one tensor by its name in the weights file."""
        return self._reader.get(name)

    def factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Read ``(A, B)`` of ``module`` as stored (A: r×in, B: out×r)."""
        spec = self.modules[module]
        if spec.enable_lora is not None:
            return self._reader.get(spec.a_name), expand_lora_b(self._reader.get(spec.b_name), spec.enable_lora)
        if spec.kernel is not None:  # conv LoRA, flattened: B·A is the delta of the flattened kernel
            a, b = self._reader.get(spec.a_name), self._reader.get(spec.b_name)
            return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        if spec.expert is None:
            return self._reader.get(spec.a_name), self._reader.get(spec.b_name)
        # The experts of one parameter share two tensors and come one after another: read them once.
        names = (spec.a_name, spec.b_name)
        if self._last is None or self._last[0] != names:
            self._last = names, (self._reader.get(spec.a_name), self._reader.get(spec.b_name))
        return expert_factors(*self._last[1], spec.experts, spec.expert)

    def scale(self, module: str) -> float:
        """PEFT's scaling s for ``module`` (patterns match a parameter LoRA by its parameter key)."""
        return self.config.scale_for(self.modules[module].parameter or module)

    def iter_tensor_names(self) -> Iterator[str]:
        """Every tensor name this adapter's merge would read."""
        # The experts of one parameter share their tensors: each name once.
        yield from dict.fromkeys(name for spec in self.modules.values() for name in (spec.a_name, spec.b_name))
        for group in (self.saved_modules, self.base_layers):
            for names in group.values():
                yield from names

    @property
    def nbytes(self) -> int:
        return self.weights_file.stat().st_size

    # -- indexing ----------------------------------------------------------------
    def _where(self, tensor: str) -> str:
        return f"{self.source}: {self.weights_file.name} key {tensor!r}"

    def _index(self, names: list[str]) -> tuple[dict[str, ModuleFactors], dict[str, list[str]], dict[str, list[str]]]:
        halves: dict[str, dict[str, str]] = {}
        saved: dict[str, list[str]] = {}
        base_layers: dict[str, list[str]] = {}
        candidates: dict[str, list[str]] = {}
        for name in names:
            if not name.startswith(KEY_PREFIX):
                self.problems.append(f"{self._where(name)} does not follow PEFT's naming ('{KEY_PREFIX}…')")
                continue
            rel = name[len(KEY_PREFIX) :]
            part = _lora_part(rel)
            if part is not None:
                module, which = part
                halves.setdefault(module, {})[which] = name
                continue
            module = rel.rsplit(".", 1)[0]
            owner = self._saved_module(rel)
            if rel.endswith(".base_layer.weight"):
                # PEFT saves the whole embedding next to an embedding LoRA (save_embedding_layers).
                base_layers.setdefault(module[: -len(".base_layer")], []).append(name)
            elif owner is not None:
                saved.setdefault(owner, []).append(name)
            elif any(part.startswith("lora_velora") for part in rel.split(".")):
                continue  # VeLoRA's training-time buffer: its delta is plain B·A
            elif rel.endswith("lora_magnitude_vector") or ".lora_magnitude_vector." in rel:
                self.problems.append(f"{self._where(name)} is a DoRA magnitude vector; DoRA cannot be summed exactly")
            elif rel.endswith(".lora_B.bias"):
                self.problems.append(f"{self._where(name)} is a lora_B bias; lora_bias cannot be summed exactly")
            elif rel.endswith(".bias") and self.config.bias != "none":
                self.problems.append(
                    f"{self._where(name)} is a trained bias (bias={self.config.bias!r}): a trained value, not a "
                    "delta, which cannot be summed"
                )
            elif rel.endswith(".weight"):
                candidates.setdefault(module, []).append(name)  # a saved embedding? decided below
            else:
                self._unknown(name)
        taken, parameters, self.parameter_layouts, problems = index_parameters(
            self.config, halves, self._shapes, self._dtypes, f"{self.source}: {self.weights_file.name}"
        )
        self.problems.extend(problems)
        modules: dict[str, ModuleFactors] = {
            key: ModuleFactors(kind="linear", **vars(spec)) for key, spec in parameters.items()
        }
        for module in sorted(set(halves) - taken):
            spec = self._module_spec(module, halves[module])
            if spec is not None:
                modules[module] = spec
        widths = {w for spec in modules.values() for w in (spec.in_features, spec.out_features)}
        under: dict[str, int] = {}  # module → how many tensors lie under it (one pass, not one per candidate)
        for name in names:
            parts = name[len(KEY_PREFIX) :].split(".")
            for end in range(1, len(parts)):
                prefix = ".".join(parts[:end])
                if prefix in candidates:
                    under[prefix] = under.get(prefix, 0) + 1
        for module, tensors in candidates.items():
            if self._is_saved_embedding(tensors, widths, alone=under.get(module, 0) == 1):
                base_layers.setdefault(module, []).extend(tensors)
            else:
                for name in tensors:
                    self._unknown(name)
        return dict(sorted(modules.items())), dict(sorted(saved.items())), dict(sorted(base_layers.items()))

    def _unknown(self, name: str) -> None:
        self.problems.append(
            f"{self._where(name)} matches no PEFT LoRA name (lora_A/lora_B/lora_embedding_A/B), "
            "no entry of modules_to_save and no saved embedding layer"
        )

    def _is_saved_embedding(self, tensors: list[str], widths: set[int], *, alone: bool) -> bool:
        """Whether ``module.weight`` is a full embedding PEFT saved (``save_embedding_layers``, a resized vocabulary).

        PEFT saves the model's input and output embeddings under whatever name the
        architecture gives them (``embed_tokens``, ``wte``, ``embed_in``,
        ``word_embeddings``, ``lm_head``, ``embed_out`` …), so they are recognised by
        what is saved, not by name: one 2-D float ``weight`` and nothing else of that
        module (no bias, no LoRA inside it), as wide as the hidden size the adapter's
        factors show. ``alone``: no other tensor lies under the module.
        """
        if len(tensors) != 1 or not alone:
            return False
        shape, dtype = self._shapes[tensors[0]], self._dtypes[tensors[0]]
        return len(shape) == 2 and dtype.is_floating_point and (not widths or shape[1] in widths)

    def _saved_module(self, rel: str) -> str | None:
        """The ``modules_to_save`` module a tensor belongs to: the shortest prefix of its name
        that ends with an entry (``classifier`` for ``classifier.dense.weight``).

        A plain ``endswith``, as PEFT matches ``modules_to_save`` (every release): with
        ``classifier`` listed, DistilBERT's ``pre_classifier`` is saved in full too.
        """
        parts = rel.split(".")
        for end in range(1, len(parts)):
            prefix = ".".join(parts[:end])
            if any(prefix.endswith(m) for m in self.config.modules_to_save if m):
                return prefix
        return None

    def _module_spec(self, module: str, half: dict[str, str]) -> ModuleFactors | None:
        kinds = {which[0] for which in half}
        if len(kinds) > 1:
            self.problems.append(f"{self.source}: module {module!r} mixes linear and embedding LoRA tensors")
            return None
        kind = "embedding" if "e" in kinds else "linear"
        a_name, b_name = (
            half.get(("e" if kind == "embedding" else "l") + "A"),
            half.get(("e" if kind == "embedding" else "l") + "B"),
        )
        if a_name is None or b_name is None:
            present, missing = ("lora_A", "lora_B") if b_name is None else ("lora_B", "lora_A")
            self.problems.append(
                f"{self._where(a_name or b_name or module)}: module {module!r} has {present} but no {missing} "
                "(the file is incomplete)"
            )
            return None
        a_shape, b_shape = self._shapes[a_name], self._shapes[b_name]
        if self.config.enable_lora is not None and len(b_shape) == 3 and kind == "linear":
            enable_lora = tuple(self.config.enable_lora)
            floats = self._dtypes[a_name].is_floating_point and self._dtypes[b_name].is_floating_point
            problem = merged_linear_problem(enable_lora, self.config.r, a_shape, b_shape, floats=floats)
            if problem is not None:
                self.problems.append(f"{self._where(b_name)}: {problem}")
                return None
            out_features = b_shape[0] // sum(enable_lora) * len(enable_lora)
            return ModuleFactors(
                module, a_name, b_name, a_shape[0], a_shape[1], out_features, kind, enable_lora=enable_lora
            )
        if kind == "linear" and len(a_shape) in (3, 4, 5) and len(b_shape) == len(a_shape):
            return self._conv_spec(module, a_name, b_name, a_shape, b_shape)
        if kind == "linear" and len(a_shape) == 2 and len(b_shape) == 3 and b_shape[2] == 1:
            self.problems.append(
                f"{self._where(b_name)} has shape {list(b_shape)} next to a 2-D lora_A: PEFT 0.2's MergedLinear "
                "(enable_lora), but adapter_config.json has no enable_lora to say which parts it adapts"
            )
            return None
        bad = False
        for tensor, shape in ((a_name, a_shape), (b_name, b_shape)):
            if not self._dtypes[tensor].is_floating_point:
                self.problems.append(f"{self._where(tensor)} has dtype {self._dtypes[tensor]}; LoRA factors are floats")
                bad = True
            if len(shape) != 2:
                self.problems.append(
                    f"{self._where(tensor)} has shape {list(shape)}; LoRA factors are 2-D (Linear, Conv1D, "
                    "Embedding) or, for a convolution, lora_A and lora_B of the same number of dimensions (3 to 5)"
                )
                bad = True
        if bad:
            return None
        rank = a_shape[0]
        if b_shape[1] != rank:
            self.problems.append(
                f"{self._where(b_name)} has shape {list(b_shape)} but lora_A has rank {rank}: "
                "B's second dimension must equal A's first"
            )
            return None
        expected = self.config.rank_for(module)
        if rank != expected:
            self.problems.append(
                f"{self._where(a_name)} has rank {rank} but adapter_config.json gives module {module!r} "
                f"rank {expected} (r / rank_pattern): the config contradicts the tensors"
            )
            return None
        return ModuleFactors(
            key=module,
            a_name=a_name,
            b_name=b_name,
            rank=rank,
            in_features=a_shape[1],
            out_features=b_shape[0],
            kind=kind,
        )

    def _conv_spec(self, module: str, a_name: str, b_name: str, a_shape, b_shape) -> ModuleFactors | None:
        """A convolution LoRA (lora_A: r × in × k…, lora_B: out × r × 1…), read flattened."""
        if not (self._dtypes[a_name].is_floating_point and self._dtypes[b_name].is_floating_point):
            self.problems.append(f"{self._where(a_name)}: convolution LoRA factors must be floats")
            return None
        problem = conv_problem(a_shape, b_shape)
        if problem is not None:
            self.problems.append(f"{self._where(b_name)} {problem}")
            return None
        rank, expected = a_shape[0], self.config.rank_for(module)
        if rank != expected:
            self.problems.append(
                f"{self._where(a_name)} has rank {rank} but adapter_config.json gives module {module!r} "
                f"rank {expected} (r / rank_pattern): the config contradicts the tensors"
            )
            return None
        kernel = tuple(int(d) for d in a_shape[1:])
        return ModuleFactors(module, a_name, b_name, rank, flat_in_features(a_shape), b_shape[0], "conv", kernel=kernel)


def _lora_part(rel: str) -> tuple[str, str] | None:
    """Split ``<module>.lora_A.weight`` style names into (module, "lA"/"lB"/"eA"/"eB")."""
    for suffix, which in (
        (".lora_A.weight", "lA"),
        (".lora_B.weight", "lB"),
        (".lora_embedding_A", "eA"),
        (".lora_embedding_B", "eB"),
    ):
        if rel.endswith(suffix):
            return rel[: -len(suffix)], which
    return None


def load_adapter(
    path: str | Path,
    *,
    name: str | None = None,
    source: str | None = None,
    allow_pickle: bool = False,
    hub_origin: HubOrigin | None = None,
) -> LoraAdapter:
    """Read a PEFT LoRA adapter from a local directory.

    Only ``adapter_config.json`` and ``adapter_model.safetensors`` are read;
    tensors are read lazily when a merge asks for them.

    Args:
        path: the directory holding the adapter.
        name: display name (defaults to the directory name).
        source: the reference to quote in messages (defaults to ``path``).
        allow_pickle: accept ``adapter_model.bin`` when there is no safetensors
            file. It is loaded with ``torch.load(weights_only=True)``.
        hub_origin: the Hub commit ``path`` was downloaded from, if it was.

    Returns:
        The :class:`LoraAdapter`. Structural problems are in ``.problems``;
        :func:`hubmerge.check_compatibility` reports them.

    Raises:
        AdapterNotFoundError: no config or no weights in ``path``.
        UnsafeAdapterError: only pickle weights and ``allow_pickle`` is false.
        AdapterFormatError: the config or the tensor file cannot be parsed.

    Example:
        >>> adapter = load_adapter("examples/adapters/math")
        >>> adapter.config.r
        4
    """
    directory = Path(path).expanduser()
    where = source or str(path)
    if not directory.is_dir():
        raise AdapterNotFoundError(f"{where}: no such directory", source=where)
    config_file = directory / CONFIG_NAME
    if not config_file.exists():
        raise AdapterNotFoundError(f"{where}: no {CONFIG_NAME} (is this a PEFT adapter directory?)", source=where)
    check_regular_file(config_file, where)
    config = read_config(config_file, where)

    weights = directory / SAFETENSORS_NAME
    if weights.exists():
        check_regular_file(weights, where)
        names, shapes, dtypes = read_safetensors_header(weights, where)
        reader = TensorReader(weights)
    elif (directory / PICKLE_NAME).is_file():
        weights = directory / PICKLE_NAME
        if not allow_pickle:
            raise UnsafeAdapterError(
                f"{where}: only {PICKLE_NAME} (a pickle) is present; unpickling a file can run arbitrary code, "
                "so pickles are read only where they are allowed (allow_pickle)",
                reason="pickle_only",
                source=where,
            )
        tensors = read_pickle(weights, where)
        names = list(tensors)
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        dtypes = {k: v.dtype for k, v in tensors.items()}
        reader = TensorReader(weights, tensors)
    else:
        raise AdapterNotFoundError(f"{where}: no {SAFETENSORS_NAME} next to {CONFIG_NAME}", source=where)

    return LoraAdapter(
        name=name or directory.resolve().name,
        source=where,
        path=directory,
        config=config,
        weights_file=weights,
        tensor_names=names,
        shapes=shapes,
        dtypes=dtypes,
        reader=reader,
        hub_origin=hub_origin,
    )
