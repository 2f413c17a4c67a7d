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

from ._version import __version__
from .errors import (
    EvaluationMemoryError,
    GatedRepoAccessError,
    GGUFExportError,
    HubError,
    HubmergeError,
    IncompatibleAdaptersError,
    InvalidArgumentError,
    LimitExceededError,
    OutputExistsError,
    PushError,
    RepoNotFoundError,
    RevisionNotFoundError,
    SourceError,
    UnsafeAdapterError,
)
from .formatting import format_bytes
from .gguf_export import GGUF_TYPES
from .limits import DEFAULT_MAX_ADAPTERS, DEFAULT_MAX_DOWNLOAD_BYTES, parse_size
from .methods import MAJORITY_SIGN_CHOICES, METHODS, MethodParams
from .output import check_writable
from .recipe import Recipe
from .report import DTYPE_CHOICES, render_text
from .sources import check_repo_id, parse_source

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# The next step for an error, in this command's words: (exception type, reason) → hint. The library says
# what is wrong; only the front end knows its own flags. Looked up along the exception's MRO, the reason
# first (IncompatibleAdaptersError: any of its problems' codes), then None for the type as a whole.
HINTS: dict[tuple[type[HubmergeError], str | None], str] = {
    (
        UnsafeAdapterError,
        "pickle_only",
    ): "convert it to adapter_model.safetensors, or pass --allow-pickle if you trust it",
    (IncompatibleAdaptersError, "base_model_mismatch"): (
        "pass --allow-base-mismatch if they really are the same weights"
    ),
    (OutputExistsError, "not_empty"): "choose another output (-o) or pass --overwrite",
    (OutputExistsError, "not_a_directory"): "choose another output path (-o DIR)",
    (LimitExceededError, "max_adapters"): "raise the limit (set with --max-adapters N, or none for no limit)",
    (LimitExceededError, "max_download_bytes"): (
        "check the repo ids, or raise the limit (set with --max-download-size SIZE, or none for no limit)"
    ),
    (InvalidArgumentError, "dtype_overflow"): "use --dtype float32 or bfloat16, or smaller --weights",
    (InvalidArgumentError, "weight_overflow"): "use smaller --weights",
    (InvalidArgumentError, "bad_recipe"): "a recipe holds sources, weights, method, method_parameters and dtype only",
    (InvalidArgumentError, "bad_fit"): "write --fit vllm or --fit vllm=MAX with MAX one of 1, 8, 16, 32, 64, 128, "
    "256, 320, 512",
    (GGUFExportError, "no_base_model"): "give the base model with --gguf-base DIR_OR_REPO",
    (GGUFExportError, "unsupported_architecture"): "leave out --gguf and run llama.cpp's convert_lora_to_gguf.py",
    (GGUFExportError, "gguf_missing"): "pip install 'hubmerge[gguf]'",
    (RepoNotFoundError, None): "check the name; for a private repo log in with `hf auth login` or set HF_TOKEN",
    (RevisionNotFoundError, None): "check the branch, tag or commit sha",
    (GatedRepoAccessError, None): "request access on the repo's page, then use that account's token (`hf auth login`)",
    (HubError, "offline"): "run once with network access, or unset HF_HUB_OFFLINE",
    (EvaluationMemoryError, "batch_size"): "lower --eval-batch-size (or --eval-max-length)",
    (EvaluationMemoryError, "max_length"): "lower --eval-max-length",
    (HubError, "not_logged_in"): "run `hf auth login`, set HF_TOKEN, or give --push a full repo id (user/name)",
    (HubError, "token_rejected"): "log in again with `hf auth login`",
    (HubError, "moved"): "run the command again",
    (PushError, "no_write_access"): (
        "push to your own namespace, use --create-pr to open a pull request, or log in with a write token"
    ),
    (
        PushError,
        "public_repo",
    ): "--private does not change an existing repo: make it private on the Hub, or push elsewhere",
}


def hint_for(err: HubmergeError) -> str | None:
    """The CLI's next step for ``err``, from :data:`HINTS`."""
    reasons = getattr(err, "reasons", None) or {err.reason}
    for kind in type(err).__mro__:
        for reason in sorted(r for r in reasons if r):
            if (kind, reason) in HINTS:
                return HINTS[(kind, reason)]
        if (kind, None) in HINTS:
            return HINTS[(kind, None)]
    return None


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
    parser.add_argument(
        "--recipe",
        metavar="FILE",
        help="replay a hubmerge_recipe.json: its sources, weights, method and dtype (flags given here win)",
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
        help="also write adapter_model.gguf for llama.cpp / Ollama (TYPE: f32 (default), f16, bf16)",
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
    except HubmergeError as err:
        _fail(str(err), debug, hint=hint_for(err))
        return EXIT_ERROR
    except OSError as err:  # disk full, permission denied: the user's to fix, not a bug
        _fail(f"{err.strerror or err} ({err.filename})" if err.filename else str(err), debug)
        return EXIT_ERROR
    except KeyboardInterrupt:
        # Outputs are written whole or not at all, and a push this run created a repo for deletes it again.
        print("hubmerge: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    recipe = _read_recipe(args, parser) if args.recipe else None
    if recipe is not None:
        _apply_recipe(args, recipe)
    if not args.sources:
        parser.error("give at least one SOURCE (or --recipe FILE)")
    pushing = args.push is not None
    if (args.dry_run or args.private or args.create_pr or args.commit_message) and not pushing:
        parser.error("--dry-run, --private, --create-pr and --commit-message go with --push")
    if args.gguf_base and not args.gguf:
        parser.error("--gguf-base goes with --gguf")
    if args.report_only and (pushing or args.output or args.gguf):
        parser.error("--report-only writes nothing; it cannot be combined with --push, -o or --gguf")
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

    defaults = MethodParams()
    options = dict(
        weights=args.weights,
        method=args.method or "sum",
        rank=args.rank,
        density=defaults.density if args.density is None else args.density,
        majority_sign=args.majority_sign or defaults.majority_sign,
        seed=defaults.seed if args.seed is None else args.seed,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        allow_base_mismatch=args.allow_base_mismatch,
        token=token,
        max_adapters=args.max_adapters,
        max_download_bytes=args.max_download_size,
        max_rank=args.max_rank,
        fit=args.fit,
        **_evaluation_options(args),
    )
    if args.report_only:
        report = merge(args.sources, report_only=True, **options)
        _print(args, report.to_dict(), render_text(report), [])
        return EXIT_OK
    result = merge(args.sources, **options)
    if args.gguf:
        from .gguf_export import attach_gguf

        result = attach_gguf(result, base=args.gguf_base, outtype=args.gguf, token=token)
    data = result.report.to_dict()
    lines = []
    figure = not args.no_figure
    if output is not None:
        written = result.save_pretrained(output, overwrite=args.overwrite, figure=figure)
        data["output"] = {**data["output"], "directory": str(written)}
        lines.append(f"saved to {written}/ — load it with peft.PeftModel.from_pretrained(base_model, {str(written)!r})")
    if pushing and args.dry_run:
        repo_id = _dry_run_repo_id(result, args.push, token)
        files = result.files(repo_id=repo_id, figure=figure)
        data["push"] = {"repo_id": repo_id, "dry_run": True, "files": {n: len(b) for n, b in files.items()}}
        lines.append(
            f"dry run: would push to {repo_id} ({'private, ' if args.private else ''}one commit"
            f"{', as a pull request' if args.create_pr else ''}):"
        )
        lines.extend(f"  {name}  ({format_bytes(len(content))})" for name, content in files.items())
        lines.append("\n--- README.md (model card) ---\n" + files["README.md"].decode("utf-8"))
    elif pushing:
        pushed = result.push_to_hub(
            args.push or None,
            token=token,
            private=True if args.private else None,
            create_pr=args.create_pr,
            commit_message=args.commit_message,
        )
        data["push"] = {
            "repo_id": pushed.repo_id,
            "commit_url": pushed.commit_url,
            "pr_url": pushed.pr_url,
            "created_repo": pushed.created_repo,
            "changed": pushed.changed,
        }
        if pushed.pr_url:
            lines.append(f"pushed to {pushed.repo_url} — pull request: {pushed.pr_url}")
        elif not pushed.changed:
            lines.append(f"{pushed.repo_url} already holds exactly these files: no commit was made")
        else:
            made = "created and pushed to" if pushed.created_repo else "pushed to"
            lines.append(f"{made} {pushed.repo_url} ({pushed.commit_url})")
    _print(args, data, render_text(result.report, adapter=str(written) if output is not None else args.push), lines)
    return EXIT_OK


def _print(args: argparse.Namespace, data: dict, text: str, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        for line in lines:
            print(line, file=sys.stderr)
        return
    print(text)
    if lines:
        print()
    for line in lines:
        print(line)


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
        check_repo_id(target if "/" in target else f"user/{target}")
    except InvalidArgumentError as err:
        parser.error(f"--push {target!r}: {err}")
    for text in args.sources:
        try:
            source = parse_source(text)
        except SourceError:
            continue
        if source.repo_id and not source.subfolder and source.repo_id.lower() == target.lower():
            parser.error(f"--push {target!r} is also a source; pushing would overwrite that adapter. Push elsewhere")


def _read_recipe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Recipe:
    """The recipe file, read through :meth:`Recipe.from_dict`'s allow-list; nothing is fetched before."""
    if args.sources:
        parser.error("--recipe gives the sources; don't pass them too")
    try:
        with open(args.recipe, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as err:
        raise InvalidArgumentError(f"--recipe {args.recipe}: cannot read it ({err.strerror})", reason="recipe") from err
    except (ValueError, RecursionError) as err:
        raise InvalidArgumentError(
            f"--recipe {args.recipe}: not JSON ({type(err).__name__}); a recipe is the hubmerge_recipe.json of a merge",
            reason="recipe",
        ) from err
    recipe = Recipe.from_dict(data, where=f"--recipe {args.recipe}")
    recipe.check_local_sources()
    # What the original merge needed consent for needs the consent of whoever replays it, not of the file.
    needed = [
        flag
        for flag, recorded, given in (
            ("--allow-pickle", recipe.needs_allow_pickle, args.allow_pickle),
            ("--allow-base-mismatch", recipe.needs_allow_base_mismatch, args.allow_base_mismatch),
        )
        if recorded and not given
    ]
    if needed:
        raise InvalidArgumentError(
            f"--recipe {args.recipe}: the recorded merge used {' and '.join(needed)}; a recipe cannot turn "
            f"{'them' if len(needed) > 1 else 'it'} on. Pass {' '.join(needed)} yourself if you trust its sources",
            reason="recipe_consent",
        )
    return recipe


def _apply_recipe(args: argparse.Namespace, recipe: Recipe) -> None:
    """Fill what the command line left unset from the recipe: flags given win."""
    args.sources = recipe.references
    if args.weights is None:
        args.weights = recipe.weights
    if args.method is None:
        args.method = recipe.method
        # The recipe's parameters belong to its method; with another --method they do not apply.
        for name, value in recipe.method_parameters.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.dtype is None:
        args.dtype = recipe.dtype
    if args.max_rank is None:
        args.max_rank = recipe.max_rank
    if args.fit is None:
        args.fit = recipe.fit


def _dry_run_repo_id(result, repo_id: str | None, token) -> str:
    if repo_id and "/" in repo_id:
        return repo_id
    try:
        return result.resolve_repo_id(repo_id or None, token=token)
    except HubError:  # not logged in: a dry run still shows where it would go
        return f"<your-username>/{repo_id or result.default_repo_name()}"


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


def _fail(message: str, debug: bool, *, hint: str | None = None) -> None:
    if debug:
        traceback.print_exc()
    # One line where the message is one line: the next step follows it after a semicolon.
    if hint and "\n" not in message:
        message = f"{message}; {hint}"
    elif hint:
        message = f"{message}\n  → {hint}"
    print(f"hubmerge: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
