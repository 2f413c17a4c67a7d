"""The ``hubmerge`` command's arguments: the parser, its help text, and the value types it checks."""

from __future__ import annotations

import argparse
import os
import re
import sys

from ._version import __version__
from .gguf_export import GGUF_TYPES
from .limits import DEFAULT_MAX_ADAPTERS, DEFAULT_MAX_DOWNLOAD_BYTES, parse_size
from .methods import MAJORITY_SIGN_CHOICES, METHODS
from .report import DTYPE_CHOICES

__all__ = ["EPILOG", "build_parser", "glue_negative_weights"]

EPILOG = """\
examples:
  hubmerge user/math user/med --push               pull two Hub adapters, merge, push to <you>/math-med-merged
  hubmerge user/math user/adapters/med@v1 --push org/merged --private
  hubmerge user/math user/med --push --dry-run     show the target repo, files and card; push nothing
  hubmerge --recipe hubmerge_recipe.json -o again  reproduce a merge from its recipe
  hubmerge ./math ./medicine -o merged             sum two local adapters
  hubmerge ./math ./medicine --weights 1,0.5       weighted sum
  hubmerge ./base-task ./unwanted --weights=1,-1   task negation (use '=' before a leading minus)
  hubmerge ./math ./medicine --report-only --json  interference analysis only, as JSON

Hub access goes through huggingface_hub: HF_TOKEN or `hf auth login`, HF_ENDPOINT, the HF cache,
HF_HUB_OFFLINE=1 (answered from the cache), HF_HUB_DISABLE_PROGRESS_BARS=1.
exit codes: 0 success, 1 error (message says what to do), 2 bad usage, 130 interrupted (nothing half-written).
HUBMERGE_DEBUG=1 shows tracebacks.
"""


def build_parser() -> argparse.ArgumentParser:
    # Run as the hf CLI extension `hf merge`, the hf-merge script shows that name.
    invoked = os.path.basename(sys.argv[0] or "")
    parser = argparse.ArgumentParser(
        prog="hf merge" if invoked.startswith("hf-merge") else "hubmerge",
        description=(
            "Merge PEFT LoRA adapters exactly (rank concatenation of Σ wᵢ·sᵢ·Bᵢ·Aᵢ), without the base "
            "model, and report how much they interfere (RMS cosine of their weight deltas)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="*", metavar="SOURCE", help="adapter directory or user/repo[/sub][@rev]")
    parser.add_argument(
        "--recipe",
        metavar="FILE",
        help="replay a hubmerge_recipe.json: its sources, weights, method, dtype and rank cap (flags given here win)",
    )
    parser.add_argument("--weights", type=_weights, help="comma-separated weight per source (default 1 each)")
    methods = parser.add_argument_group("merge method", _methods_help())
    # No argparse defaults here: None means "not given", so that a recipe's value can fill it.
    methods.add_argument("--method", choices=list(METHODS), help="merge method (default: sum, exact)")
    methods.add_argument("--rank", type=int, help="rank per module of the result (svd and the dense methods)")
    methods.add_argument("--density", type=float, help="share of entries kept (ties, dare_*, …; default 0.5)")
    methods.add_argument("--majority-sign", choices=MAJORITY_SIGN_CHOICES, help="TIES sign election (default total)")
    methods.add_argument("--seed", type=int, help="seed of DARE's random drops (default 0)")
    serving = parser.add_argument_group("serving (docs/serving.md)")
    serving.add_argument(
        "--max-rank",
        type=int,
        metavar="K",
        help="cap every module's rank at K: exact where the sum's true rank fits, else truncated by SVD "
        "(kept energy reported)",
    )
    serving.add_argument(
        "--fit",
        metavar="vllm[=MAX]",
        help="fit vLLM's --max-lora-rank MAX (default 16; 1, 8, 16, 32, 64, 128, 256, 320 or 512): the smallest "
        "legal rank holding the exact merge, up to MAX",
    )
    serving.add_argument(
        "--gguf",
        nargs="?",
        const="f32",
        choices=GGUF_TYPES,
        metavar="TYPE",
        help="also write adapter_model.gguf for llama.cpp / Ollama (TYPE: f32 (default), f16, bf16, q8_0)",
    )
    serving.add_argument(
        "--gguf-base",
        metavar="DIR_OR_REPO",
        help="with --gguf: the base model's config.json, from a local directory or a Hub repo (default: the "
        "adapters' base model)",
    )
    parser.add_argument("-o", "--output", metavar="DIR", help="output directory (default: ./merged-<names>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--report-only", action="store_true", help="analyse only; write nothing")
    parser.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of the table")
    parser.add_argument("--no-figure", action="store_true", help="don't draw similarity.png (the card omits it)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, help="output dtype (default: the inputs')")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept adapter_model.bin (pickle; only for sources you trust)",
    )
    parser.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="merge adapters naming different base models (warns)",
    )
    evaluation = parser.add_argument_group(
        "evaluation on text (needs pip install 'hubmerge[eval]')",
        "score the base, each source alone and the merge on each domain's text: mean NLL per predicted token",
    )
    evaluation.add_argument(
        "--eval-data",
        action="append",
        metavar="NAME=PATH",
        help="a source's display name = a .jsonl (text, prompt+completion, question+answer or messages), .txt or "
        "Hub dataset (repeat per domain)",
    )
    evaluation.add_argument(
        "--base-model", metavar="ID_OR_DIR", help="base model to evaluate on (default: the adapters')"
    )
    evaluation.add_argument(
        "--eval-samples", type=_positive, default=32, metavar="N", help="first N records per domain (32)"
    )
    evaluation.add_argument(
        "--eval-max-length", type=_positive, default=512, metavar="L", help="tokens per example (512)"
    )
    evaluation.add_argument(
        "--eval-split", default="test", metavar="SPLIT", help="records whose split field is this (test)"
    )
    evaluation.add_argument(
        "--eval-batch-size", type=_positive, default=8, metavar="B", help="examples per forward pass (8)"
    )
    evaluation.add_argument(
        "--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="where to evaluate"
    )
    evaluation.add_argument(
        "--tune-weights",
        action="store_true",
        help="choose the weights (--weights is the start) on the records after the first N; report on the first N",
    )
    evaluation.add_argument("--tune-samples", type=_positive, metavar="T", help="records per domain to tune on (N)")
    evaluation.add_argument("--tune-steps", type=_count0, default=20, metavar="S", help="gradient steps (20)")
    hub = parser.add_argument_group("Hub")
    hub.add_argument(
        "--push",
        nargs="?",
        const="",
        metavar="REPO_ID",
        help="push the merge to the Hub (default repo: <you>/<names>-merged)",
    )
    hub.add_argument("--private", action="store_true", help="create the pushed repo private")
    hub.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    hub.add_argument("--commit-message", metavar="TEXT", help="commit message for --push")
    hub.add_argument("--dry-run", action="store_true", help="with --push: show repo, files and card; push nothing")
    hub.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`; prefer those)")
    limits = parser.add_argument_group("limits (a mistyped repo id must not fill the disk)")
    limits.add_argument(
        "--max-adapters",
        type=_count,
        default=os.environ.get("HUBMERGE_MAX_ADAPTERS", str(DEFAULT_MAX_ADAPTERS)),
        metavar="N",
        help=f"refuse more sources than N (default: $HUBMERGE_MAX_ADAPTERS or {DEFAULT_MAX_ADAPTERS}; none: no limit)",
    )
    limits.add_argument(
        "--max-download-size",
        type=_download_size,
        default=os.environ.get("HUBMERGE_MAX_DOWNLOAD_SIZE", f"{DEFAULT_MAX_DOWNLOAD_BYTES // 10**9}GB"),
        metavar="SIZE",
        help=(
            "refuse, before downloading, Hub adapter files adding up to more than SIZE (500MB, 20GB, 1.5GiB; "
            f"default: $HUBMERGE_MAX_DOWNLOAD_SIZE or {DEFAULT_MAX_DOWNLOAD_BYTES // 10**9}GB; none: no limit)"
        ),
    )
    parser.add_argument("--version", action="version", version=f"hubmerge {__version__}")
    return parser


def _methods_help() -> str:
    width = max(len(name) for name in METHODS)
    lines = [f"{name:<{width}}  {m.description}" + (f" ({m.paper})" if m.paper else "") for name, m in METHODS.items()]
    return "\n".join(lines)


def _weights(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 1,0.5") from None
    return values


def glue_negative_weights(argv: list[str]) -> list[str]:
    # argparse reads "--weights -1,1" as two options; "--weights=-1,1" is what it wants.
    glued, skip = [], False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        nxt = argv[index + 1] if index + 1 < len(argv) else None
        if arg == "--weights" and nxt is not None and re.fullmatch(r"-[\d.].*", nxt):
            glued.append(f"--weights={nxt}")
            skip = True
        else:
            glued.append(arg)
    return glued


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _count0(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return value


def _count(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (or none)")
    return value


def _download_size(text: str) -> int | None:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
