"""The merge report: warnings as data, and the terminal rendering of the report.

The report itself is a JSON-able ``dict``; this module assembles it
(:func:`build_report`), holds :class:`Notice`, the one shape every warning
takes, and renders the readable summary the CLI prints (:func:`render_text`).
"""

from __future__ import annotations

from ._version import __version__
from .notice import Notice

__all__ = ["Notice", "build_report", "dtype_name", "output_summary", "render_text"]

REPORT_NAME = "hubmerge_report.json"


# The output dtypes a merge can be asked for, by name (as ``--dtype`` takes them).
DTYPE_CHOICES = ("float32", "float16", "bfloat16", "float64")


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def output_summary(ranks: dict[str, int], dtype) -> dict:
    """The ``output`` section: module count, most common / min / max rank, dtype."""
    values = sorted(ranks.values()) or [0]
    return {
        "num_modules": len(ranks),
        "rank": values[-1],  # the stored rank: every module is zero-padded to it
        "rank_min": values[0],
        "rank_max": values[-1],
        "padded_modules": sum(1 for v in values if v < values[-1]),
        "dtype": dtype_name(dtype),
    }


def build_report(
    adapters, weights, compat, sim: dict, notes, *, output, canonical, method: dict, exact: bool, kept_energy
) -> dict:
    """Assemble the JSON-able report of a merge (keys documented in the README)."""
    sources = []
    for adapter, weight in zip(adapters, weights):
        ranks = [spec.rank for spec in adapter.modules.values()] or [0]
        sources.append(
            {
                "name": adapter.name,
                "source": adapter.source,
                "repo_id": adapter.repo_id,
                "subfolder": adapter.subfolder,
                "commit_sha": adapter.commit_sha,
                "license": adapter.license,
                "datasets": adapter.datasets,
                "weight": weight,
                "r": adapter.config.r,
                "lora_alpha": adapter.config.lora_alpha,
                "use_rslora": adapter.config.use_rslora,
                "rank_pattern": adapter.config.rank_pattern,
                "alpha_pattern": adapter.config.alpha_pattern,
                "rank_min": min(ranks),
                "rank_max": max(ranks),
                "num_modules": len(adapter.modules),
                "dtype": dtype_name(adapter.dtype),
                "task_type": adapter.config.task_type,
                "base_model": adapter.config.base_model_name_or_path,
                "target_modules": adapter.config.target_modules,
            }
        )
    names = [a.name for a in adapters]
    only = {name: sum(1 for owners in compat.coverage.values() if owners == [i]) for i, name in enumerate(names)}
    return {
        "hubmerge_version": __version__,
        "method": method["name"],
        "method_info": method,
        "exact": exact,
        "kept_energy": kept_energy,
        "base_model": {
            "name": compat.base_model,
            "revision": compat.revision,
            "canonical": canonical.get(compat.base_model) if compat.base_model else None,
            "resolved": bool(compat.base_model and compat.base_model in canonical),
            "note": (
                "resolved on the Hub: aliases of one repo compare equal"
                if compat.base_model and compat.base_model in canonical
                else "not resolved against the Hub (offline, local, or not asked): compared by name, "
                "case-insensitively for Hub ids"
            ),
        },
        "sources": sources,
        "modules": {
            "union": len(compat.coverage),
            "shared_by_all": sum(1 for owners in compat.coverage.values() if len(owners) == len(adapters)),
            "only_in": only,
            "coverage": {key: [names[i] for i in owners] for key, owners in compat.coverage.items()},
        },
        "modules_to_save": [{"module": key, "from": names[i]} for key, i in compat.saved_modules.items()],
        "similarity": sim,
        "warnings": [note.to_dict() for note in notes],
        "output": output,
    }


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
            + (
                f" (effective {out['rank_min']}–{out['rank_max']}; {out['padded_modules']} module(s) zero-padded)"
                if out["rank_min"] != out["rank_max"]
                else ""
            )
            + f", dtype {out['dtype']}"
        )
    kept = (report.get("kept_energy") or {}).get("overall")
    if kept is not None:
        lines.append(f"kept energy: {100 * kept:.2f}% of ‖ΔW‖² of the method's dense result (per module in the report)")
    if report.get("evaluation"):
        from .evaluation.render import text_lines

        lines.append("")
        lines.extend(text_lines(report["evaluation"]))
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
