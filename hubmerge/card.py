"""The model card of a merged adapter: a merge report in, a Hub ``ModelCard`` out.

Pure: no network, no files, no environment. The metadata is built with
huggingface_hub's ``ModelCardData`` so the Hub and PEFT read it as they read
any adapter's card; the body says what was merged, from which pinned commits,
how exactly, how much the sources interfere, and how to load and reproduce it.
Everything shown comes from the report and the arguments, and token-shaped
strings are masked, so a card can be pushed as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

# repocard_data only: huggingface_hub's ModelCard module imports its whole HfApi (~0.1 s), which a local
# merge writing README.md does not need; build_card wraps the same text in a ModelCard.
from huggingface_hub.repocard_data import ModelCardData

from .sources import is_repo_id

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from .report import MergeReport

from .serving import render_card as render_serving

__all__ = ["build_card", "card_text"]

HUB_URL = "https://huggingface.co"
PAPER_URL = "https://arxiv.org/abs/2508.11985"
RECIPE_NAME = "hubmerge_recipe.json"
TAGS = ["hubmerge", "lora", "merge", "peft"]

# PEFT task type → the transformers class the usage snippet loads the base model with.
_AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}
# User access tokens start with "hf_"; also mask the value of a --token option.
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}\b")
_TOKEN_OPTION = re.compile(r"(--token[= ])(\S+)")


def build_card(
    report: MergeReport | Mapping[str, Any], *, repo_id: str, command: str, heatmap_path: str | None = "similarity.png"
) -> ModelCard:
    """Write the model card of a merged adapter from its merge report.

    Args:
        report: the :class:`~hubmerge.report.MergeReport` of :func:`hubmerge.merge`
            (``result.report``), or its JSON form (``hubmerge_report.json``); the card is
            written from the JSON form, so it shows exactly what the report file says.
        repo_id: the repository the merged adapter goes to, ``user/name``.
        command: the command line that made the merge, shown verbatim under
            "Reproduce" (a ``--token`` value or ``hf_…`` string is masked).
        heatmap_path: where the card links the heatmap of
            :func:`hubmerge.figures.render_heatmap`, relative to the repo root;
            ``None`` leaves the image out.

    Returns:
        A ``huggingface_hub.ModelCard``: ``str(card)`` is the README.md text,
        ``card.data`` its metadata; ``card.push_to_hub`` / ``card.save`` write it.

    Example:
        >>> card = build_card(result.report, repo_id="me/math-medicine", command="hubmerge a b -o out")
        >>> card.data.base_model_relation
        'adapter'
    """
    from huggingface_hub import ModelCard

    return ModelCard(card_text(report, repo_id=repo_id, command=command, heatmap_path=heatmap_path))


def card_text(
    report: MergeReport | Mapping[str, Any], *, repo_id: str, command: str, heatmap_path: str | None = "similarity.png"
) -> str:
    """The README.md text of :func:`build_card` (the same arguments), without building a ``ModelCard``."""
    report = dict(report) if isinstance(report, Mapping) else report.to_dict()
    sources = report.get("sources") or []
    base = _base_model_id(report.get("base_model") or {})
    licence, licence_notes = _licence(sources)
    datasets = sorted({d for s in sources for d in (s.get("datasets") or [])})
    data = ModelCardData(
        library_name="peft",
        base_model=base,
        license=licence,
        datasets=datasets or None,
        tags=list(TAGS),
        # The merged repo IS one LoRA adapter of the base model: "adapter" is the relation that makes the Hub's
        # model tree list it under the base and PEFT load it on top of it. The source adapters are named in the
        # body instead; they cannot be base_model entries, which must be models, not adapters.
        base_model_relation="adapter" if base else None,
    )
    body = "\n\n".join(
        [
            f"# {repo_id.rstrip('/').rsplit('/', 1)[-1]}",
            _summary(report, base),
            *([_licence_warning(licence_notes)] if licence_notes else []),
            "## Sources\n\n" + _sources_table(sources),
            "## Method\n\n" + _method(report),
            "## Interference\n\n" + _interference(report, heatmap_path),
            *(["## Evaluation\n\n" + _evaluation(report["evaluation"])] if report.get("evaluation") else []),
            "## Usage\n\n" + _usage(report, base, repo_id),
            *(["## Serving\n\n" + render_serving(report["serving"], adapter=repo_id)] if report.get("serving") else []),
            "## Reproduce\n\n" + _reproduce(command),
        ]
    )
    return f"---\n{data.to_yaml()}\n---\n\n{_mask_tokens(body)}\n"


def _base_model_id(base: dict) -> str | None:
    name = base.get("canonical") or base.get("name")
    return name if name and is_repo_id(name) else None


def _licence(sources: list[dict]) -> tuple[str | None, dict]:
    """The common licence, or ``None`` and what stands in the way (``unknown`` / ``different``)."""
    unknown = [s["name"] for s in sources if not s.get("license")]
    known = {s["name"]: s["license"] for s in sources if s.get("license")}
    notes: dict = {}
    if unknown:
        notes["unknown"] = unknown
    if len(set(known.values())) > 1:
        notes["different"] = known
    # "other" means each repo's own terms: two "other" sources need not share a licence, so it is never inherited.
    if "other" in known.values() and not notes:
        notes["custom"] = [name for name, value in known.items() if value == "other"]
    if notes or not known:
        return None, notes
    return next(iter(known.values())), notes


def _licence_warning(notes: dict) -> str:
    lines = []
    if "different" in notes:
        listing = ", ".join(f"{name} ({value})" for name, value in notes["different"].items())
        lines.append(f"the sources have different licences: {listing}; check that you may combine them.")
    for name in notes.get("unknown", []):
        lines.append(f"the licence of {name} is unknown; check its terms before you use or share this merge.")
    for name in notes.get("custom", []):
        lines.append(f"{name} has a custom licence (`other`); read its terms before you use or share this merge.")
    text = "\n".join(f"> - {_inline(line)}" for line in lines)
    return f"> **Licence not set.** This card leaves `license` empty because\n{text}"


def _summary(report: dict, base: str | None) -> str:
    sources = report.get("sources") or []
    names = ", ".join(f"**{_inline(s['name'])}**" for s in sources)
    on = f"[{base}]({HUB_URL}/{base})" if base else _base_text(report)
    weights = {s.get("weight", 1.0) for s in sources}
    weighting = "summed" if weights == {1.0} else "summed with the weights listed below"
    exactness = (
        "The merge is exact: PEFT applies this one adapter as the weighted sum of the sources' weight updates."
        if report.get("exact")
        else "The merge is not exact: it approximates the sum of the sources' weight updates."
    )
    return (
        f"A LoRA adapter for {on}: {len(sources)} LoRA adapter{'s' if len(sources) != 1 else ''} ({names}) "
        f"{weighting} by hubmerge {report.get('hubmerge_version', '')} (method `{report.get('method')}`), without "
        f"loading the base model. {exactness}"
    )


def _base_text(report: dict) -> str:
    name = (report.get("base_model") or {}).get("name")
    return f"the base model `{_inline(name)}`" if name else "an unnamed base model"


def _sources_table(sources: list[dict]) -> str:
    rows = ["| name | repo | commit | rank | alpha | weight |", "|---|---|---|---|---|---|"]
    for s in sources:
        repo_id, sha = s.get("repo_id"), s.get("commit_sha")
        if repo_id:
            subfolder = s.get("subfolder")
            revision = sha or s.get("revision") or "main"
            repo = (
                f"[{repo_id}/{subfolder}]({HUB_URL}/{repo_id}/tree/{quote(revision, safe='')}/{quote(subfolder)})"
                if subfolder
                else f"[{repo_id}]({HUB_URL}/{repo_id})"
            )
            if sha:
                commit = f"[`{sha[:7]}`]({HUB_URL}/{repo_id}/tree/{sha})"
            else:
                commit = f"{_cell(s.get('revision') or 'default branch')} (not pinned)"
        else:
            digests = s.get("files_sha256") or {}
            pinned = ", ".join(f"{_cell(name)} `{digest[:12]}`" for name, digest in sorted(digests.items()))
            repo, commit = (
                f"`{_cell(s.get('source') or s['name'])}`",
                f"local folder (sha256: {pinned})" if pinned else "local",
            )
        low, high = s.get("rank_min"), s.get("rank_max")
        rank = str(low) if low == high else f"{low}–{high}"
        alpha = _number(s.get("lora_alpha")) + (" (rsLoRA)" if s.get("use_rslora") else "")
        rows.append(f"| {_cell(s['name'])} | {repo} | {commit} | {rank} | {alpha} | {_number(s.get('weight'))} |")
    return "\n".join(rows)


def _method(report: dict) -> str:
    out = report.get("output")
    info = report.get("method_info") or {}
    described = f" — {info['description']}" if info.get("description") else ""
    paper = f" ([paper]({info['paper']}))" if info.get("paper") else ""
    lines = [f"- method: `{report.get('method')}`{described}{paper}"]
    parameters = info.get("parameters") or {}
    if parameters:
        lines.append("- parameters: " + ", ".join(f"{k} = {_inline(str(v))}" for k, v in parameters.items()))
    if report.get("exact"):
        rounding = f", rounded once to {out['dtype']}" if out else ""
        lines.append(
            "- exact: the merged delta equals Σ wᵢ·sᵢ·Bᵢ·Aᵢ; rank concatenation: the sources' factors are stacked "
            f"along the rank with scale 1 (wᵢ the weight, sᵢ the source's LoRA scale){rounding}"
        )
    else:
        lines.append("- not exact: the merged delta is not the plain sum Σ wᵢ·sᵢ·Bᵢ·Aᵢ")
    kept = (report.get("kept_energy") or {}).get("overall")
    if kept is not None:
        lines.append(
            f"- kept energy: the low-rank result keeps {100 * kept:.2f}% of ‖ΔW‖²_F of the method's dense result "
            "(per module in `hubmerge_report.json`)"
        )
    if out:
        low, high = out["rank_min"], out["rank_max"]
        # Each module's rank is the sum of its sources' ranks, so it varies where the sources cover different modules.
        ranks = (
            f"rank {low}"
            if low == high
            else f"rank {out['rank']} (effective {low}–{high} per module; smaller modules are zero-padded)"
        )
        lines.append(f"- output: {ranks}, {out['num_modules']} modules, {out['dtype']}")
        if out.get("min_peft"):
            lines.append(
                f"- loads in PEFT ≥ {out['min_peft']}: the oldest release whose LoraConfig has every field written "
                "and whose LoRA wraps every layer kind adapted"
            )
    modules = report.get("modules") or {}
    if "union" in modules:
        lines.append(
            f"- modules: {modules['union']} adapted, {modules.get('shared_by_all', 0)} of them by every source"
        )
    for item in report.get("modules_to_save") or []:
        lines.append(f"- `{_inline(item['module'])}` is saved in full, carried over from {_inline(item['from'])}")
    return "\n".join(lines)


def _interference(report: dict, heatmap_path: str | None) -> str:
    sim = report.get("similarity") or {}
    names = [_cell(n) for n in sim.get("adapters") or []]
    parts = [
        f"RMS cosine: for each pair, the root mean square of the cosine between their weight deltas wᵢ·sᵢ·Bᵢ·Aᵢ "
        f"over the modules both adapt (0: orthogonal updates, 1: the same direction; [arXiv 2508.11985]({PAPER_URL}) "
        "uses it as its interference measure). It describes how the updates overlap, not what the merge keeps: in "
        "hubmerge's measurements on SmolLM2-135M (the retention of each adapter in sums and weighted merges of "
        "three domain adapters, three seeds, on held-out text) it did not predict retention across merges; "
        "between two versions of one merge, the one whose adapters shared their initial A (about 20 times the "
        "cosine) kept slightly less on average. Only an evaluation on text says what a merge keeps."
    ]
    matrix = sim.get("rms_cosine") or []
    if names and matrix:
        rows = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for name, row in zip(names, matrix):
            rows.append(f"| **{name}** | " + " | ".join(_number(v, 3) for v in row) + " |")
        parts.append("\n".join(rows))
    parts.append(
        f"Interference ratio ‖ΣΔW‖²/Σ‖ΔW‖²: **{_number(sim.get('interference_ratio'), 3)}** "
        "(1: orthogonal, > 1: the updates reinforce each other, < 1: they cancel)."
    )
    if heatmap_path:
        target = f"<{heatmap_path}>" if re.search(r"[\s()<>]", heatmap_path) else heatmap_path
        parts.append(f"![Heatmap of the pairwise RMS cosine of the source adapters]({target})")
    warnings = report.get("warnings") or []
    if warnings:
        parts.append("Warnings:\n\n" + "\n".join(f"- {_inline(w['message'])}" for w in warnings))
    else:
        parts.append("No interference warnings.")
    return "\n\n".join(parts)


def _evaluation(section: dict) -> str:
    from .evaluation.render import card_markdown

    return card_markdown(section)


def _usage(report: dict, base: str | None, repo_id: str) -> str:
    tasks = {s.get("task_type") for s in report.get("sources") or []}
    auto = _AUTO_CLASSES.get(tasks.pop(), "AutoModelForCausalLM") if len(tasks) == 1 else "AutoModelForCausalLM"
    revision = (report.get("base_model") or {}).get("revision")
    base_args = f'"{base or "BASE_MODEL"}"' + (f', revision="{revision}"' if revision else "")
    note = "" if base else "# The sources do not name a Hub base model: put the model they were trained on here.\n"
    return (
        "```python\n"
        f"from peft import PeftModel\nfrom transformers import {auto}\n\n{note}"
        f"model = {auto}.from_pretrained({base_args})\n"
        f'model = PeftModel.from_pretrained(model, "{repo_id}")\n'
        "```"
    )


def _reproduce(command: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", command)), default=0)
    fence = "`" * max(3, longest + 1)  # a fence longer than any backtick run inside the command
    return (
        f"{fence}bash\n{command}\n{fence}\n\n"
        f"`{RECIPE_NAME}` in this repository records the same inputs, pinned to the commits above."
    )


def _mask_tokens(text: str) -> str:
    return _TOKEN_OPTION.sub(r"\1***", _TOKEN.sub("hf_***", text))


def _number(value, digits: int | None = None) -> str:
    if value is None:
        return "—"
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _inline(text) -> str:
    """One line of Markdown: newlines folded so a value cannot break out of its bullet or quote."""
    return " ".join(str(text).split())


def _cell(text) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return _inline(text).replace("|", "\\|")
