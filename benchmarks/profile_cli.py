"""Where a hubmerge CLI run spends its time and memory: cProfile around ``hubmerge.cli.main``.

Prints one JSON object: the import time, the profiled run's wall time, the
hubmerge functions with the largest cumulative time, the builtins (torch,
safetensors) with the largest own time, and the process's memory at the end
split into anonymous memory and mapped files (``/proc/self/status``).

    python benchmarks/profile_cli.py ADAPTER_DIR ADAPTER_DIR... -o OUT --overwrite
"""

from __future__ import annotations

import time

START = time.perf_counter()

import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from contextlib import redirect_stdout  # noqa: E402

import hubmerge  # noqa: E402
from hubmerge.cli import main as hubmerge_main  # noqa: E402

# hubmerge's own code is what lives under the package's directory: a path test such as "/hubmerge/" in
# the file name also matches a checkout or virtualenv that happens to sit in a folder called hubmerge.
PACKAGE_DIR = os.path.dirname(os.path.abspath(hubmerge.__file__)) + os.sep

TOP = 14


def memory() -> dict[str, float]:
    """Peak and current RSS, and the current split into anonymous and file-backed pages, in MB."""
    status = open("/proc/self/status", encoding="ascii").read()
    found = {}
    for field in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        found[field] = int(match.group(1)) / 1024 if match else None
    return found


def main(argv: list[str]) -> int:
    imported = time.perf_counter() - START
    profiler = cProfile.Profile()
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        code = profiler.runcall(hubmerge_main, argv)
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # (file, line, name) → (calls, primitive calls, own, cumulative, callers)
    ours, builtins = [], []
    for (file, _line, name), (_, calls, own, cumulative, _) in stats.items():
        if file.startswith(PACKAGE_DIR):
            label = f"{file[len(PACKAGE_DIR) :].replace(os.sep, '/')}:{name}"
            ours.append({"function": label, "calls": calls, "own_s": own, "cumulative_s": cumulative})
        elif file == "~":
            builtins.append({"function": name, "calls": calls, "own_s": own, "cumulative_s": cumulative})
    ours.sort(key=lambda row: -row["cumulative_s"])
    builtins.sort(key=lambda row: -row["own_s"])
    print(
        json.dumps(
            {
                "returncode": code,
                "import_s": imported,
                "run_s": wall,
                "memory_at_end_mb": memory(),
                "hubmerge_functions": ours[:TOP],
                "builtins": builtins[:8],
            }
        )
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
