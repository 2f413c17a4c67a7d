"""The ``hubmerge`` command: argv → :func:`hubmerge.merge` → text, and exit codes.

Exit codes: 0 success, 1 a user-facing error (incompatible adapters, missing
files, bad values; one or a few lines saying what to do), 2 bad usage.
Set ``HUBMERGE_DEBUG=1`` to see the traceback behind an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence

from huggingface_hub.utils import HFValidationError, validate_repo_id

from ._version import __version__
from .errors import (
    EvaluationMemoryError,
    HubError,
    HubmergeError,
    InvalidArgumentError,
    LimitExceededError,
    SourceError,
)
from .limits import DEFAULT_MAX_ADAPTERS, DEFAULT_MAX_DOWNLOAD_BYTES, parse_size
from .methods import MAJORITY_SIGN_CHOICES, METHODS
from .output import check_writable
from .report import DTYPE_CHOICES, render_text
from .sources import parse_source

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples:
  hubmerge user/math user/med --push               pull two Hub adapters, merge, push to user/math-med-merged
  hubmerge user/math user/adapters/med@v1 --push org/merged --private
  hubmerge user/math user/med --push --dry-run     show the target repo, files and card; push nothing
  hubmerge --recipe hubmerge_recipe.json -o again  reproduce a merge from its recipe
  hubmerge ./math ./medicine -o merged             sum two local adapters
  hubmerge ./math ./medicine --weights 1,0.5       weighted sum
  hubmerge ./base-task ./unwanted --weights=1,-1   task negation (use '=' before a leading minus)
  hubmerge ./math ./medicine --report-only --json  interference analysis only, as JSON

Hub access goes through huggingface_hub: HF_TOKEN or `hf auth login`, HF_ENDPOINT, the HF cache,
HF_HUB_OFFLINE=1 (answered from the cache), HF_HUB_DISABLE_PROGRESS_BARS=1.
exit codes: 0 success, 1 error (message says what to do), 2 bad usage.
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
    parser.add_argument("--recipe", metavar="FILE", help="take sources, weights and dtype from a hubmerge_recipe.json")
    parser.add_argument("--weights", type=_weights, help="comma-separated weight per source (default 1 each)")
    methods = parser.add_argument_group("merge method", _methods_help())
    methods.add_argument("--method", choices=list(METHODS), default="sum", help="merge method (default: sum, exact)")
    methods.add_argument("--rank", type=int, help="rank per module of the result (svd and the dense methods)")
    methods.add_argument("--density", type=float, default=0.5, help="share of entries kept (ties, dare_*, …)")
    methods.add_argument("--majority-sign", choices=MAJORITY_SIGN_CHOICES, default="total", help="TIES sign election")
    methods.add_argument("--seed", type=int, default=0, help="seed of DARE's random drops")
    parser.add_argument("-o", "--output", metavar="DIR", help="output directory (default: ./merged-<names>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--report-only", action="store_true", help="analyse only; write nothing")
    parser.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of the table")
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


def _glue_negative_weights(argv: list[str]) -> list[str]:
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


def _default_output(sources: Sequence[str]) -> str:
    names = []
    for text in sources:
        try:
            names.append(parse_source(text).name)
        except SourceError:
            names.append("adapter")
    return "merged-" + "-".join(re.sub(r"[^\w.\-]", "_", n) for n in names)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    argv = _glue_negative_weights(list(sys.argv[1:] if argv is None else argv))
    debug = os.environ.get("HUBMERGE_DEBUG", "") not in ("", "0")
    try:
        args = parser.parse_args(argv)
        _configure_logging(json_mode=args.json)
        return _run(args, parser, argv)
    except SystemExit as exit_:  # argparse: --help, --version, bad usage
        return int(exit_.code or 0)
    except LimitExceededError as err:
        flag = {"max_adapters": "--max-adapters N", "max_download_bytes": "--max-download-size SIZE"}[err.limit]
        _fail(f"{err} (set with {flag}, or none for no limit)", debug)
        return EXIT_ERROR
    except EvaluationMemoryError as err:
        flag = {"batch_size": "--eval-batch-size", "max_length": "--eval-max-length"}.get(err.setting, err.setting)
        _fail(f"{err} (set with {flag})", debug)
        return EXIT_ERROR
    except HubmergeError as err:
        _fail(str(err), debug)
        return EXIT_ERROR
    except OSError as err:  # disk full, permission denied: the user's to fix, not a bug
        _fail(f"{err.strerror or err} ({err.filename})" if err.filename else str(err), debug)
        return EXIT_ERROR
    except KeyboardInterrupt:
        # Outputs are written whole or not at all, and a push this run created a repo for deletes it again.
        print("hubmerge: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    if args.recipe:
        _apply_recipe(args, parser)
    if not args.sources:
        parser.error("give at least one SOURCE (or --recipe FILE)")
    pushing = args.push is not None
    if (args.dry_run or args.private or args.create_pr or args.commit_message) and not pushing:
        parser.error("--dry-run, --private, --create-pr and --commit-message go with --push")
    if args.report_only and (pushing or args.output):
        parser.error("--report-only writes nothing; it cannot be combined with --push or -o")
    if args.tune_weights and not args.eval_data:
        parser.error("--tune-weights tunes on the evaluation data: give --eval-data NAME=PATH")
    if pushing:
        _check_push_target(args, parser, argv)
    output = None
    if not args.report_only and (args.output or not pushing):
        output = args.output or _default_output(args.sources)
        check_writable(output, overwrite=args.overwrite)  # fail before the work, not after
    token = args.token
    from .api import merge  # torch is imported here, not for --help or a usage error

    result = merge(
        args.sources,
        weights=args.weights,
        method=args.method,
        rank=args.rank,
        density=args.density,
        majority_sign=args.majority_sign,
        seed=args.seed,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        allow_base_mismatch=args.allow_base_mismatch,
        report_only=args.report_only,
        token=token,
        max_adapters=args.max_adapters,
        max_download_bytes=args.max_download_size,
        **_evaluation_options(args),
    )
    report = dict(result.report)
    lines = []
    if output is not None:
        written = result.save_pretrained(output, overwrite=args.overwrite)
        report["output"] = {**report["output"], "directory": str(written)}
        lines.append(f"saved to {written}/ — load it with peft.PeftModel.from_pretrained(base_model, {str(written)!r})")
    if pushing and args.dry_run:
        repo_id = _dry_run_repo_id(result, args.push, token)
        files = result.files(repo_id=repo_id, card=True)
        report["push"] = {"repo_id": repo_id, "dry_run": True, "files": {n: len(b) for n, b in files.items()}}
        lines.append(
            f"dry run: would push to {repo_id} ({'private, ' if args.private else ''}one commit"
            f"{', as a pull request' if args.create_pr else ''}):"
        )
        lines.extend(f"  {name}  ({_size(len(data))})" for name, data in files.items())
        lines.append("\n--- README.md (model card) ---\n" + files["README.md"].decode("utf-8"))
    elif pushing:
        info = result.push_to_hub(
            args.push or None,
            token=token,
            private=True if args.private else None,
            create_pr=args.create_pr,
            commit_message=args.commit_message,
        )
        url = info.pr_url or info.commit_url
        report["push"] = {"repo_id": info.repo_url.repo_id, "commit_url": info.commit_url, "pr_url": info.pr_url}
        lines.append(f"pushed to {info.repo_url}" + (f" — pull request: {url}" if info.pr_url else f" ({url})"))
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        for line in lines:
            print(line, file=sys.stderr)
    else:
        print(render_text(result.report))
        if lines:
            print()
        for line in lines:
            print(line)
    return EXIT_OK


def _evaluation_options(args: argparse.Namespace) -> dict:
    if not args.eval_data:
        return {}
    return {
        "eval_data": args.eval_data,
        "base_model": args.base_model,
        "eval_samples": args.eval_samples,
        "eval_max_length": args.eval_max_length,
        "eval_split": args.eval_split,
        "eval_batch_size": args.eval_batch_size,
        "device": args.device,
        "tune_weights": args.tune_weights,
        "tune_samples": args.tune_samples,
        "tune_steps": args.tune_steps,
    }


def _check_push_target(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> None:
    target = args.push
    if not target:
        return
    # "--push alice/math alice/med" reads alice/math as the target: with sources after it, that is
    # almost surely a source the user meant to merge, and pushing would overwrite that repo.
    if "--push" in argv:
        at = argv.index("--push")
        if argv[at + 1 : at + 2] == [target] and any(s in argv[at + 2 :] for s in args.sources):
            parser.error(
                f"--push took {target!r} as the target repo, but sources follow it; "
                "write --push=REPO_ID, or put --push after the sources"
            )
    try:
        validate_repo_id(target if "/" in target else f"user/{target}")
    except HFValidationError as err:
        parser.error(f"--push {target!r} is not a valid repo id ({err})")
    for text in args.sources:
        try:
            source = parse_source(text)
        except SourceError:
            continue
        if source.repo_id and not source.subfolder and source.repo_id.lower() == target.lower():
            parser.error(f"--push {target!r} is also a source; pushing would overwrite that adapter. Push elsewhere")


def _apply_recipe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.sources or args.weights:
        parser.error("--recipe gives the sources and weights; don't pass them too")
    try:
        recipe = json.loads(open(args.recipe, encoding="utf-8").read())
        args.sources = [entry["source"] for entry in recipe["sources"]]
        args.weights = [float(entry["weight"]) for entry in recipe["sources"]]
        args.dtype = args.dtype or recipe.get("dtype")
        args.method = recipe.get("method", "sum")
        for name, value in (recipe.get("method_parameters") or {}).items():
            setattr(args, name, value)
        args.allow_base_mismatch = args.allow_base_mismatch or bool(recipe.get("allow_base_mismatch"))
        args.allow_pickle = args.allow_pickle or bool(recipe.get("allow_pickle"))
    except OSError as err:
        raise InvalidArgumentError(f"--recipe {args.recipe}: cannot read it ({err.strerror})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidArgumentError(
            f"--recipe {args.recipe}: not a hubmerge recipe ({type(err).__name__}: {err}); "
            "it should be a hubmerge_recipe.json written by hubmerge"
        ) from None


def _dry_run_repo_id(result, repo_id: str | None, token) -> str:
    if repo_id and "/" in repo_id:
        return repo_id
    try:
        return result.resolve_repo_id(repo_id or None, token=token)
    except HubError:  # not logged in: a dry run still shows where it would go
        return f"<your-username>/{repo_id or result.default_repo_name()}"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _configure_logging(*, json_mode: bool) -> None:
    # The text report already lists the warnings; with --json they go to stderr
    # so stdout stays pure JSON.
    logger = logging.getLogger("hubmerge")
    logger.handlers.clear()
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hubmerge: warning: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if json_mode else logging.ERROR)


def _fail(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"hubmerge: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
