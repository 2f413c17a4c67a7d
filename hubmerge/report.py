"""The merge report: warnings as data, and the terminal rendering of the report.

The report itself is a JSON-able ``dict`` (see :func:`hubmerge.merge` for its
keys); this module holds :class:`Notice`, the one shape every warning takes,
and :func:`render_text`, the readable summary the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Notice", "render_text"]

REPORT_NAME = "hubmerge_report.json"


@dataclass(frozen=True)
class Notice:
    """A warning for the user: a stable ``code`` for machines, a ``message`` for people."""

    code: str
    message: str

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def render_text(report: dict) -> str:
    """A readable summary of a report for the terminal."""
    lines = []
    sources = report["sources"]
    lines.append(f"hubmerge {report['hubmerge_version']} — method: {report['method']} (exact: {report['exact']})")
    base = report["base_model"]
    lines.append(f"base model: {base['name'] or 'unknown'}" + (f" @ {base['revision']}" if base["revision"] else ""))
    lines.append("")
    header = ["adapter", "weight", "r", "alpha", "rsLoRA", "modules", "dtype", "source"]
    rows = [
        [
            s["name"],
            _num(s["weight"]),
            _ranks(s),
            _num(s["lora_alpha"]),
            "yes" if s["use_rslora"] else "no",
            str(s["num_modules"]),
            s["dtype"],
            s["source"],
        ]
        for s in sources
    ]
    lines.extend(_table(header, rows))

    sim = report["similarity"]
    names = sim["adapters"]
    if len(names) > 1:
        lines.append("")
        lines.append("RMS cosine of the weighted deltas (per pair, over shared modules):")
        lines.extend(
            _table(["", *names], [[a, *(_num(v, 3) for v in row)] for a, row in zip(names, sim["rms_cosine"])])
        )
        lines.append("")
        pairs = [
            [
                f"{names[i]} + {names[j]}",
                _num(sim["rms_cosine"][i][j], 4),
                _num(sim["mean_cosine"][i][j], 4),
                _num(sim["norm_weighted_cosine"][i][j], 4),
                _num(sim["a_overlap"][i][j], 3),
                str(sim["shared_modules"][i][j]),
            ]
            for i in range(len(names))
            for j in range(i + 1, len(names))
        ]
        lines.extend(_table(["pair", "rms cos", "mean cos", "norm-weighted", "A overlap", "shared modules"], pairs))
    lines.append("")
    lines.append(
        f"interference ratio ‖ΣΔW‖²/Σ‖ΔW‖²: {_num(sim['interference_ratio'], 4)} "
        "(1 orthogonal, >1 reinforcing, <1 cancelling)"
    )
    out = report.get("output")
    if out:
        lines.append(
            f"merged adapter: {out['num_modules']} modules, rank {out['rank']}"
            + (f" (per module {out['rank_min']}–{out['rank_max']})" if out["rank_min"] != out["rank_max"] else "")
            + f", dtype {out['dtype']}"
        )
    if report["warnings"]:
        lines.append("")
        lines.append(f"warnings ({len(report['warnings'])}):")
        lines.extend(f"  ! {w['message']}" for w in report["warnings"])
    return "\n".join(lines)


def _ranks(source: dict) -> str:
    low, high = source["rank_min"], source["rank_max"]
    return str(low) if low == high else f"{low}–{high}"


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()] + [
        fmt.format(*row).rstrip() for row in rows
    ]
