"""The Evaluate section of the page: its components and its button, wired to ``evaluation.evaluate``.

Built inside ``app.build_demo``'s ``gr.Blocks``; the page passes the form's fields and how it reads them, so this
section measures exactly the adapters, weights and method the form shows.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import evaluation
import gradio as gr
from evaluation import EvalLimits

__all__ = ["build_evaluate_section"]


def build_evaluate_section(
    fields: list, form: Callable[[dict], dict], *, token_of: Callable, shown: Callable, steps: Callable
) -> None:
    """Add "4. Evaluate" to the page being built.

    Args:
        fields: the form's components (their values reach the handler as one dict).
        form: turns those values into the handlers' keyword arguments (references, weights, method, …).
        token_of: the credential a request gets from the visitor's OAuth token (``app.hub_token``).
        shown: calls a handler, turning its ``SpaceError`` into the page's ``gr.Error`` (``app._shown``).
        steps: wraps Gradio's progress tracker for a handler (``app._steps``).
    """
    limits = EvalLimits.from_env()
    gr.Markdown("## 4. Evaluate")
    missing = [name for name in ("transformers", "peft") if importlib.util.find_spec(name) is None]
    if missing:  # the Space was built without hubmerge's eval extra: say so instead of a button that fails
        gr.Markdown(
            f"Evaluation is not available on this Space: it needs {' and '.join(missing)} (hubmerge's `eval` "
            "extra), which this Space does not have installed."
        )
        return
    gr.Markdown(
        "Measure the merge on your text: the base model, each adapter alone and their merge are scored on each "
        "domain's first examples (mean negative log-likelihood per predicted token; lower is better), and "
        "*retention* says how much of what each adapter gained on its own domain the merge keeps. Upload one "
        "`.jsonl` (records with `text`, `prompt` + `completion`, `question` + `answer`, or chat `messages`; "
        "a `split` field selects `test`) or `.txt` file per adapter, **named after it** as the analysis shows it "
        "(`math.jsonl` for the adapter `math`), or name a Hub dataset. The merge is made in memory; nothing is "
        "pushed."
    )
    with gr.Row():
        files = gr.File(label="Evaluation data, one file per adapter", file_count="multiple", scale=2)
        with gr.Column(scale=1):
            datasets = gr.Textbox(label="Hub datasets (one NAME=user/dataset per line)", lines=2)
            samples = gr.Number(
                label=f"Examples per domain (at most {limits.max_samples})",
                value=min(8, limits.max_samples),
                precision=0,
                minimum=1,
                maximum=limits.max_samples,
            )
    button = gr.Button("Evaluate", variant="secondary")
    summary = gr.Markdown(elem_id="evaluation")
    table = gr.Dataframe(label="Losses per domain (nats per token) and retention", interactive=False)
    warnings = gr.Markdown(elem_id="evaluation-warnings")
    gr.Markdown(f"Evaluation limits: {limits.describe()}.")

    def on_evaluate(
        values: dict,
        oauth_token: gr.OAuthToken | None,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
    ):
        uploaded = [getattr(f, "name", f) for f in values[files] or ()]
        return shown(
            evaluation.evaluate,
            **form(values),
            files=uploaded,
            datasets=values[datasets],
            samples=values[samples],
            token=token_of(oauth_token),
            eval_limits=limits,
            progress=steps(progress),
        )

    button.click(on_evaluate, {*fields, files, datasets, samples}, [summary, table, warnings], api_visibility="private")
