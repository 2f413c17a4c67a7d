"""Write the retention section into the results page, with its plot and its raw points.

The section sits between two HTML comments in ``RESULTS.md``; the ``report`` stage keeps it
when it redraws the rest of the page, and this stage replaces only it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .retention import adapter_dir, adapters_of, merges
from .retention_report import BOOTSTRAP, analyses, calibration, plot, points, section

BEGIN = "<!-- retention: written by `python -m experiments.paper retention-report` -->"
END = "<!-- /retention -->"


def write_retention(cache: Path, settings: dict, seeds: list[int], page: Path, *, command: str) -> dict:
    """Measure nothing: read the cached scores, compute signals and statistics, write page, plot, JSON.

    Returns:
        ``{"points": rows, "analyses": stats}`` as written to ``retention.json`` beside the page.
    """
    rows = points(cache, settings, seeds)
    draws = 200 if settings["quick"] else BOOTSTRAP  # the quick mode shows the page, not the precision
    stats = analyses(rows, draws=draws)
    plot_path = page.with_name("retention.png")
    if rows:
        plot(rows, plot_path)
    planned = sum(w > 0 for plan in merges(seeds) for w in plan["weights"])  # subtracted sources are no points
    body = section(rows, stats, planned=planned, plot_name=plot_path.name, seeds=seeds, draws=draws, settings=settings)
    body += _training_note(cache, settings, seeds)
    body += f"\n*Regenerate with* `{command}`.\n"
    calibrated = calibration(rows, stats)
    body += calibration_table(calibrated)
    result = {"seeds": seeds, "planned": planned, "points": rows, "analyses": stats, "calibration": calibrated}
    page.with_name("retention.json").write_text(json.dumps(result, indent=1) + "\n")
    replace_section(page, body)
    return result


def replace_section(page: Path, body: str) -> None:
    """Put ``body`` between the markers of ``page`` (appended, with the markers, when absent)."""
    text = page.read_text() if page.exists() else ""
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block
    page.write_text(text)


def kept_section(page: Path) -> str:
    """The retention block of an existing page (markers included), or ``""``."""
    text = page.read_text() if page.exists() else ""
    if BEGIN in text and END in text:
        return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"
    return ""


def calibration_table(found: dict) -> str:
    from hubmerge import Thresholds

    defaults = Thresholds()
    lines = ["\n### hubmerge's thresholds against these runs\n", "| threshold | set by these runs | default | basis |",
             "|---|---|---|---|"]  # fmt: skip
    for key, entry in found.items():
        value = "—" if entry["value"] is None else f"{entry['value']:g}"
        lines.append(f"| `{key}` | {value} | {getattr(defaults, key):g} | {entry['why']} |")
    lines.append(f"| `retention` | — | {defaults.retention:g} | a choice, not a calibration: below it a merge keeps "
                 "less than half of what the source gained on its own domain |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _training_note(cache: Path, settings: dict, seeds: list[int]) -> str:
    """Where each adapter came from: trained here (seconds), or taken from a folder with the same training."""
    trained, copied = [], []
    for domain, seed in adapters_of(seeds):
        path = adapter_dir(cache, settings, domain, seed) / "training.json"
        if not path.exists():
            continue
        info = json.loads(path.read_text())
        name = f"`{domain}-seed{seed}`"
        if "copied_from" in info:
            copied.append(f"{name} is `{info['copied_from']}`: {info.get('note', '')}.")
        else:
            trained.append(f"{name} {info['seconds']:.0f} s")
    lines = []
    if trained:
        lines.append("Trained for this section (on a shared 2-core CPU): " + ", ".join(trained) + ".")
    lines += copied
    return ("\n" + "\n\n".join(lines) + "\n") if lines else ""
