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

from . import __version__
from .api import DTYPE_CHOICES, merge
from .errors import HubmergeError, SourceError
from .output import check_writable
from .report import render_text
from .sources import parse_source

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples:
  hubmerge ./math ./medicine -o merged             sum two local adapters
  hubmerge ./math ./medicine --weights 1,0.5       weighted sum
  hubmerge ./base-task ./unwanted --weights=1,-1   task negation (use '=' before a leading minus)
  hubmerge ./math ./medicine --report-only --json  interference analysis only, as JSON

exit codes: 0 success, 1 error (message says what to do), 2 bad usage.
HUBMERGE_DEBUG=1 shows tracebacks.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubmerge",
        description=(
            "Merge PEFT LoRA adapters exactly (rank concatenation of Σ wᵢ·sᵢ·Bᵢ·Aᵢ), without the base "
            "model, and report how much they interfere (RMS cosine of their weight deltas)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="adapter directory or user/repo[/sub][@rev]")
    parser.add_argument("--weights", type=_weights, help="comma-separated weight per source (default 1 each)")
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
    parser.add_argument("--version", action="version", version=f"hubmerge {__version__}")
    return parser


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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    _configure_logging(json_mode=args.json)
    debug = os.environ.get("HUBMERGE_DEBUG", "") not in ("", "0")
    try:
        return _run(args)
    except HubmergeError as err:
        _fail(str(err), debug)
        return EXIT_ERROR
    except OSError as err:  # disk full, permission denied: the user's to fix, not a bug
        _fail(f"{err.strerror or err} ({err.filename})" if err.filename else str(err), debug)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("hubmerge: interrupted; nothing was written", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    output = None
    if not args.report_only:
        output = args.output or _default_output(args.sources)
        check_writable(output, overwrite=args.overwrite)  # fail before the work, not after
    result = merge(
        args.sources,
        weights=args.weights,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        allow_base_mismatch=args.allow_base_mismatch,
        report_only=args.report_only,
    )
    written = None
    if output is not None:
        written = result.save_pretrained(output, overwrite=args.overwrite)
    if args.json:
        report = dict(result.report)
        if written is not None:
            report["output"] = {**report["output"], "directory": str(written)}
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(render_text(result.report))
        if written is not None:
            print(f"\nsaved to {written}/ — load it with peft.PeftModel.from_pretrained(base_model, {str(written)!r})")
    return EXIT_OK


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
