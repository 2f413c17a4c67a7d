"""The base model, loaded once, with every source and merge attached side by side as PEFT adapters.

:class:`Evaluator` loads the base through transformers (from a local directory,
or from the Hub through huggingface_hub: cache, token, revision, offline mode),
checks that every adapted module exists in it with the adapters' shapes before
any forward pass, then loads each source and each merged adapter with PEFT's
own loader under its own adapter name. Scoring a row switches the active
adapter once (or disables them all, for the base): the base is never reloaded.
In float32 without gradients the row's adapters are merged into the base
weights while it is scored, so that a row costs what the base's forward does,
and the base's weights are put back bit for bit (:meth:`Evaluator.active`).

Scoring is batched (examples sorted by length, right-padded so that no real
token attends to a pad; on CPU cut where padding would cost more than another
pass), in inference mode, and the output layer runs only on the positions that
predict a scored token (:mod:`.scoring`). The model runs in bfloat16 on CUDA
devices that support it (else float16), float16 on MPS, float32 on CPU;
log-probabilities are always computed in float32.

transformers and peft are imported here, on first use: the ``eval`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import tempfile
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BaseModelError, EvaluationMemoryError, MissingDependencyError
from .data import Example
from .scoring import Batch, batch_nll, pass_cost, plan

__all__ = ["BaseModel", "Evaluator", "check_fits", "load_base_model", "resolve_device"]

BASE = None  # the row of the base model: every adapter disabled
INSTALL_HINT = "pip install 'hubmerge[eval]'"


def import_eval_dependencies():
    """``(transformers, peft)``, or one line saying how to install them."""
    try:
        import peft
        import transformers
    except ImportError as err:
        raise MissingDependencyError(
            f"evaluation needs transformers and peft ({err.name} is not installed): {INSTALL_HINT}"
        ) from None
    return transformers, peft


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA, else MPS, else CPU; ``cpu`` / ``cuda`` / ``mps`` as asked (if available)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BaseModelError("device cuda was asked for, but torch sees no CUDA device; use cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BaseModelError("device mps was asked for, but this torch has no MPS device; use cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise BaseModelError(f"device {name!r} is not one of auto, cpu, cuda, mps")
    return torch.device(name)


def compute_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@dataclass
class BaseModel:
    """A loaded base model and its tokenizer, and where they came from.

    Attributes:
        model: the transformers causal LM, in eval mode on its device.
        tokenizer: its tokenizer.
        name: the id or directory as given.
        path: the local directory it was loaded from.
        revision: the Hub commit sha (``None`` for a local directory).
        weights_sha256: for a local directory, the sha256 of its weights files (``None`` from the Hub).
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    path: Path
    revision: str | None
    weights_sha256: str | None

    def describe(self) -> dict:
        config = self.model.config
        return {
            "id": self.name,
            "revision": self.revision,
            "weights_sha256": self.weights_sha256,
            "config_name": getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None),
        }


def load_base_model(
    name: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device = "auto",
) -> BaseModel:
    """Load a causal LM and its tokenizer from a local directory or the Hub.

    Args:
        name: a local model directory, or a Hub repo id.
        revision: for a Hub id: branch, tag or commit.
        token: Hub token; default the logged-in one.
        device: ``auto``, ``cpu``, ``cuda``, ``mps`` or a ``torch.device``.

    Returns:
        The :class:`BaseModel`.

    Raises:
        MissingDependencyError: transformers or peft is not installed.
        HubError: missing, gated, or not cached offline.
        BaseModelError: not a causal LM directory, or no tokenizer.
    """
    transformers, _ = import_eval_dependencies()
    target = device if isinstance(device, torch.device) else resolve_device(device)
    local = Path(name).expanduser()
    if local.is_dir():
        path, sha = local, None
    else:
        from ..hub import fetch_base_model

        path, sha = fetch_base_model(name, revision=revision, token=token)
    if not (path / "config.json").is_file():
        raise BaseModelError(f"base model {name}: {path} has no config.json; give a transformers model directory")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers raises OSError, ValueError, KeyError… for "no usable tokenizer"
        raise BaseModelError(f"base model {name}: no usable tokenizer in {path} ({_first_line(err)})") from None
    dtype = compute_dtype(target)
    major_minor = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    dtype_arg = "dtype" if major_minor >= (4, 56) else "torch_dtype"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **{dtype_arg: dtype})
    except (OSError, ValueError, KeyError) as err:
        raise BaseModelError(
            f"base model {name}: cannot be loaded as a causal language model from {path} ({_first_line(err)})"
        ) from None
    model = model.to(target).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    weights_sha = _weights_sha256(path) if sha is None else None
    return BaseModel(model, tokenizer, str(name), path, sha, weights_sha)


def _weights_sha256(path: Path) -> str | None:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def _module_shape(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) as LoRA's factors see it: A is r × in, B is out × r."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        return module.in_channels, module.out_channels
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:  # GPT-2: weight is in × out
        weight = typing.cast(torch.Tensor, module.weight)
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def check_fits(model: torch.nn.Module, adapters: Sequence) -> None:
    """Refuse, before any forward pass, a base model whose modules do not fit the adapters' factors.

    Raises:
        BaseModelError: a module is missing, is not a layer LoRA adapts, or has other shapes
            (the first problems are named).
    """
    problems = []
    for adapter in adapters:
        for key, spec in adapter.modules.items():
            try:
                module = model.get_submodule(key)
            except AttributeError:
                problems.append(f"{adapter.name}: the base model has no module {key}")
                continue
            shape = _module_shape(module)
            if shape is None:
                problems.append(f"{adapter.name}: {key} is a {type(module).__name__}, not a layer LoRA adapts")
            elif shape != (spec.in_features, spec.out_features):
                problems.append(
                    f"{adapter.name}: {key} is {shape[0]}→{shape[1]} in the base model but "
                    f"{spec.in_features}→{spec.out_features} in the adapter"
                )
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise BaseModelError(
            f"the base model does not fit the adapters ({len(problems)} module(s)): {shown}; "
            "evaluate on the model the adapters were trained on"
        )


class Evaluator:
    """One base model with sources and merges attached under their own PEFT adapter names.

    Args:
        base: the loaded :class:`BaseModel`.
        adapters: the sources (:class:`~hubmerge.LoraAdapter`), attached as ``source_0``, ``source_1``, …
        batch_size: examples per forward pass.

    Raises:
        BaseModelError: the base does not fit the adapters, or they are not causal-LM adapters.
    """

    def __init__(self, base: BaseModel, adapters: Sequence, *, batch_size: int = 8):
        _, peft = import_eval_dependencies()
        tasks = {a.config.task_type for a in adapters} - {None, "CAUSAL_LM"}
        if tasks:
            raise BaseModelError(
                f"evaluation scores causal language models; these adapters are {', '.join(sorted(tasks))}"
            )
        check_fits(base.model, adapters)
        self.base = base
        self.batch_size = batch_size
        self.sources = [f"source_{i}" for i in range(len(adapters))]
        self._scratch = tempfile.TemporaryDirectory(prefix="hubmerge-eval-")
        model = peft.PeftModel.from_pretrained(
            base.model, str(adapters[0].path), adapter_name=self.sources[0], is_trainable=False
        )
        for name, adapter in zip(self.sources[1:], adapters[1:]):
            model.load_adapter(str(adapter.path), adapter_name=name, is_trainable=False)
        self.model = model.eval()
        self.device = next(base.model.parameters()).device
        get_output = getattr(model.get_base_model(), "get_output_embeddings", None)
        self._output_layer = get_output() if callable(get_output) else None
        # a common prefix runs once and is attended to from its cache: needs a cache argument and position ids
        accepted = inspect.signature(model.get_base_model().forward).parameters
        names = [name for name in ("cache", "past_key_values") if name in accepted]  # transformers 5.2x: cache
        self._cache_argument = names[0] if names and "position_ids" in accepted else None
        self._pristine: dict[torch.nn.Parameter, torch.Tensor] | None = None  # the adapted layers' own parameters

    def close(self) -> None:
        self._pristine = None
        self._scratch.cleanup()

    def add_merge(self, name: str, result) -> None:
        """Attach a :class:`~hubmerge.MergeResult`'s adapter, written as hubmerge writes it and loaded by PEFT."""
        directory = Path(self._scratch.name) / name
        result.save_pretrained(directory, overwrite=True, figure=False)
        self.model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        self._pristine = None  # it may adapt layers no source did: the copy of the base is taken again

    def score(
        self, adapter: str | list[str] | None, examples: Sequence[Example], *, label: str = ""
    ) -> tuple[float, int]:
        """Σ NLL (natural log) and Σ predicted tokens of ``examples`` with ``adapter`` active (see :meth:`active`)."""
        return self.scores(adapter, {label: examples})[label]

    def scores(
        self, adapter: str | list[str] | None, domains: Mapping[str, Sequence[Example]]
    ) -> dict[str, tuple[float, int]]:
        """:meth:`score` of each domain's examples, with ``adapter`` made active once for all of them."""
        out = {}
        with torch.inference_mode(), self.active(adapter):
            for label, examples in domains.items():
                total, tokens = 0.0, 0
                for batch in self.batches(examples):
                    total += float(self.nll(batch, label=label).sum())
                    tokens += sum(e.predicted for e in batch.examples)
                out[label] = (total, tokens)
        return out

    def batches(self, examples: Sequence[Example]) -> list[Batch]:
        """The forward passes that score ``examples`` (:func:`~hubmerge.evaluation.scoring.plan`)."""
        share = self._cache_argument is not None
        return plan(examples, self.batch_size, share=share, per_pass=pass_cost(self.device))

    @contextlib.contextmanager
    def active(self, adapter: str | list[str] | None):
        """The model with ``adapter`` active: a name, several names (all at their current scalings), or ``None``.

        Without gradients, in float32 and without autocast, the active adapters are merged into the base
        weights for the duration (PEFT's ``merge_adapter``), so that a forward pass costs what the base's
        does; the base's weights are then restored bit for bit (from a copy of the adapted layers' own
        parameters, made once and kept while the evaluator lives). In half precision a merged weight
        would round the adapter's small delta away, so there PEFT applies the adapters beside the base
        layers, as it does whenever gradients are on.
        """
        if adapter is None:
            with self.model.disable_adapter():
                yield
            return
        self.model.base_model.set_adapter([adapter] if isinstance(adapter, str) else list(adapter), inference_mode=True)
        if not self._can_merge():
            yield
            return
        merged = False
        try:
            self.model.merge_adapter()
            merged = True
        except (ValueError, NotImplementedError, TypeError):
            pass  # a layer PEFT cannot merge: the adapters are applied beside the base instead
        finally:
            if not merged:  # also when anything else stopped the merge half-way: the base comes back first
                self._restore()
        try:
            yield
        finally:
            if merged:
                self._restore()

    def _can_merge(self) -> bool:
        if torch.is_grad_enabled() or torch.is_autocast_enabled(self.device.type):
            return False
        if self._pristine is None:
            owned = [p for layer in self._tuner_layers() for p in layer.get_base_layer().parameters(recurse=False)]
            exact = owned and all(p.dtype in (torch.float32, torch.float64) for p in owned)
            self._pristine = {p: p.detach().clone() for p in owned} if exact and not self._tied(owned) else {}
        return bool(self._pristine)

    def _tied(self, owned: list[torch.nn.Parameter]) -> bool:
        """Whether an adapted layer's weights are also another module's (tied input and output embeddings).

        Merging into such a weight would change the other module too, which the adapters beside the
        base never do (PEFT only warns about it), so those rows are not merged.
        """
        uses: dict[int, int] = {}
        for _, parameter in self.model.named_parameters(remove_duplicate=False):
            uses[parameter.data_ptr()] = uses.get(parameter.data_ptr(), 0) + 1
        return any(uses.get(p.data_ptr(), 0) > 1 for p in owned)

    def _tuner_layers(self) -> list:
        _, peft = import_eval_dependencies()
        return [m for m in self.model.modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)]

    def _restore(self) -> None:
        for layer in self._tuner_layers():
            if layer.merged:
                layer.unmerge()  # PEFT's bookkeeping; the weights come back from the copy below
        with torch.no_grad():
            for parameter, saved in (self._pristine or {}).items():
                parameter.copy_(saved)

    def nll(self, batch: Batch, *, label: str = "") -> torch.Tensor:
        """Per example, Σ NLL (float64) of its predicted tokens, with the adapters active now (differentiable)."""
        pad = getattr(self.base.tokenizer, "pad_token_id", None) or 0
        try:
            return batch_nll(
                self.model, self._output_layer, batch, pad=pad, device=self.device, cache_argument=self._cache_argument
            )
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and not _is_oom(err):
                raise
            length = max(len(e.ids) for e in batch.examples)
            setting = "batch_size" if len(batch.examples) > 1 else "max_length"
            raise EvaluationMemoryError(
                f"out of memory on {self.device.type} scoring {label or 'the evaluation data'} with batch_size "
                f"{self.batch_size} and examples of up to {length} tokens: lower {setting}"
                + (" (or max_length)" if setting == "batch_size" else ", or evaluate on a device with more memory"),
                setting=setting,
            ) from None


def _is_oom(err: RuntimeError) -> bool:
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
