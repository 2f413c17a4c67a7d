"""hubmerge's Gradio Space: analyse, merge and publish LoRA adapters from a browser.

The page only: layout and wiring. What the buttons do is in ``handlers.py`` (plain functions, no Gradio
components), with the input policy in ``form.py`` and the repo / zip side in ``publish.py``; what they show in
``views.py`` (hubmerge's own card and heatmap renderers); what they say when something stops them in
``messages.py``. A ``SpaceError`` from a handler becomes a ``gr.Error`` here.

Tokens. A visitor's OAuth token reaches a handler as a ``gr.OAuthToken`` argument, is passed on to hubmerge for
that one request, and is never stored, logged or returned. On a Space, a signed-out visitor talks to the Hub
anonymously: the Space's own ``HF_TOKEN`` secret is never used for anyone. Run locally, Gradio mocks the sign-in
(see :func:`hub_token`).

Run it: ``python spaces/app.py`` or ``gradio spaces/app.py`` (reload mode; it reads the module-level ``demo``).
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` choose host and port, ``HF_ENDPOINT`` another Hub. Deploy it with
``hubmerge-space deploy USER/SPACE``. See ``spaces/README.md``.
"""

from __future__ import annotations

import html
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from gradio.utils import get_space
from huggingface_hub import get_token

# handlers, form, publish, views and messages sit next to this file (on a Space, so does the hubmerge package)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import handlers  # noqa: E402
from evaluation_page import build_evaluate_section  # noqa: E402
from handlers import DEFAULT_METHOD, MERGE_METHODS, Limits  # noqa: E402
from messages import REFERENCE_HINT, SpaceError  # noqa: E402

logger = logging.getLogger("hubmerge.space")

MAX_SLOTS = 16  # input rows the page can show, whatever the adapter limit says
EXAMPLES_FILE = Path(__file__).resolve().parent / "examples.json"  # written by `hubmerge-space deploy`


def hub_token(oauth_token: gr.OAuthToken | None) -> str | bool | None:
    """The credential for this request's Hub calls, for hubmerge's ``token=``.

    On a Space: the visitor's OAuth token, or ``False`` (anonymous) when signed out, so that the
    Space's own ``HF_TOKEN`` secret never acts for a visitor.

    Locally (not on a Space), Gradio mocks "Sign in with Hugging Face": ``gradio/oauth.py``
    (``attach_oauth`` → ``_add_mocked_oauth_routes`` / ``_get_mocked_oauth_info``) signs the page in
    as the account logged in on this machine (``HF_TOKEN`` or ``hf auth login``, asked with ``whoami``),
    but hands handlers the placeholder access token ``"mock-oauth-token-for-local-dev"``. So locally the
    machine's own login is used (``None``), which is the account the mock shows as signed in.
    """
    if get_space() is None:  # the test gradio itself uses to choose between real and mocked OAuth
        return None
    return oauth_token.token if oauth_token is not None else False


def load_examples(path: Path = EXAMPLES_FILE) -> list[dict]:
    """The examples a first visitor can click: ``[{"label", "adapters", "weights", "method"}]`` (none if no file)."""
    if not path.is_file():
        return []
    return json.loads(path.read_text())["examples"]


def build_demo(*, sign_in: bool = True, limits: Limits | None = None, examples: list[dict] | None = None) -> gr.Blocks:
    """The page.

    Args:
        sign_in: show "Sign in with Hugging Face" (locally it needs a Hub login on the machine).
        limits: what one request may ask for (default :class:`handlers.Limits`'s defaults).
        examples: example forms a visitor can click, as in ``examples.json``.

    Returns:
        The ``gr.Blocks``, queued; ``.launch()`` serves it.
    """
    limits = limits or Limits()
    examples = examples or []
    slots = min(limits.max_adapters, MAX_SLOTS)
    with gr.Blocks(
        title="hubmerge: merge LoRA adapters exactly",
        analytics_enabled=False,
        delete_cache=(handlers.DOWNLOAD_TTL_S, handlers.DOWNLOAD_TTL_S),  # Gradio's copies of the zips
    ) as demo:
        gr.Markdown(
            "# hubmerge: merge LoRA adapters exactly, without the base model\n"
            "Give two or more PEFT LoRA adapters trained on the same base model. **Analyse** checks that they "
            "can be summed exactly and measures how much they interfere (RMS cosine of their weight deltas); "
            "**Merge & push** writes one adapter that applies all of them and publishes it to your account "
            "with a model card (signed out, you download the same files as a zip)."
        )
        with gr.Row(equal_height=True):
            if sign_in:
                gr.LoginButton(scale=0, min_width=320)
            who = gr.Markdown()

        gr.Markdown("## 1. Adapters")
        saved = gr.BrowserState(None, storage_key="hubmerge-form")  # the form, kept across sign-in's reload
        count = gr.State(2)
        default_name = gr.State(None)
        if examples:
            with gr.Row():
                example_buttons = [gr.Button(f"Example: {e['label']}", size="sm") for e in examples]
        rows, refs, weights = [], [], []
        for i in range(slots):
            with gr.Row(visible=i < 2) as row:
                refs.append(gr.Textbox(label=f"Adapter {i + 1}", placeholder=REFERENCE_HINT, scale=4, max_lines=1))
                weights.append(gr.Number(label=f"Weight {i + 1}", value=1.0, scale=1, min_width=120))
            rows.append(row)
        with gr.Row():
            add = gr.Button("+ Add an adapter", size="sm", variant="secondary")
            remove = gr.Button("− Remove the last one", size="sm", variant="secondary")
        method = gr.Dropdown(
            label="Merge method",
            choices=[(f"{name}: {text}", name) for name, text in MERGE_METHODS.items()],
            value=DEFAULT_METHOD,
            interactive=len(MERGE_METHODS) > 1,
        )
        with gr.Row():
            rank_box = gr.Number(
                label="Rank per module (svd, ties, dare_*, magnitude_prune; empty: the method's default)",
                value=None,
                precision=0,
            )
            density_box = gr.Slider(
                0.05, 1.0, value=0.5, step=0.05, label="Density: share of entries kept (ties, dare_*, magnitude_prune)"
            )
        analyse_button = gr.Button("Analyse", variant="primary")

        gr.Markdown("## 2. Analysis")
        verdict = gr.Markdown(elem_id="verdict")
        warnings = gr.Markdown(elem_id="warnings")
        with gr.Row():
            heatmap = gr.Image(
                label="RMS cosine heatmap",
                type="pil",
                format="png",
                interactive=False,
                height=480,
                scale=3,
                elem_id="heatmap",
            )
            matrix = gr.Dataframe(
                label="RMS cosine, per pair of adapters", interactive=False, scale=2, elem_id="matrix"
            )
        with gr.Accordion("Per-module details", open=False):
            per_module = gr.Dataframe(label="Per module: norms, pairwise cosines, interference", interactive=False)

        gr.Markdown("## 3. Merge & publish")
        with gr.Row(equal_height=True):
            repo_name = gr.Textbox(
                label="Output repo name", placeholder="default: <adapter names>-merged", scale=3, max_lines=1
            )
            private = gr.Checkbox(label="Private repository", value=False, scale=1)
        target = gr.Markdown(elem_id="target")
        merge_button = gr.Button("Merge & push", variant="primary")
        status = gr.Markdown(elem_id="status")
        download = gr.File(label="Merged adapter (zip)", interactive=False, visible=False, elem_id="download")
        gr.Markdown(f"Limits: {limits.describe()}.")

        analysis_outputs = [verdict, warnings, heatmap, matrix, per_module, default_name]
        fields = [*refs, *weights, method, rank_box, density_box, repo_name, private]

        def form(values: dict) -> dict:
            return {
                "references": [values[box] for box in refs],
                "weights": [values[box] for box in weights],
                "method": values[method],
                "rank": values[rank_box],
                "density": values[density_box],
                "limits": limits,
            }

        build_evaluate_section(fields, form, token_of=hub_token, shown=_shown, steps=_steps)

        # Gradio injects the visitor's token, profile and progress tracker by these parameters' types and defaults.
        def on_analyse(
            values: dict,
            oauth_token: gr.OAuthToken | None,
            progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
        ):
            return _shown(handlers.analyse, **form(values), token=hub_token(oauth_token), progress=_steps(progress))

        def on_merge(
            values: dict,
            oauth_token: gr.OAuthToken | None,
            oauth_profile: gr.OAuthProfile | None,
            progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
        ):
            signed_in = oauth_token is not None and oauth_profile is not None
            merged = _shown(
                handlers.merge_and_push,
                **form(values),
                repo_name=values[repo_name],
                private=values[private],
                username=oauth_profile.username if signed_in else None,
                token=hub_token(oauth_token),
                progress=_steps(progress),
            )
            # The download box only shows when there is something to download.
            return merged._replace(download=gr.File(value=merged.download, visible=merged.download is not None))

        def on_target(
            name: str, default: str | None, oauth_token: gr.OAuthToken | None, oauth_profile: gr.OAuthProfile | None
        ):
            username = oauth_profile.username if oauth_token is not None and oauth_profile is not None else None
            return handlers.push_target(name, default, username, hub_token(oauth_token))

        def on_add(shown: int):
            shown = min(shown + 1, slots)
            return shown, *(gr.Row(visible=i < shown) for i in range(slots))

        def on_remove(shown: int):
            shown = max(shown - 1, 2)
            cleared = [gr.Textbox(value="") if i >= shown else gr.skip() for i in range(slots)]
            return shown, *(gr.Row(visible=i < shown) for i in range(slots)), *cleared

        def on_save(shown: int, *values):
            return {"count": shown, "fields": list(values)}

        def on_restore(stored: dict | None):
            if not stored or len(stored.get("fields", [])) != len(fields):
                return gr.skip(), *(gr.skip() for _ in rows), *(gr.skip() for _ in fields)
            shown = max(2, min(int(stored["count"]), slots))
            values = list(stored["fields"])
            rank_at = fields.index(rank_box)
            values[rank_at] = values[rank_at] or None  # an empty rank box reads 0: show it empty again
            return shown, *(gr.Row(visible=i < shown) for i in range(slots)), *values

        def fill(example: dict):
            def on_example():
                chosen = example["adapters"][:slots]
                shown = max(2, len(chosen))
                values = [chosen[i] if i < len(chosen) else "" for i in range(slots)]
                numbers = [float(example["weights"][i]) if i < len(chosen) else 1.0 for i in range(slots)]
                return (
                    shown, *(gr.Row(visible=i < shown) for i in range(slots)), *values, *numbers,
                    example.get("method", DEFAULT_METHOD),
                )  # fmt: skip

            return on_example

        private_api = {"queue": False, "api_visibility": "private"}
        add.click(on_add, count, [count, *rows], **private_api)
        remove.click(on_remove, count, [count, *rows, *refs], **private_api)
        for button, example in zip(example_buttons if examples else [], examples):
            button.click(fill(example), None, [count, *rows, *refs, *weights, method], **private_api)
        gr.on([box.change for box in fields] + [count.change], on_save, [count, *fields], saved, **private_api)
        # Page-only endpoints: the form's inputs reach the API as a set, in no stable order. Scripts call the
        # public `analyse` endpoint below instead.
        analyse_button.click(
            on_analyse, {*fields}, analysis_outputs, api_name="analyse_form", api_visibility="private"
        ).then(on_target, [repo_name, default_name], target, **private_api)
        merge_button.click(
            on_merge, {*fields}, [*analysis_outputs, status, download], api_name="merge", api_visibility="private"
        ).then(on_target, [repo_name, default_name], target, **private_api)
        gr.on([repo_name.blur, repo_name.submit], on_target, [repo_name, default_name], target, **private_api)
        demo.load(on_restore, saved, [count, *rows, *fields], **private_api).then(
            _greeting, None, who, **private_api
        ).then(on_target, [repo_name, default_name], target, **private_api)

        def analyse_endpoint(
            adapters: list[str], weights: list[float] | None = None, method: str = DEFAULT_METHOD
        ) -> dict:
            """Analyse public adapters: whether they can be merged exactly, and how much they interfere.

            Args:
                adapters: Hub references, user/repo[/subfolder][@revision].
                weights: one per adapter (default 1 each); negative subtracts.
                method: a merge method: sum, mean, svd, ties, dare_linear, dare_ties, magnitude_prune.

            Returns:
                {"compatible", "problems", "verdict" (Markdown), "report" (hubmerge's JSON report)}.
            """
            return _shown(handlers.analyse_api, adapters, weights, method, limits=limits)

        gr.api(analyse_endpoint, api_name="analyse")
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def _steps(progress) -> Callable[[float, str], None]:
    # gr.Progress is falsy, so it is wrapped, never tested for truth.
    return lambda fraction, description: progress(fraction, desc=description)


def _shown(handler, *args, **kwargs):
    """Call a handler; its ``SpaceError`` becomes the ``gr.Error`` the page shows."""
    try:
        return handler(*args, **kwargs)
    except SpaceError as err:
        # gr.Error renders its message as HTML, and messages can quote names from a stranger's files.
        raise gr.Error(
            html.escape(err.message, quote=False), title=err.title, duration=30, print_exception=False
        ) from None


def _greeting(oauth_profile: gr.OAuthProfile | None) -> str:
    if oauth_profile is None:
        return "Not signed in: **Merge & push** gives you the merged adapter as a zip."
    return f"Signed in as **{html.escape(oauth_profile.username)}**: **Merge & push** publishes to your account."


def make_demo(limits: Limits | None = None) -> gr.Blocks:
    """The page as this process should serve it: with sign-in where it can work, the limits and examples.

    Locally, Gradio's sign-in mock reads this machine's Hub account (whoami) while the page is built; without
    one it cannot start, so the page goes without the sign-in button and Merge & push offers a zip.
    """
    limits = limits or Limits.from_env()
    examples = load_examples()
    if get_space() is not None:
        return build_demo(sign_in=True, limits=limits, examples=examples)
    reason = "there is no Hugging Face login on this machine (HF_TOKEN or `hf auth login`)"
    if get_token() is not None:
        try:
            return build_demo(sign_in=True, limits=limits, examples=examples)
        except Exception as err:  # whoami refused, or answered without a field Gradio's mock reads
            reason = f"Gradio's sign-in mock could not read the account ({type(err).__name__}: {err})"
    print(f"hubmerge Space: {reason}; the sign-in button is left out and Merge & push offers a zip.", file=sys.stderr)
    return build_demo(sign_in=False, limits=limits, examples=examples)


# `gradio app.py` (reload mode) and tools look for a module-level `demo`.
demo = make_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo.launch(footer_links=["gradio", "settings"])
