"""The ``hubmerge`` command: argv → :func:`hubmerge.merge` → text, and exit codes.

Exit codes: 0 success, 1 a user-facing error (incompatible adapters, missing
files, bad values; one or a few lines saying what to do), 2 bad usage.
Set ``HUBMERGE_DEBUG=1`` to see the traceback behind an error.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import NoReturn

from .cli_hints import HINTS, hint_for
from .cli_parser import build_parser, glue_negative_weights
from .errors import (
    HubError,
    HubmergeError,
    InvalidArgumentError,
    SourceError,
)
from .formatting import format_bytes
from .methods import MethodParams
from .output import check_writable
from .recipe import Recipe
from .report import render_text
from .sources import check_repo_id, parse_source

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "HINTS", "build_parser", "hint_for", "main", "run"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


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
    argv = glue_negative_weights(list(sys.argv[1:] if argv is None else argv))
    debug = os.environ.get("HUBMERGE_DEBUG", "") not in ("", "0")
    owns_freeze = gc.get_freeze_count() == 0  # nothing frozen yet: what this run freezes, it unfreezes
    token_flag = False  # a token given with --token: a rejected one is that value's to check, not the login's
    try:
        args = parser.parse_args(argv)
        token_flag = args.token is not None
        _configure_logging(json_mode=args.json)
        return _run(args, parser, argv)
    except SystemExit as exit_:  # argparse: --help, --version, bad usage
        return int(exit_.code or 0)
    except HubmergeError as err:
        _fail(str(err), debug, hint=hint_for(err, token_flag=token_flag))
        return EXIT_ERROR
    except OSError as err:  # disk full, permission denied: the user's to fix, not a bug
        _fail(f"{err.strerror or err} ({err.filename})" if err.filename else str(err), debug)
        return EXIT_ERROR
    except KeyboardInterrupt:
        # Outputs are written whole or not at all, and a push this run created a repo for deletes it again.
        print("hubmerge: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    finally:
        if owns_freeze:  # main() called in a long-lived process: its objects are collectable again
            gc.unfreeze()


def run() -> NoReturn:
    """The installed command (``hubmerge``, ``hf-merge``, ``python -m hubmerge``): :func:`main`, then exit.

    After a merge, Python's own shutdown frees torch's million objects and the merged tensors one
    at a time, ~0.4 s for ten Llama-3-8B adapters, memory the kernel takes back at once when the
    process ends. So the process ends here, after everything of that shutdown that anyone outside it
    can see: the ``atexit`` callbacks (coverage data, huggingface_hub's session, logging's handlers)
    and the standard streams. A thread that is not a daemon still running gets Python's own exit,
    which waits for it. Code that calls :func:`main` itself keeps its process as it was.
    """
    code = main()
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if any(t.is_alive() for t in others):
        raise SystemExit(code)
    atexit._run_exitfuncs()  # what the interpreter runs first on its way out, and all of it that has effects
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`hubmerge … | head`) or stream: nothing left to say
            pass
    os._exit(code)


def _import_heavy() -> None:
    """Import torch and the merge code (not for ``--help`` or a usage error), then freeze what they made.

    Importing torch leaves about a million objects to the garbage collector, and every full
    collection afterwards walks them all again (~80 ms each on 2 cores). ``gc.freeze`` moves the
    objects that exist now to a generation collections skip: the collector keeps working on
    everything the run itself makes, and a command that lives for one merge stops paying for
    torch's import again and again. A process that froze objects of its own (a pre-forking server)
    keeps its collector as it set it; :func:`main` unfreezes what this run froze when it returns.
    """
    host_froze = gc.get_freeze_count() > 0
    import torch  # noqa: F401

    if not host_froze:
        gc.freeze()
    from . import api  # noqa: F401

    if not host_froze:
        gc.freeze()


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
    if pushing and not args.dry_run:  # fail before the downloads and the merge, not after
        from .hub import check_logged_in

        check_logged_in(token=args.token)
    output = None
    if not args.report_only and (args.output or not pushing):
        output = args.output or _default_output(args.sources)
        check_writable(output, overwrite=args.overwrite)  # fail before the work, not after
    token = args.token
    _import_heavy()
    from .api import merge

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
    adapter = None  # where the serving commands find it: the folder written, else the repo pushed to
    if output is not None:
        written = result.save_pretrained(output, overwrite=args.overwrite, figure=figure)
        adapter = str(written)
        data["output"] = {**data["output"], "directory": str(written)}
        lines.append(f"saved to {written}/ — load it with peft.PeftModel.from_pretrained(base_model, {str(written)!r})")
    if pushing and args.dry_run:
        repo_id, blocker = _dry_run_target(result, args.push, token)
        adapter = adapter or repo_id
        files = result.files(repo_id=repo_id, figure=figure)
        data["push"] = {"repo_id": repo_id, "dry_run": True, "files": {n: len(b) for n, b in files.items()}}
        lines.append(
            f"dry run: would push to {repo_id} ({'private, ' if args.private else ''}one commit"
            f"{', as a pull request' if args.create_pr else ''}):"
        )
        lines.extend(f"  {name}  ({format_bytes(len(content))})" for name, content in files.items())
        lines.append("\n--- README.md (model card) ---\n" + files["README.md"].decode("utf-8"))
        if blocker is not None:  # last, where it is read: the card above is long
            hint = hint_for(blocker, token_flag=token is not None)
            lines.append(f"note: {blocker}" + (f"; {hint}" if hint else ""))
    elif pushing:
        pushed = result.push_to_hub(
            args.push or None,
            token=token,
            private=True if args.private else None,
            create_pr=args.create_pr,
            commit_message=args.commit_message,
            figure=figure,
        )
        data["push"] = {
            "repo_id": pushed.repo_id,
            "commit_url": pushed.commit_url,
            "pr_url": pushed.pr_url,
            "created_repo": pushed.created_repo,
            "changed": pushed.changed,
        }
        adapter = adapter or pushed.repo_id
        if pushed.pr_url:
            lines.append(f"pushed to {pushed.repo_url} — pull request: {pushed.pr_url}")
        elif not pushed.changed:
            lines.append(f"{pushed.repo_url} already holds exactly these files: no commit was made")
        else:
            made = "created and pushed to" if pushed.created_repo else "pushed to"
            lines.append(f"{made} {pushed.repo_url} ({pushed.commit_url})")
    _print(args, data, render_text(result.report, adapter=adapter), lines)
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


def _dry_run_target(result, repo_id: str | None, token) -> tuple[str, HubError | None]:
    """Where a dry run would push, and what would stop the real push (no token, a rejected one), or ``None``.

    A dry run needs no token: without one it still shows where it would go, and says the push needs one.
    """
    from .hub import check_logged_in

    try:
        check_logged_in(token=token)  # no request: a token that is set is only checked by whoami below
    except HubError as err:
        blocker: HubError | None = err
    else:
        blocker = None
    if repo_id and "/" in repo_id:
        return repo_id, blocker
    if blocker is None:
        try:
            return result.resolve_repo_id(repo_id or None, token=token), None
        except HubError as err:  # the Hub rejected the token: a dry run still shows where it would go
            blocker = err
    return f"<your-username>/{repo_id or result.default_repo_name()}", blocker


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
