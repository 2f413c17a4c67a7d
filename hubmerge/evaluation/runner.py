"""Measure a merge on real text: :func:`evaluate`, and the ``merge(..., eval_data=...)`` flow with tuning.

Per domain (a NAME mapped to the source of that display name) the same
examples are scored for the base, each source alone at weight 1, and the merge
hubmerge wrote; the report section ``report.evaluation`` holds the losses,
perplexities, retentions and costs (see :mod:`hubmerge.evaluation.metrics`).
With ``tune_weights`` the weights are tuned on the records that follow the
first ``samples`` of each split, and the numbers reported are on the first
``samples``, which the tuner never sees.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BaseModelError, EvaluationDataError, InvalidArgumentError
from ..interference import Thresholds, round_float
from .data import EvalData, parse_eval_spec, read_eval_data, tokenise
from .metrics import Score, domain_section, evaluation_notices

if TYPE_CHECKING:
    from ..report import MergeReport
    from ..result import MergeResult

__all__ = ["EvalDataLike", "evaluate", "merge_with_evaluation", "read_domains"]

EvalDataLike = Mapping[str, str | Path] | Sequence[str | tuple[str, str | Path] | EvalData]
MERGED, START = "merged", "merged_start"


def read_domains(eval_data: EvalDataLike, *, split: str = "test") -> list[EvalData]:
    """Read every domain's data (``{NAME: PATH}``, ``["NAME=PATH", …]``, pairs, or :class:`EvalData`).

    Raises:
        EvaluationDataError: a bad spec, a NAME given twice, or data that cannot be read.
    """
    items = list(eval_data.items()) if isinstance(eval_data, Mapping) else list(eval_data)
    if not items:
        raise EvaluationDataError("no evaluation data given: pass one or more NAME=PATH")
    domains = []
    for item in items:
        if isinstance(item, EvalData):
            domains.append(item)
            continue
        name, path = parse_eval_spec(item) if isinstance(item, str) else item
        domains.append(read_eval_data(str(name), path, split=split))
    names = [d.name for d in domains]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EvaluationDataError(f"evaluation data for {', '.join(twice)} given more than once; give each NAME once")
    return domains


def _mapping(domains: list[EvalData], names: Sequence[str]) -> dict[str, int]:
    names = list(names)
    unknown = [d.name for d in domains if d.name not in names]
    if unknown:
        raise EvaluationDataError(
            f"evaluation data {', '.join(unknown)} matches no source; NAME must be a source's display name "
            f"({', '.join(names)})"
        )
    return {d.name: names.index(d.name) for d in domains}


def _check_settings(samples: int, max_length: int, batch_size: int) -> None:
    for label, value in (("samples", samples), ("max_length", max_length), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"evaluation {label} must be a positive whole number, not {value!r}")
    if max_length < 2:
        raise InvalidArgumentError("evaluation max_length must be at least 2 tokens")


def _examples(domains, tokenizer, *, samples, max_length, offset=0, purpose="evaluation"):
    encoded = {}
    for data in domains:
        found = tokenise(data, tokenizer, samples=samples, max_length=max_length, offset=offset)
        if not found["examples"]:
            where = f"records {offset + 1}–{offset + samples}" if offset else f"the first {samples} records"
            raise EvaluationDataError(
                f"evaluation data {data.name}: no {purpose} example in {where} of {data.path}"
                + (f" (split {data.split})" if data.split else "")
                + (
                    f": {found['skipped']} could not be scored within max_length {max_length}"
                    if found["skipped"]
                    else ""
                )
                + ("; tuning needs records after those evaluated" if offset else "")
            )
        encoded[data.name] = found
    return encoded


def _open(adapters, report, base_model, revision, token, device, batch_size):
    from .model import Evaluator, load_base_model

    base_name = base_model or report.base_model.name
    if not base_name:
        raise BaseModelError("the adapters name no base model: give the base model to evaluate on")
    if base_model is None:
        revision = revision or report.base_model.revision
    base = load_base_model(str(base_name), revision=revision, token=token, device=device)
    return Evaluator(base, adapters, batch_size=batch_size)


def _measure(evaluator, domains, encoded, mapping, names: Sequence[str], merged: str) -> dict:
    examples = {data.name: encoded[data.name]["examples"] for data in domains}
    rows = {"base": None, "merged": merged, **{f"source {i}": name for i, name in enumerate(evaluator.sources)}}
    scored = {row: evaluator.scores(adapter, examples) for row, adapter in rows.items()}  # one switch per row
    out = {}
    for data in domains:
        section = domain_section(
            source=names[mapping[data.name]],
            base=Score(*scored["base"][data.name]),
            merged=Score(*scored["merged"][data.name]),
            sources={shown: Score(*scored[f"source {i}"][data.name]) for i, shown in enumerate(names)},
            examples=len(examples[data.name]),
            skipped=encoded[data.name]["skipped"],
            truncated=encoded[data.name]["truncated"],
        )
        out[data.name] = {**section, "data": data.describe()}
    return out


def evaluate(
    result,
    eval_data: EvalDataLike,
    *,
    sources: Sequence | None = None,
    base_model: str | Path | None = None,
    revision: str | None = None,
    samples: int = 32,
    max_length: int = 512,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 8,
    token: str | bool | None = None,
    thresholds: Thresholds | None = None,
):
    """Score the base, each source alone and the merged adapter on each domain's text.

    Args:
        result: a :class:`~hubmerge.MergeResult`.
        eval_data: ``{NAME: PATH}`` or ``["NAME=PATH", …]``; NAME is a source's display name,
            PATH a ``.jsonl`` / ``.txt`` file or a Hub dataset id (see :mod:`hubmerge.evaluation.data`).
        sources: the sources merged, in merge order (paths, Hub references or loaded adapters);
            default: the Hub sources of the result's recipe, at the commits merged (a result keeps
            local folders by name only, so local sources must be given).
        base_model: a local directory or Hub id; default the adapters' base (and its revision).
        revision: the base model's revision on the Hub.
        samples: the first N records of each domain's split are scored.
        max_length: at most L tokens per example.
        split: the split to read where records carry a ``split`` field.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        batch_size: examples per forward pass.
        token: Hub token for the base model (and the sources).
        thresholds: when ``merge_loses`` warns (``Thresholds.retention``).

    Returns:
        A copy of ``result`` whose ``report.evaluation`` holds ``base_model``, ``device``, ``dtype``,
        ``settings``, ``domains[NAME]`` (``examples``, ``tokens``, ``loss``, ``perplexity``,
        ``retention``, ``cost``, ``data``) and ``seconds``, and whose warnings add ``merge_loses``.

    Raises:
        EvaluationDataError, BaseModelError, EvaluationMemoryError, MissingDependencyError, HubError.

    Example:
        >>> result = hubmerge.evaluate(hubmerge.merge(["./math", "./medicine"]), {"math": "math.jsonl"})
        >>> result.report.evaluation["domains"]["math"]["retention"]
        {'math': 0.93}
    """
    from ..loading import load_adapters

    _check_settings(samples, max_length, batch_size)
    domains = read_domains(eval_data, split=split)
    names = list(result.report.names)
    mapping = _mapping(domains, names)
    if sources is None:
        local = [s.source for s in result.recipe.sources if not s.repo_id]
        if local:
            raise InvalidArgumentError(
                f"evaluation needs the source adapters, and the result names local ones by folder only "
                f"({', '.join(local)}): pass sources=[...] in merge order"
            )
        sources = [s.source for s in result.recipe.sources]
    adapters = load_adapters(sources, token=token)
    if len(adapters) != len(names):
        raise InvalidArgumentError(
            f"{len(adapters)} sources given for a merge of {len(names)}; give them all, in order"
        )
    started = time.perf_counter()
    evaluator = _open(adapters, result.report, base_model, revision, token, device, batch_size)
    try:
        encoded = _examples(domains, evaluator.base.tokenizer, samples=samples, max_length=max_length)
        evaluator.add_merge(MERGED, result)
        measured = _measure(evaluator, domains, encoded, mapping, names, MERGED)
    finally:
        evaluator.close()
    section = _section(evaluator, measured, samples, max_length, split, batch_size, started)
    return dataclasses.replace(result, report=_with_evaluation(result.report, section, thresholds))


def _section(evaluator, measured, samples, max_length, split, batch_size, started) -> dict:
    tokens = sum(d["tokens"] for d in measured.values())
    seconds = time.perf_counter() - started
    rows = 2 + len(evaluator.sources)
    return {
        "base_model": evaluator.base.describe(),
        "device": evaluator.device.type,
        "dtype": str(next(evaluator.base.model.parameters()).dtype).removeprefix("torch."),
        "settings": {"samples": samples, "max_length": max_length, "split": split, "batch_size": batch_size},
        "domains": measured,
        "seconds": round_float(seconds, 4),
        "tokens_per_second": round_float(rows * tokens / seconds, 4) if seconds > 0 else None,
        "tuning": None,
    }


def _with_evaluation(report, section: dict, thresholds: Thresholds | None):
    notes = evaluation_notices(section, thresholds or Thresholds())
    for note in notes:
        logging.getLogger("hubmerge.evaluation").warning(note.message)
    return dataclasses.replace(report, evaluation=section, warnings=(*report.warnings, *notes))


def merge_with_evaluation(
    merge: Callable,
    sources: Sequence,
    *,
    eval_data: EvalDataLike,
    merge_options: dict,
    base_model=None,
    samples: int = 32,
    max_length: int = 512,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 8,
    tune: bool = False,
    tune_samples: int | None = None,
    tune_steps: int | None = None,
) -> MergeResult | MergeReport:
    """``merge(sources, **merge_options)``, then measured; with ``tune``, merged again with tuned weights.

    Returns:
        The :class:`~hubmerge.MergeResult` (with the tuned weights when tuning) whose
        ``report.evaluation`` holds the measurements (and ``["tuning"]``); with
        ``report_only``, the :class:`~hubmerge.report.MergeReport` alone.
    """
    from ..methods import get_method

    _check_settings(samples, max_length, batch_size)
    tune_samples = samples if tune_samples is None else tune_samples
    if tune:
        _check_settings(tune_samples, max_length, batch_size)
    from ..loading import load_adapters

    domains = read_domains(eval_data, split=split)  # bad data fails before any download
    report_only = merge_options.get("report_only", False)
    options = {**merge_options, "report_only": False}
    token = options.get("token")
    adapters = load_adapters(
        sources,
        token=token,
        allow_pickle=options.get("allow_pickle", False),
        **{k: options[k] for k in ("max_adapters", "max_download_bytes") if k in options},
    )
    result = merge(adapters, **options)  # loaded adapters are used as they are: loaded once for both
    names = list(result.report.names)
    mapping = _mapping(domains, names)
    started = time.perf_counter()
    evaluator = _open(adapters, result.report, base_model, None, token, device, batch_size)
    try:
        tokenizer = evaluator.base.tokenizer
        encoded = _examples(domains, tokenizer, samples=samples, max_length=max_length)
        tuning: dict[str, Any] | None = None
        if tune:
            from .tune import DEFAULT_STEPS, tune_weights

            method = get_method(options.get("method", "sum"))
            start = [float(s.weight) for s in result.recipe.sources]  # the user's weights, before any scale
            tuning_set = _examples(
                domains, tokenizer, samples=tune_samples, max_length=max_length, offset=samples, purpose="tuning"
            )
            found = tune_weights(
                evaluator,
                {name: item["examples"] for name, item in tuning_set.items()},
                start,
                weight_scale=method.weight_scale,
                steps=DEFAULT_STEPS if tune_steps is None else tune_steps,
            )
            tuned = merge(adapters, **{**options, "weights": found["weights"]})
            evaluator.add_merge(START, result)
            start_measured = _measure(evaluator, domains, encoded, mapping, names, START)
            result = tuned
            tuning = {
                "method": method.name,
                "objective": "mean over domains of the token-weighted NLL of the tuning examples",
                "gradient": "exact"
                if method.name in ("sum", "mean")
                else "through the plain sum the method approximates",
                "tuning_examples": {name: len(item["examples"]) for name, item in tuning_set.items()},
                "tuning_records": f"records {samples + 1}–{samples + tune_samples} of each split",
                "steps": len(found["history"]) - 1,
                "start_weights": start,
                "weights": [round_float(w) for w in found["weights"]],
                "tuning_objective": {
                    "start": round_float(found["start_objective"], 9),
                    "tuned": round_float(found["objective"], 9),
                },
                "held_out": {
                    name: {
                        "loss": {"start": start_measured[name]["loss"]["merged"], "tuned": None},
                        "retention": {"start": start_measured[name]["retention"], "tuned": None},
                    }
                    for name in start_measured
                },
            }
        evaluator.add_merge(MERGED, result)
        measured = _measure(evaluator, domains, encoded, mapping, names, MERGED)
    finally:
        evaluator.close()
    section = _section(evaluator, measured, samples, max_length, split, batch_size, started)
    if tuning is not None:
        for name, held in tuning["held_out"].items():
            held["loss"]["tuned"] = measured[name]["loss"]["merged"]
            held["retention"]["tuned"] = measured[name]["retention"]
        start_mean = sum(h["loss"]["start"] for h in tuning["held_out"].values()) / len(tuning["held_out"])
        tuned_mean = sum(h["loss"]["tuned"] for h in tuning["held_out"].values()) / len(tuning["held_out"])
        tuning["held_out_mean_loss"] = {"start": round_float(start_mean, 9), "tuned": round_float(tuned_mean, 9)}
        tuning["tuned_beats_start"] = tuned_mean < start_mean
        section["tuning"] = tuning
    report = _with_evaluation(result.report, section, options.get("thresholds"))
    if report_only:  # the merge was built to be measured; only its report is returned
        return dataclasses.replace(report, output=None, kept_energy=None)
    return dataclasses.replace(result, report=report)
