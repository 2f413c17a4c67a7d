"""Timing child processes: whole-process wall time and peak RSS, and what the machine was.

Each measurement is a separate process, started with ``subprocess.Popen`` and
reaped with ``os.wait4``, whose resource usage is that one child's own: its
``ru_maxrss`` is the child's peak resident set (Linux: KiB). Wall time is
``time.perf_counter`` around start and reaping, so it includes the interpreter
start and every import, as a user would see it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Run:
    """One child process: its exit code, wall time, peak RSS and output."""

    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    load_before: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def json_tail(self) -> dict:
        """The last stdout line that is a JSON object (the child scripts print one)."""
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{") and line.endswith("}"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        return {}

    def error(self) -> str:
        why = "timed out" if self.timed_out else f"exit code {self.returncode}"
        tail = " | ".join(self.stderr.strip().splitlines()[-3:])[-400:]
        return f"{why}: {tail}"


def run_child(argv: list[str], *, env: dict | None = None, timeout: float | None = None, cwd=None) -> Run:
    """Run ``argv`` to completion; measure its wall time and its own peak RSS."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        killed = threading.Event()

        def kill():
            killed.set()
            os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        return Run(
            argv=list(argv),
            returncode=proc.returncode,
            wall_s=wall,
            peak_rss_mb=usage.ru_maxrss / 1024,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            load_before=load_before,
            timed_out=killed.is_set(),
        )


@dataclass
class Series:
    """Repeated runs of one measurement: medians, spread, and failures."""

    runs: list[Run] = field(default_factory=list)

    @property
    def good(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    def wall(self) -> float | None:
        good = self.good
        return statistics.median(r.wall_s for r in good) if good else None

    def rss(self) -> float | None:
        good = self.good
        return statistics.median(r.peak_rss_mb for r in good) if good else None

    def to_dict(self) -> dict:
        return {
            "wall_s": self.wall(),
            "peak_rss_mb": self.rss(),
            "runs": [
                {
                    "wall_s": r.wall_s,
                    "peak_rss_mb": r.peak_rss_mb,
                    "returncode": r.returncode,
                    "timed_out": r.timed_out,
                    "load_before": r.load_before,
                    **({"child": r.json_tail()} if r.ok else {}),
                    **({} if r.ok else {"error": r.error()}),
                }
                for r in self.runs
            ],
            "argv": self.runs[0].argv if self.runs else None,
        }


def mem_available_gb() -> float:
    """MemAvailable from /proc/meminfo, in GiB (0 where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


_VERSIONS = """
import json, torch
found = {"torch_threads": torch.get_num_threads(), "versions": {}}
for name in ("torch", "peft", "transformers", "safetensors", "hubmerge"):
    try:
        found["versions"][name] = __import__(name).__version__
    except Exception as err:
        found["versions"][name] = "unavailable (" + type(err).__name__ + ")"
print(json.dumps(found))
"""


def machine(python: str) -> dict:
    """CPU model, cores, memory, OS, and the library versions ``python`` sees (asked in a child process,
    so that this process never imports torch: see :func:`own_peak_rss_mb`)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    total = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    child = run_child([python, "-c", _VERSIONS])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(total, 1),
        "mem_available_gb": round(mem_available_gb(), 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **(child.json_tail() or {"versions": {"error": child.error()}}),
    }


def own_peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``), in MB.

    On exec, Linux folds the peak of the memory image being replaced (the
    parent's, copied at fork) into the new process's ``ru_maxrss``, so a child
    can never report less than its parent used when it was started. The
    orchestrator therefore stays small (it never imports torch) and records
    this figure: every child's peak must be well above it to be the child's own.
    ``VmHWM`` belongs to the current memory image only, so, unlike
    ``ru_maxrss``, it is not inflated by whatever started this process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def wait_for_idle(max_wait_s: float, threshold: float = 1.0, poll_s: float = 10.0) -> tuple[float, float]:
    """Wait up to ``max_wait_s`` for the 1-minute load average to fall below ``threshold``.

    Returns:
        (seconds waited, load average at the end).
    """
    start = time.monotonic()
    while os.getloadavg()[0] >= threshold and time.monotonic() - start < max_wait_s:
        time.sleep(poll_s)
    return time.monotonic() - start, os.getloadavg()[0]
