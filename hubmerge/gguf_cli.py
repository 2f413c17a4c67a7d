"""The ``hubmerge-gguf`` command: write llama.cpp's GGUF LoRA file next to an existing PEFT adapter folder.

Exit codes as ``hubmerge``: 0 success, 1 an error (one line saying what to do), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .cli_hints import gguf_hint_for
from .errors import HubmergeError
from .gguf_export import DEFAULT_GGUF_TYPE, GGUF_NAME, GGUF_TYPES

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubmerge-gguf",
        description=f"Write {GGUF_NAME} (a llama.cpp LoRA adapter, for llama.cpp, llama-server and Ollama) next to "
        "the PEFT files of DIR. Only the base model's config.json is read, never its weights.",
        epilog="example: hubmerge-gguf merged/ --base HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "then:    llama-server -m base.gguf --lora merged/" + GGUF_NAME,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", metavar="DIR", help="a PEFT LoRA adapter folder (e.g. hubmerge's output)")
    parser.add_argument(
        "--base",
        metavar="DIR_OR_REPO",
        help="the base model's folder or Hub repo id, for its config.json (default: base_model_name_or_path)",
    )
    parser.add_argument(
        "--outtype",
        choices=GGUF_TYPES,
        default=DEFAULT_GGUF_TYPE,
        help=f"tensor type (default {DEFAULT_GGUF_TYPE}: the adapter's values exactly)",
    )
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {GGUF_NAME}")
    parser.add_argument("--token", help="Hub token for a Hub base (default: HF_TOKEN or `hf auth login`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    debug = os.environ.get("HUBMERGE_DEBUG", "") not in ("", "0")
    token_flag = False
    try:
        args = build_parser().parse_args(argv)
        token_flag = args.token is not None
        from .gguf_export import convert_to_gguf

        path = convert_to_gguf(
            args.directory, base=args.base, outtype=args.outtype, token=args.token, overwrite=args.overwrite
        )
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except (HubmergeError, OSError) as err:
        if debug:
            traceback.print_exc()
        hint = gguf_hint_for(err, token_flag=token_flag) if isinstance(err, HubmergeError) else None
        print(f"hubmerge-gguf: error: {err}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 1
    print(f"wrote {path} ({args.outtype}); serve it with: llama-server -m BASE_MODEL.gguf --lora {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
