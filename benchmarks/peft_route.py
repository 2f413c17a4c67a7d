"""The route users take today: a base model, PEFT, ``add_weighted_adapter``, ``save_pretrained``.

Phases, each timed: import transformers and PEFT; build the bfloat16 base
model (from its config, standing in for a download, or from a local
checkpoint); ``PeftModel.from_pretrained`` with the first adapter and
``load_adapter`` for the others; ``add_weighted_adapter``; ``save_pretrained``
of the merged adapter alone. Prints one JSON object with the phases.

    python benchmarks/peft_route.py --shape 1b --base config --combination cat -o OUT ADAPTER_DIR...
    python benchmarks/peft_route.py --shape 1b --save-base DIR     # write the base checkpoint once
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from synth import SHAPES  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402


def build_base(shape_name: str, base: str):
    if base == "config":
        config = LlamaConfig(**SHAPES[shape_name].llama_config())
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="*")
    parser.add_argument("--shape", choices=list(SHAPES), required=True)
    parser.add_argument("--base", default="config", help="'config' or a local checkpoint directory")
    parser.add_argument("--combination", default="cat", help="add_weighted_adapter's combination_type")
    parser.add_argument("--svd-rank", type=int)
    parser.add_argument("--density", type=float)
    parser.add_argument("-o", "--output")
    parser.add_argument("--save-base", metavar="DIR", help="only build the base from its config and save it")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    phases = {"import": time.perf_counter() - START}

    start = time.perf_counter()
    model = build_base(args.shape, "config" if args.save_base else args.base)
    phases["build_base"] = time.perf_counter() - start
    if args.save_base:
        start = time.perf_counter()
        model.save_pretrained(args.save_base)
        phases["save_base"] = time.perf_counter() - start
        print(json.dumps({"phases": phases}))
        return 0

    start = time.perf_counter()
    names = [f"a{i}" for i in range(len(args.adapters))]
    model = PeftModel.from_pretrained(model, args.adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], args.adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    phases["load_adapters"] = time.perf_counter() - start

    start = time.perf_counter()
    extra = {}
    if args.svd_rank is not None:
        extra["svd_rank"] = args.svd_rank
    if args.density is not None:
        extra["density"] = args.density
    model.add_weighted_adapter(names, [1.0] * len(names), "merged", combination_type=args.combination, **extra)
    phases["add_weighted_adapter"] = time.perf_counter() - start

    start = time.perf_counter()
    model.save_pretrained(args.output, selected_adapters=["merged"])
    phases["save"] = time.perf_counter() - start
    print(json.dumps({"phases": phases}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
