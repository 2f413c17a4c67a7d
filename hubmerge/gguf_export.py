"""A llama.cpp LoRA adapter file (GGUF) from a PEFT adapter, for llama.cpp, llama-server and Ollama.

llama.cpp loads LoRA adapters as GGUF files (``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, tensors ``<base tensor>.lora_a`` /
``.lora_b``) and applies ``scale · alpha / rank · B·A`` with ``rank`` read from
each tensor. Renaming tensors is not enough: llama.cpp's own converter
(``convert_lora_to_gguf.py``) reshapes some factors per architecture, so this
module ports exactly those transforms for the architectures in
:data:`ARCHITECTURES` and takes the tensor names from the ``gguf`` package's own
name map. ``tests/test_gguf_export.py`` checks every architecture tensor by tensor
against llama.cpp's converter; ``docs/serving.md`` has the end-to-end check with
llama.cpp itself.

Per architecture:

- Llama, Mistral: the rows of B for ``q_proj`` / ``k_proj`` are permuted to
  llama.cpp's rotary layout (``LlamaModel.permute`` in llama.cpp's conversion).
- Qwen2, Qwen3: names only.
- GPT-2: names only. llama.cpp's converter transposes GPT-2's Conv1D weights and
  applies the same transpose to a LoRA pair, which swaps A and B: llama.cpp then
  refuses the file ("has incorrect shape") or, for a square module, applies ΔWᵀ.
  PEFT stores Conv1D factors already as A: r×in, B: out×r, so they are written as
  they are.
- Embedding LoRA (any architecture): A is written transposed, as llama.cpp's
  ``llm_build_inp_embd`` expects.

What llama.cpp cannot take is refused with the reason: full weight copies
(``modules_to_save``, a resized embedding) and a LoRA on ``lm_head`` when the base
ties it to the embeddings (the GGUF base then has no ``output.weight``). The copy
of the base's own embedding that PEFT saves next to an embedding LoRA is left
out, as llama.cpp's converter leaves out every ``.base_layer.weight``.
Per-module scales that differ from llama.cpp's ``alpha / rank`` (rsLoRA,
``rank_pattern`` / ``alpha_pattern``) are folded into B, so the file applies PEFT's delta.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GGUFExportError, HubError

if TYPE_CHECKING:
    import torch

    from .adapter import LoraAdapter
    from .config import AdapterConfig
    from .result import MergeResult

__all__ = ["ARCHITECTURES", "DEFAULT_GGUF_TYPE", "GGUF_NAME", "GGUF_TYPES", "attach_gguf", "build_gguf",
           "convert_to_gguf", "read_base_config"]  # fmt: skip

GGUF_NAME = "adapter_model.gguf"
# f32 by default: the merged factors are float32 sums rounded once to the output dtype, and every input dtype
# (bf16, f16, f32) converts to float32 exactly, so the file holds the PEFT adapter's values bit for bit.
# q8_0: blocks of 32 values, int8 each and one f16 scale per block (llama.cpp's Q8_0, quantised by the gguf
# package's own code); a tensor whose rows are not whole blocks (lora_b of a rank that is not a multiple of 32)
# is written f16 instead, as llama.cpp's converter does.
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_GGUF_TYPE = "f32"


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face architecture becomes llama.cpp's.

    Attributes:
        gguf_arch: llama.cpp's architecture name (``general.architecture``).
        rotary_permute: permute the rows of q/k B factors as llama.cpp's ``LlamaModel`` does.
        tied_default: ``tie_word_embeddings`` when config.json does not say (the transformers default).
    """

    gguf_arch: str
    rotary_permute: bool = False
    tied_default: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture("llama", rotary_permute=True),
    "MistralForCausalLM": Architecture("llama", rotary_permute=True),
    "Qwen2ForCausalLM": Architecture("qwen2"),
    "Qwen3ForCausalLM": Architecture("qwen3"),
    "GPT2LMHeadModel": Architecture("gpt2", tied_default=True),
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFExportError(
            "writing GGUF needs the gguf package (llama.cpp's gguf-py): pip install 'hubmerge[gguf]'",
            reason="gguf_missing",
        ) from None
    return gguf


def read_base_config(base: str | Path, *, revision: str | None = None, token: str | bool | None = None) -> dict:
    """The base model's ``config.json``: from a local directory (or file), else from the Hub.

    Args:
        base: a directory holding ``config.json``, the file itself, or a Hub repo id.
        revision: the Hub revision (ignored for a local path).
        token: Hub token.

    Returns:
        The parsed config.

    Raises:
        GGUFExportError: the file cannot be read or parsed.
        HubError: the Hub could not give it.
    """
    path = Path(base).expanduser()
    if path.is_dir():
        path = path / "config.json"
    elif not path.is_file():
        from .hub import fetch_base_config  # the one module that talks to the network

        path = fetch_base_config(str(base), revision=revision, token=token)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GGUFExportError(f"base model config {path}: cannot read it ({err})", reason="bad_base_config") from None


def _architecture(base_config: dict) -> tuple[str, Architecture]:
    names = base_config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name, ARCHITECTURES[name]
    known = ", ".join(ARCHITECTURES)
    raise GGUFExportError(
        f"the base model's architecture {', '.join(names) or '(config.json names none)'} has no GGUF LoRA "
        f"conversion in hubmerge (it knows {known}); use llama.cpp's convert_lora_to_gguf.py on the saved adapter",
        reason="unsupported_architecture",
    )


def _permute(rows: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    # llama.cpp's LlamaModel.permute (convert_hf_to_gguf / conversion/llama.py), on the output rows only.
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _base_copy(adapter: LoraAdapter, key: str, base_config: dict) -> bool:
    """Whether the full embedding PEFT saved for ``key`` is the base's own, which llama.cpp's converter drops.

    PEFT saves the wrapped embedding (``….base_layer.weight``) next to every ``embed_tokens`` / ``lm_head``
    LoRA (``save_embedding_layers="auto"``); it is the frozen base weight unless the vocabulary was resized,
    which shows as a LoRA over a vocabulary other than the base's.
    """
    spec = adapter.modules.get(key)
    if spec is None:
        return False
    vocab = spec.in_features if spec.kind == "embedding" else spec.out_features
    return vocab == base_config.get("vocab_size")


def _hparam(config: dict, *names: str) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    raise GGUFExportError(f"the base model's config.json has none of {', '.join(names)}", reason="bad_base_config")


def build_gguf(adapter: LoraAdapter, base_config: dict, *, outtype: str = DEFAULT_GGUF_TYPE, name: str) -> bytes:
    """The GGUF LoRA file of ``adapter`` for the base model described by ``base_config``.

    Args:
        adapter: a loaded PEFT LoRA adapter (:func:`hubmerge.load_adapter`).
        base_config: the base model's ``config.json``.
        outtype: tensor type, one of :data:`GGUF_TYPES` (default ``"f32"``; ``"q8_0"`` writes tensors whose
            rows are not whole 32-value blocks as f16).
        name: ``general.name`` of the file.

    Returns:
        The file's bytes.

    Raises:
        GGUFExportError: llama.cpp cannot take this adapter (the message says what and why).
    """
    import numpy as np
    import torch

    gguf = _gguf()
    if outtype not in GGUF_TYPES:
        raise GGUFExportError(f"GGUF type {outtype!r} is not one of {', '.join(GGUF_TYPES)}", reason="bad_gguf_type")
    hf_arch, arch = _architecture(base_config)
    full = [*adapter.saved_modules, *(key for key in adapter.base_layers if not _base_copy(adapter, key, base_config))]
    if full:
        raise GGUFExportError(
            f"{adapter.source}: it carries full weight copies of {', '.join(full)} (modules_to_save or a resized "
            "embedding); llama.cpp applies only LoRA factors (.lora_a / .lora_b) and refuses these. Merge adapters "
            "without them to serve with llama.cpp",
            reason="full_weights",
            source=adapter.source,
        )
    if adapter.problems:
        raise GGUFExportError(
            f"{adapter.source}: " + "; ".join(adapter.problems), reason="bad_adapter", source=adapter.source
        )
    config = adapter.config
    tied = bool(base_config.get("tie_word_embeddings", arch.tied_default))
    n_blocks = _hparam(base_config, "n_layers", "num_hidden_layers", "n_layer", "num_layers")
    model_arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch.gguf_arch)
    names = gguf.get_tensor_name_map(model_arch, n_blocks)
    alpha = float(config.lora_alpha)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]  # fmt: skip
    tensors = []
    for key, spec in adapter.modules.items():
        short = key.rsplit(".", 1)[-1]
        if short == "lm_head" and tied:
            raise GGUFExportError(
                f"{adapter.source}: module {key!r} has a LoRA, but the base ties lm_head to the embeddings, so its "
                "GGUF has no output.weight to apply it to; llama.cpp cannot serve this module",
                reason="tied_lm_head",
                source=adapter.source,
                module=key,
            )
        target = names.get_name(f"{key}.weight", try_suffixes=(".weight", ".bias"))
        if target is None:
            raise GGUFExportError(
                f"{adapter.source}: module {key!r} has no llama.cpp tensor in the {arch.gguf_arch} architecture",
                reason="unmapped_module",
                source=adapter.source,
                module=key,
            )
        a, b = (t.to(torch.float32) for t in adapter.factors(key))
        rank = a.shape[0]
        # llama.cpp scales by alpha / rank (rank read from the tensor); fold PEFT's own scale where it differs.
        factor = adapter.scale(key) * rank / alpha if alpha else adapter.scale(key)
        if factor != 1.0:
            b = b * factor
        if arch.rotary_permute and short in ("q_proj", "k_proj"):
            n_head = _hparam(base_config, "n_heads", "num_attention_heads")
            n_kv = base_config.get("n_kv_heads") or base_config.get("num_key_value_heads")
            b = _permute(b, n_head, n_head if short == "q_proj" else n_kv)
        if spec.kind == "embedding":
            a = a.T  # llm_build_inp_embd looks rows of A up by token
        tensors += [(f"{target}.lora_a", a), (f"{target}.lora_b", b)]

    with tempfile.TemporaryDirectory(prefix="hubmerge-gguf-") as tmp:
        path = Path(tmp) / GGUF_NAME
        writer = gguf.GGUFWriter(str(path), arch.gguf_arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_name(name)
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor_name, data in tensors:
            array = np.ascontiguousarray(data.numpy())
            if qtype == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(tensor_name, array.astype(np.float16))
            elif qtype == gguf.GGMLQuantizationType.BF16:
                writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
            elif qtype == gguf.GGMLQuantizationType.Q8_0:
                try:
                    writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
                except gguf.QuantError:  # rows are not whole 32-value blocks: f16, llama.cpp's converter's fallback
                    writer.add_tensor(tensor_name, array.astype(np.float16))
            else:
                writer.add_tensor(tensor_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def _base_config(config: AdapterConfig, base: str | Path | None, *, token: str | bool | None) -> dict:
    """The config.json of ``base``, else of the base model the adapter names (at its revision)."""
    if base is not None:
        return read_base_config(base, token=token)
    if not config.base_model_name_or_path:
        raise GGUFExportError(
            "the adapter names no base model (base_model_name_or_path): give the base model's directory or repo id",
            reason="no_base_model",
        )
    try:
        return read_base_config(config.base_model_name_or_path, revision=config.revision, token=token)
    except HubError as err:
        if err.reason not in _BASE_NOT_FOUND:
            raise  # the base is there: offline, gated, a token refused; its own next step applies
        # Where the name came from is what tells the way out: give the base model (its folder or repo) instead.
        raise type(err)(
            f"{err}; it is the base model the adapter names (base_model_name_or_path)",
            reason="base_not_found",
            source=err.source,
            repo_id=err.repo_id,
            revision=err.revision,
            server_message=err.server_message,
            request_id=err.request_id,
        ) from err


# The reasons that mean "no such base model" (rather than "no access to it").
_BASE_NOT_FOUND = {"repo_not_found", "not_a_repo_id", "revision_not_found", "no_base_config"}


def convert_to_gguf(
    directory: str | Path,
    *,
    base: str | Path | None = None,
    outtype: str = DEFAULT_GGUF_TYPE,
    token: str | bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``adapter_model.gguf`` next to the PEFT files of an adapter directory.

    Args:
        directory: a PEFT LoRA adapter directory (a hubmerge output or any other).
        base: the base model's directory or Hub repo id (default: the adapter's
            ``base_model_name_or_path``, at its ``revision``); only its ``config.json`` is read.
        outtype: tensor type (default ``"f32"``).
        token: Hub token, for a Hub base.
        overwrite: replace an existing ``adapter_model.gguf``.

    Returns:
        The path written (atomically: a failure leaves no partial file).

    Raises:
        GGUFExportError: llama.cpp cannot take the adapter, or the file exists and ``overwrite`` is false.
        AdapterError: the directory is not a readable PEFT adapter.
        HubError: the base config could not be downloaded.
    """
    from .adapter import load_adapter
    from .loading import check_not_full_model

    check_not_full_model(directory, str(directory))
    adapter = load_adapter(directory)
    target = Path(directory) / GGUF_NAME
    if target.exists() and not overwrite:
        raise GGUFExportError(f"{target} exists; overwrite=True replaces it", reason="gguf_exists", source=str(target))
    data = build_gguf(adapter, _base_config(adapter.config, base, token=token), outtype=outtype, name=adapter.name)
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".hubmerge-gguf-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(staging, 0o644)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target


def attach_gguf(
    result: MergeResult,
    *,
    base: str | Path | None = None,
    outtype: str = DEFAULT_GGUF_TYPE,
    token: str | bool | None = None,
) -> MergeResult:
    """The merge with ``adapter_model.gguf`` among its files (saved and pushed with the rest) and in its verdicts.

    Args:
        result: a finished merge (not a report-only one).
        base: the base model's directory or Hub repo id (default: the merged adapter's base model).
        outtype: tensor type (default ``"f32"``).
        token: Hub token, for a Hub base.

    Returns:
        A new :class:`~hubmerge.result.MergeResult`; ``result`` itself is unchanged.

    Raises:
        GGUFExportError, HubError: as :func:`build_gguf` / :func:`read_base_config`.
    """
    from .adapter import LoraAdapter
    from .config import parse_config
    from .result import MergeResult
    from .serving import serving_section
    from .weights_file import TensorReader

    if not isinstance(result, MergeResult) or not result.tensors:
        raise GGUFExportError(
            "this is a report without tensors (made with report_only=True): nothing to convert", reason="no_tensors"
        )
    config = parse_config(dict(result.config), where="the merged adapter")
    tensors = dict(result.tensors)
    adapter = LoraAdapter(
        name="merged", source="the merged adapter", path=Path("."), config=config, weights_file=Path("."),
        tensor_names=list(tensors), shapes={k: tuple(v.shape) for k, v in tensors.items()},
        dtypes={k: v.dtype for k, v in tensors.items()}, reader=TensorReader(Path("."), tensors),
    )  # fmt: skip
    base_config = _base_config(config, base, token=token)
    data = build_gguf(adapter, base_config, outtype=outtype, name=result.default_repo_name())
    serving = dict(result.report.serving or {})
    facts = {**serving.get("facts", {}), "gguf_file": GGUF_NAME, "gguf_type": outtype}
    if not facts.get("model_type") and isinstance(base_config.get("model_type"), str):
        facts["model_type"] = base_config["model_type"]  # the base's config.json, read for the conversion
    report = replace(result.report, serving=serving_section(facts, rank_fit=serving.get("rank_fit")))
    return replace(result, report=report, extra_files={**result.extra_files, GGUF_NAME: data})
