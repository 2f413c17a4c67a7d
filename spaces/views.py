"""What the page shows for a report: hubmerge's own renderers, plus the few lines only the page needs.

The sources table and the method section (exactness, kept energy, output rank) are the model card's,
cut out of :func:`hubmerge.card.build_card`, and so are the serving verdicts (where the merged adapter runs,
with the commands), so the page and the card can never disagree; the heatmap
is :func:`hubmerge.figures.render_heatmap`. The page adds a one-line verdict, the warnings and two tables
(the RMS-cosine matrix and the per-module details) that the card has no room for.

No Gradio here: Markdown strings, pandas frames and PIL images.
"""

from __future__ import annotations

import html
import io
import math

import pandas as pd
from messages import space_words, without_cli_advice
from PIL import Image

import hubmerge
from hubmerge.card import build_card
from hubmerge.figures import render_heatmap

__all__ = ["card_sections", "incompatible_verdict", "matrix_table", "per_module_table", "verdict", "warnings_text"]


def card_sections(report: dict, *, repo_id: str, command: str = "") -> dict[str, str]:
    """The model card of ``report`` split at its ``##`` headings: heading → Markdown below it."""
    body = str(build_card(report, repo_id=repo_id, command=command or "hubmerge")).split("\n---\n", 1)[-1]
    sections: dict[str, str] = {}
    for chunk in body.split("\n## ")[1:]:
        heading, _, text = chunk.partition("\n")
        sections[heading.strip()] = text.strip()
    return sections


def verdict(report: dict, *, repo_id: str, merged: bool) -> str:
    """The verdict of a compatible set: exact or not (and what an inexact merge keeps), then the card's sections.

    Args:
        report: ``MergeResult.report``.
        repo_id: the repo the card would describe.
        merged: whether the tensors were built (Merge), or only analysed (Analyse). An analysis measures
            no kept energy, so for a method that is not always exact it says so instead of guessing.

    Returns:
        Markdown.
    """
    count = len(report["sources"])
    method = hubmerge.METHODS.get(report["method"])
    kept = (report.get("kept_energy") or {}).get("overall")
    if merged and report["exact"]:
        head = f"### ✓ Compatible: these {count} adapters were merged exactly (method {report['method']})"
    elif merged:
        share = "not measured" if kept is None else f"{100 * kept:.2f} %"
        head = (
            f"### ✓ Compatible, merged approximately: method {report['method']} is not exact; "
            f"it keeps {share} of the energy (‖ΔW‖²) of its dense result"
        )
    elif method is not None and method.exact:
        head = f"### ✓ Compatible: these {count} adapters can be merged exactly (method {report['method']})"
    else:
        head = (
            f"### ✓ Compatible: these {count} adapters can be summed exactly, but method {report['method']} "
            "approximates the sum: Merge measures how much of the energy it keeps"
        )
    # An analysis builds no tensors, so the report cannot know yet whether a truncation will cut anything.
    shown = report if merged else {**report, "exact": bool(method and method.exact)}
    sections = card_sections(shown, repo_id=repo_id)
    base = report["base_model"]
    interference = report["similarity"]["interference_ratio"]
    lines = [
        head,
        f"Base model `{_text(base['name'] or 'not named')}` ({_text(base['note'])}) · interference ratio "
        f"{_number(interference)} (1 orthogonal, > 1 reinforcing, < 1 cancelling)",
        "",
        "#### Sources",
        sections.get("Sources", ""),
        "",
        "#### Method (as in the model card)",
        space_words(sections.get("Method", "")),
        "",
        "#### Serving (as in the model card)",
        sections.get("Serving", ""),  # the engines' commands are theirs, not hubmerge's options: shown as they are
    ]
    return "\n".join(lines)


def incompatible_verdict(problems: list[str]) -> str:
    """Every reason the adapters cannot be summed, in the page's words."""
    count = len(problems)
    lines = [f"### ✗ Not compatible: {count} problem{'s' if count != 1 else ''}"]
    lines += [f"- {_text(without_cli_advice(problem))}" for problem in problems]
    lines.append("\nThese adapters cannot be summed exactly, so nothing can be merged or pushed.")
    return "\n".join(lines)


def warnings_text(report: dict) -> str:
    """The report's warnings, one bullet each (advice for the command line taken out)."""
    notes = report["warnings"]
    if not notes:
        return "### Warnings\nNone: nothing suggests that these adapters interfere."
    items = (f"- ⚠ {_text(without_cli_advice(note['message']))}" for note in notes)
    return "\n".join([f"### Warnings ({len(notes)})", *items])


def heatmap_image(report: dict) -> Image.Image:
    """hubmerge's heatmap of the pairwise RMS cosines, the PNG pushed with the card."""
    return Image.open(io.BytesIO(render_heatmap(report["similarity"])))


def matrix_table(similarity: dict) -> pd.DataFrame:
    """The RMS-cosine matrix, one row per adapter."""
    names = similarity["adapters"]
    rows = [[name, *(_number(v) for v in row)] for name, row in zip(names, similarity["rms_cosine"])]
    return pd.DataFrame(rows, columns=["RMS cosine", *names])


def per_module_table(similarity: dict) -> pd.DataFrame:
    """Per module: which adapters adapt it, their delta norms, the pairwise cosines and the interference ratio."""
    rows = []
    for module, entry in similarity["per_module"].items():
        norms = ", ".join(f"{name}: {_number(norm)}" for name, norm in zip(entry["adapters"], entry["norms"]))
        cosines = ", ".join(f"{pair.replace('|', ' · ')}: {_number(cos, 3)}" for pair, cos in entry["cosine"].items())
        rows.append([module, ", ".join(entry["adapters"]), norms, cosines or "—", _number(entry["interference"])])
    columns = ["module", "adapters", "‖ΔW‖ (Frobenius)", "cosine per pair", "interference ratio"]
    return pd.DataFrame(rows, columns=columns)


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def _text(value) -> str:
    # Names and messages can quote tensor names from a stranger's file: show them as text, never as HTML.
    return html.escape(str(value)).replace("|", "&#124;")
