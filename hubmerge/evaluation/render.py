"""The evaluation section shown to people: terminal lines, and the model card's measured table.

Pure: a report section (``report.evaluation``) in, text out. Every number
shown is one the section holds.
"""

from __future__ import annotations

from pathlib import PurePath

from ..formatting import markdown_table, text_table

__all__ = ["card_markdown", "text_lines"]


def _loss(value, ppl=None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" + (f" ({ppl:.3g})" if ppl is not None else "")


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _base_line(section: dict, *, public: bool = False) -> str:
    """The base model in words; ``public`` (the card) names a local directory by its config, not its path."""
    base = section["base_model"]
    where = f"revision {base['revision']}" if base.get("revision") else "local directory"
    if base.get("weights_sha256"):
        where += f", weights sha256 {base['weights_sha256'][:12]}…"
    if public and not base.get("revision"):
        named = base.get("config_name")
        label = f"`{_cell(named)}`" if named and _is_hub_id(named) else "a local model"  # never a local path
        return f"{label} ({where})"
    named = base.get("config_name")
    if public and named and not _is_hub_id(named):  # a Hub model's config names its cache folder: never shown
        named = None
    named = f" ({named})" if named and named != base["id"] else ""
    return f"{base['id']}{named}, {where}"


def _names(section: dict) -> list[str]:
    first = next(iter(section["domains"].values()))
    return list(first["loss"]["sources"])


def text_lines(section: dict) -> list[str]:
    """The terminal table: per domain, the loss (perplexity) of every row, retention and cost."""
    names = _names(section)
    lines = [
        f"evaluation — mean NLL per predicted token, nats (perplexity); base: {_base_line(section)}; "
        f"{section['device']}, {section['dtype']}, {section['seconds']:.1f} s",
    ]
    header = ["domain", "examples", "tokens", "base", *names, "merged", "retention", "vs best source"]
    rows = []
    for name, d in section["domains"].items():
        loss, ppl = d["loss"], d["perplexity"]
        kept = d["retention"].get(d["source"])
        cost = d["cost"]
        rows.append(
            [
                name,
                str(d["examples"]),
                str(d["tokens"]),
                _loss(loss["base"], ppl["base"]),
                *(_loss(loss["sources"][n], ppl["sources"][n]) for n in names),
                _loss(loss["merged"], ppl["merged"]),
                _ratio(kept),
                f"{cost['loss_delta']:+.4f} ({cost['best_source']})",
            ]
        )
    lines.extend(text_table(header, rows).splitlines())
    tuning = section.get("tuning")
    if tuning:
        weights = ", ".join(f"{n} {w:g}" for n, w in zip(names, tuning["weights"]))
        start = ", ".join(f"{n} {w:g}" for n, w in zip(names, tuning["start_weights"]))
        mean = tuning["held_out_mean_loss"]
        lines.append(
            f"tuned weights: {weights} (start: {start}); held-out mean loss {mean['start']:.4f} → {mean['tuned']:.4f}: "
            + ("tuned beats the start" if tuning["tuned_beats_start"] else "tuned does NOT beat the start")
        )
    return lines


def card_markdown(section: dict) -> str:
    """The card's "Evaluation" section: what was measured, on which data and base, and the table."""
    names = _names(section)
    settings = section["settings"]
    lines = [
        f"Measured by hubmerge on the base model {_base_line(section, public=True)} "
        f"({section['device']}, {section['dtype']}): "
        "the mean negative log-likelihood per predicted token (natural log, token-weighted; lower is better), "
        "perplexity in brackets. Each source is scored alone at weight 1; *merged* is this adapter. Retention = "
        "(L_base − L_merged) / (L_base − L_source) on the source's own domain: 1 keeps all the source gained.",
        "",
    ]
    for name, d in section["domains"].items():
        data = d["data"]
        label = PurePath(data["path"]).name if data["kind"] == "file" else data["path"]
        split = f", split {data['split']}" if data.get("split") else ""
        digest = f", sha256 `{data['sha256']}`" if data.get("sha256") else ""
        revision = f", revision `{data['revision']}`" if data.get("revision") else ""
        lines.append(
            f"- {_cell(name)}: on {d['examples']} examples ({d['tokens']} predicted tokens, at most "
            f"{settings['max_length']} per example) of `{_cell(label)}`{split}{digest}{revision}"
        )
    lines.append("")
    header = ["domain", "base", *names, "merged", "retention"]
    rows = []
    for name, d in section["domains"].items():
        loss, ppl = d["loss"], d["perplexity"]
        rows.append(
            [
                name,
                _loss(loss["base"], ppl["base"]),
                *(_loss(loss["sources"][n], ppl["sources"][n]) for n in names),
                f"**{_loss(loss['merged'], ppl['merged'])}**",
                _ratio(d["retention"].get(d["source"])),
            ]
        )
    lines.append(markdown_table(header, rows))
    tuning = section.get("tuning")
    if tuning:
        mean = tuning["held_out_mean_loss"]
        weights = ", ".join(f"{_cell(n)} {w:g}" for n, w in zip(names, tuning["weights"]))
        start = ", ".join(f"{_cell(n)} {w:g}" for n, w in zip(names, tuning["start_weights"]))
        verdict = "lower" if tuning["tuned_beats_start"] else "not lower"
        lines += [
            "",
            f"The weights were tuned on other records of the same splits ({tuning['tuning_records']}): {weights} "
            f"(start: {start}). On the examples above, which the tuning never saw, the mean loss went from "
            f"{mean['start']:.4f} (start) to {mean['tuned']:.4f} (tuned): {verdict}.",
        ]
    return "\n".join(lines)


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
