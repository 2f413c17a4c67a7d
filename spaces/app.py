"""hubmerge's Gradio Space: analyse, merge and publish LoRA adapters from a browser.

UI only. Every step is a call to hubmerge's public API (``hubmerge.merge``,
``MergeResult.files`` / ``push_to_hub``, ``hubmerge.figures.render_heatmap``);
this file holds no merge logic. Errors a user can act on
(``hubmerge.HubmergeError``) become ``gr.Error`` messages.

Tokens. A visitor's OAuth token reaches a handler as a ``gr.OAuthToken``
argument, is passed on to hubmerge for that one request, and is never stored,
logged or returned. On a Space, a signed-out visitor talks to the Hub
anonymously: the Space's own ``HF_TOKEN`` secret is never used for anyone.
Run locally, Gradio mocks the sign-in (see :func:`hub_token`).

Run it: ``python spaces/app.py`` (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``
choose host and port; ``HF_ENDPOINT`` another Hub). See ``spaces/README.md``.
"""

import html
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import pandas as pd
from gradio.utils import get_space
from huggingface_hub import get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image

import hubmerge
from hubmerge.figures import render_heatmap

logger = logging.getLogger("hubmerge.space")

# The merge methods offered, name -> one-line description, read from hubmerge's method registry:
# the CLI's --help and the model card read the same entries.
MERGE_METHODS: dict[str, str] = {name: method.description for name, method in hubmerge.METHODS.items()}
DEFAULT_METHOD = "sum"
REFERENCE_HINT = "user/repo[/subfolder][@revision]"
MAX_SLOTS = 16  # input rows the page can show, whatever the adapter limit says
DOWNLOAD_TTL_S = 3600  # zips of signed-out merges are removed after an hour


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; set with HUBMERGE_SPACE_MAX_ADAPTERS / HUBMERGE_SPACE_MAX_DOWNLOAD_MB."""

    max_adapters: int = 8
    max_download_bytes: int = 2 * 1024**3

    @classmethod
    def from_env(cls) -> "Limits":
        adapters = int(os.environ.get("HUBMERGE_SPACE_MAX_ADAPTERS", cls.max_adapters))
        megabytes = int(os.environ.get("HUBMERGE_SPACE_MAX_DOWNLOAD_MB", cls.max_download_bytes // 1024**2))
        if adapters < 2 or megabytes < 1:
            raise ValueError("HUBMERGE_SPACE_MAX_ADAPTERS must be ≥ 2 and HUBMERGE_SPACE_MAX_DOWNLOAD_MB ≥ 1")
        return cls(max_adapters=adapters, max_download_bytes=megabytes * 1024**2)

    def describe(self) -> str:
        return (
            f"at most {self.max_adapters} adapters per merge, and {self.max_download_bytes / 1024**2:,.0f} MB "
            "of adapter files in all (checked against the Hub's file sizes before anything is downloaded)"
        )


LIMITS = Limits.from_env()


class Analysis(NamedTuple):
    """What the Analyse button shows (in the order of its outputs)."""

    verdict: str  # Markdown: compatible, or every problem in words
    warnings: str  # Markdown
    heatmap: Image.Image | None  # the RMS-cosine heatmap
    matrix: pd.DataFrame | None  # the same matrix as a table
    per_module: pd.DataFrame | None  # report["similarity"]["per_module"]


class Merged(NamedTuple):
    """What Merge & push shows: the analysis of what was merged, where it went, or the zip to download."""

    verdict: str
    warnings: str
    heatmap: Image.Image | None
    matrix: pd.DataFrame | None
    per_module: pd.DataFrame | None
    status: str  # Markdown: the link to the pushed repo, or how to use the download
    download: str | None  # path of the zip (signed out), else None


# ---------------------------------------------------------------- handlers (called by the page and by the tests)


def analyse(
    references: Sequence[str | None],
    weights: Sequence[float | None],
    method: str = DEFAULT_METHOD,
    oauth_token: gr.OAuthToken | None = None,
    progress: Callable | None = None,
    *,
    rank: float | None = None,
    density: float = 0.5,
) -> Analysis:
    """Pull the adapters and report whether they can be merged, and how much they interfere.

    Incompatible adapters are an answer, not an error: the verdict lists every problem.

    Raises:
        gr.Error: a bad reference, weight or method; a Hub refusal; a limit passed.
    """
    sources, weight_values = _form(references, weights, method)
    step = progress or _no_progress
    step(0.05, desc="Pulling the adapters from the Hub")
    with _user_errors():
        try:
            report = _merge(sources, weight_values, hub_token(oauth_token), method, rank, density, report_only=True)
        except hubmerge.IncompatibleAdaptersError as err:
            return Analysis(_incompatible_verdict(err), "", None, None, None)
    step(0.9, desc="Drawing the heatmap")
    return _analysis(report.to_dict())


def merge_and_push(
    references: Sequence[str | None],
    weights: Sequence[float | None],
    method: str = DEFAULT_METHOD,
    repo_name: str | None = None,
    private: bool = False,
    oauth_token: gr.OAuthToken | None = None,
    oauth_profile: gr.OAuthProfile | None = None,
    progress: Callable | None = None,
    *,
    rank: float | None = None,
    density: float = 0.5,
) -> Merged:
    """Merge the adapters; signed in, push the merge to the user's namespace, else offer it as a zip.

    The push is hubmerge's ``MergeResult.push_to_hub``: one commit with the adapter, the model card
    (the same as the CLI's), the report, the recipe and the heatmap.

    Raises:
        gr.Error: anything that stops the merge or the push, in words.
    """
    sources, weight_values = _form(references, weights, method)
    signed_in = oauth_token is not None and oauth_profile is not None
    repo_id = _target_repo(repo_name, oauth_profile.username) if signed_in else None
    step = progress or _no_progress
    step(0.05, desc="Pulling the adapters from the Hub")
    token = hub_token(oauth_token)
    with _user_errors():
        result = _merge(sources, weight_values, token, method, rank, density)
    analysis = _analysis(result.report.to_dict())
    if not signed_in:
        step(0.9, desc="Packing the zip")
        path = _zip(result)
        status = (
            "### ↓ The merged adapter is ready to download\n"
            "You are not signed in, so nothing was pushed: **sign in with Hugging Face** to publish it to your "
            f"account. Unzip it and load the folder with `PeftModel.from_pretrained(base_model, "
            f'"{html.escape(result.default_repo_name())}")`.'
        )
        return Merged(*analysis, status, str(path))
    repo_id = repo_id or f"{oauth_profile.username}/{result.default_repo_name()}"
    step(0.8, desc=f"Pushing to {repo_id}")
    with _user_errors():
        commit = result.push_to_hub(repo_id, token=token, private=bool(private))
    url = str(commit.repo_url)
    status = (
        f"### ✓ Pushed to [{html.escape(repo_id)}]({url})\n"
        f"{'Private' if private else 'Public'} repository · one commit with the adapter, its model card, "
        f"the report, the recipe and the heatmap · [view the commit]({commit.commit_url})"
    )
    return Merged(*analysis, status, None)


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


# ---------------------------------------------------------------- the page


def build_demo(*, sign_in: bool = True, limits: Limits | None = None) -> gr.Blocks:
    """The page. ``sign_in=False`` leaves out the sign-in button (local runs without a Hub login)."""
    limits = limits or LIMITS
    slots = min(limits.max_adapters, MAX_SLOTS)
    with gr.Blocks(
        title="hubmerge: merge LoRA adapters exactly",
        analytics_enabled=False,
        delete_cache=(DOWNLOAD_TTL_S, DOWNLOAD_TTL_S),  # Gradio's copies of the zips
    ) as demo:
        gr.Markdown(
            "# hubmerge: merge LoRA adapters exactly, without the base model\n"
            "Give two or more PEFT LoRA adapters trained on the same base model. **Analyse** checks that they "
            "can be summed exactly and measures how much they interfere (RMS cosine of their weight deltas); "
            "**Merge & push** writes one adapter that applies all of them and publishes it to your account "
            "with a model card (signed out, you download it as a zip)."
        )
        with gr.Row(equal_height=True):
            if sign_in:
                gr.LoginButton(scale=0, min_width=320)
            who = gr.Markdown()

        gr.Markdown("## 1. Adapters")
        count = gr.State(2)
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
        merge_button = gr.Button("Merge & push", variant="primary")
        status = gr.Markdown(elem_id="status")
        download = gr.File(label="Merged adapter (zip)", interactive=False, visible=False, elem_id="download")
        gr.Markdown(f"Limits: {limits.describe()}.")

        analysis_outputs = [verdict, warnings, heatmap, matrix, per_module]
        form = {method, rank_box, density_box, *refs, *weights}

        # Gradio injects the visitor's token, profile and progress tracker by these parameters' types and defaults.
        def on_analyse(
            values: dict,
            oauth_token: gr.OAuthToken | None,
            progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
        ) -> Analysis:
            return analyse(
                [values[box] for box in refs],
                [values[box] for box in weights],
                values[method],
                oauth_token,
                progress,
                rank=values[rank_box],
                density=values[density_box],
            )

        def on_merge(
            values: dict,
            oauth_token: gr.OAuthToken | None,
            oauth_profile: gr.OAuthProfile | None,
            progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
        ):
            merged = merge_and_push(
                [values[box] for box in refs],
                [values[box] for box in weights],
                values[method],
                values[repo_name],
                values[private],
                oauth_token,
                oauth_profile,
                progress,
                rank=values[rank_box],
                density=values[density_box],
            )
            # The download box only shows when there is something to download.
            return merged._replace(download=gr.File(value=merged.download, visible=merged.download is not None))

        def on_add(shown: int):
            shown = min(shown + 1, slots)
            return shown, *(gr.Row(visible=i < shown) for i in range(slots))

        def on_remove(shown: int):
            shown = max(shown - 1, 2)
            cleared = [gr.Textbox(value="") if i >= shown else gr.skip() for i in range(slots)]
            return shown, *(gr.Row(visible=i < shown) for i in range(slots)), *cleared

        add.click(on_add, count, [count, *rows], queue=False, api_visibility="private")
        remove.click(on_remove, count, [count, *rows, *refs], queue=False, api_visibility="private")
        # Page-only endpoints: inputs given as a set reach the API in no stable order, and scripts have
        # hubmerge itself (`hubmerge.merge`, or `hubmerge ... --push`), which does the same.
        analyse_button.click(on_analyse, form, analysis_outputs, api_name="analyse", api_visibility="private")
        merge_button.click(
            on_merge,
            form | {repo_name, private},
            [*analysis_outputs, status, download],
            api_name="merge",
            api_visibility="private",
        )
        demo.load(_greeting, None, who, api_visibility="private")
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def _greeting(oauth_profile: gr.OAuthProfile | None) -> str:
    if oauth_profile is None:
        return "Not signed in: **Merge & push** gives you the merged adapter as a zip."
    return f"Signed in as **{html.escape(oauth_profile.username)}**: **Merge & push** publishes to your account."


# ---------------------------------------------------------------- helpers


def _no_progress(*args, **kwargs) -> None:
    pass


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn hubmerge's deliberate errors into ``gr.Error`` (their messages are written for people).

    Anything else is a bug: its traceback goes to the server log, the user gets a short message.
    Neither holds a token: hubmerge's messages never do, and a traceback shows no local variables.
    """
    try:
        yield
    except gr.Error:
        raise
    except hubmerge.LimitExceededError as err:
        raise _error(f"{err}. This Space allows {LIMITS.describe()}.", title="Over the limit") from None
    except hubmerge.HubmergeError as err:
        message = str(err)
        if get_space() is not None and isinstance(err, (hubmerge.RepoNotFoundError, hubmerge.GatedRepoAccessError)):
            message += ". On this Space, sign in with Hugging Face to reach your private or gated repos"
        raise _error(message, title="hubmerge could not do it") from None
    except Exception as err:
        logger.exception("unexpected error in the Space")
        raise _error(
            f"Something went wrong on our side ({type(err).__name__}). Please try again; if it keeps happening, "
            "report it with the adapters you used."
        ) from None


def _error(message: str, *, title: str = "Error") -> gr.Error:
    # gr.Error renders its message as HTML, and messages can quote names from a stranger's files.
    return gr.Error(html.escape(message, quote=False), title=title, duration=30, print_exception=False)


def _form(references, weights, method) -> tuple[list[hubmerge.Source], list[float]]:
    """The Hub sources and weights the user typed (empty rows skipped); gr.Error if something is off."""
    if method not in MERGE_METHODS:
        raise _error(f"Unknown merge method {method!r}: choose one of {', '.join(MERGE_METHODS)}.")
    rows = [(ref.strip(), weight) for ref, weight in zip(references, weights) if ref and ref.strip()]
    if len(rows) < 2:
        raise _error(f"Give at least two adapters, each as {REFERENCE_HINT}.")
    sources, values = [], []
    for text, weight in rows:
        with _user_errors():
            source = hubmerge.parse_source(text)
        if source.is_local:
            # The Space reads the Hub only: a path would read the server's own disk.
            raise _error(
                f"{text!r} is not a Hub reference: this Space reads adapters from the Hub, as {REFERENCE_HINT}."
            )
        if weight is None:
            raise _error(f"Give a weight for {text} (1 adds it as it is, -1 subtracts it).")
        sources.append(source)
        values.append(float(weight))
    return sources, values


def _merge(
    sources, weights, token, method, rank, density, *, report_only: bool = False
) -> "hubmerge.MergeResult | hubmerge.MergeReport":
    return hubmerge.merge(
        sources,
        weights=weights,
        method=method,
        rank=int(rank) if rank else None,
        density=float(density),
        token=token,
        report_only=report_only,
        max_adapters=LIMITS.max_adapters,
        max_download_bytes=LIMITS.max_download_bytes,
    )


def _target_repo(repo_name: str | None, username: str) -> str | None:
    """``user/name`` in the signed-in user's namespace (None: hubmerge's default name)."""
    name = (repo_name or "").strip()
    if not name:
        return None
    namespace, _, rest = name.rpartition("/")
    if namespace and namespace != username:
        raise _error(
            f"This Space pushes to your own account: give a repo name without '{namespace}/' "
            f"(it becomes {username}/{rest})."
        )
    repo_id = f"{username}/{rest}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise _error(f"{rest!r} is not a valid repo name: {err}") from None
    return repo_id


def _analysis(report: dict) -> Analysis:
    similarity = report["similarity"]
    heatmap = Image.open(io.BytesIO(render_heatmap(similarity)))
    return Analysis(
        _compatible_verdict(report), _warnings(report), heatmap, _matrix(similarity), _per_module(similarity)
    )


def _compatible_verdict(report: dict) -> str:
    sources, modules, base = report["sources"], report["modules"], report["base_model"]
    method = report["method"]
    lines = [
        f"### ✓ Compatible: these {len(sources)} adapters can be merged exactly",
        f"Method **{method}** ({MERGE_METHODS.get(method, method)}) · base model "
        f"`{_text(base['name'] or 'not named')}` ({_text(base['note'])}) · {modules['union']} modules adapted, "
        f"{modules['shared_by_all']} shared by all · interference ratio "
        f"{report['similarity']['interference_ratio']:.3g} (1 orthogonal, > 1 reinforcing, < 1 cancelling)",
        "",
        "| adapter | weight | r | alpha | modules | dtype | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sources:
        where = s["source"] + (f" @ {s['commit_sha'][:7]}" if s.get("commit_sha") else "")
        lines.append(
            f"| {_text(s['name'])} | {s['weight']:g} | {s['r']} | {s['lora_alpha']:g} | {s['num_modules']} "
            f"| {s['dtype']} | {_text(where)} |"
        )
    return "\n".join(lines)


def _incompatible_verdict(err: hubmerge.IncompatibleAdaptersError) -> str:
    count = len(err.problems)
    lines = [f"### ✗ Not compatible: {count} problem{'s' if count != 1 else ''}"]
    lines += [f"- {_text(problem.message)}" for problem in err.problems]
    lines.append("\nThese adapters cannot be summed exactly, so nothing can be merged or pushed.")
    return "\n".join(lines)


def _warnings(report: dict) -> str:
    notes = report["warnings"]
    if not notes:
        return "### Warnings\nNone: nothing suggests that these adapters interfere."
    return "\n".join([f"### Warnings ({len(notes)})", *(f"- ⚠ {_text(n['message'])}" for n in notes)])


def _matrix(similarity: dict) -> pd.DataFrame:
    names = similarity["adapters"]
    rows = [[name, *(_number(v) for v in row)] for name, row in zip(names, similarity["rms_cosine"])]
    return pd.DataFrame(rows, columns=["RMS cosine", *names])


def _per_module(similarity: dict) -> pd.DataFrame:
    rows = []
    for module, entry in similarity["per_module"].items():
        rows.append(
            [
                module,
                ", ".join(entry["adapters"]),
                ", ".join(f"{name}: {norm:.4g}" for name, norm in zip(entry["adapters"], entry["norms"])),
                ", ".join(f"{pair.replace('|', ' · ')}: {cos:.3g}" for pair, cos in entry["cosine"].items()) or "—",
                _number(entry["interference"]),
            ]
        )
    columns = ["module", "adapters", "‖ΔW‖ (Frobenius)", "cosine per pair", "interference ratio"]
    return pd.DataFrame(rows, columns=columns)


def _number(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def _text(value) -> str:
    # Names and messages can quote tensor names from a stranger's file: show them as text, never as HTML.
    return html.escape(str(value)).replace("|", "&#124;")


def _downloads_root() -> Path:
    root = Path(tempfile.gettempdir()) / "hubmerge-space-downloads"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def _zip(result: hubmerge.MergeResult) -> Path:
    """The merged adapter as ``<name>.zip`` holding a ``<name>/`` folder, in a fresh per-request directory."""
    root = _downloads_root()
    for old in root.iterdir():  # Gradio serves its own copy of each file; ours are only needed briefly
        if time.time() - old.stat().st_mtime > DOWNLOAD_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="merge-", dir=root))
    name = result.default_repo_name()
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for filename, data in result.files().items():
            archive.writestr(f"{name}/{filename}", data)
    return path


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo = build_demo(sign_in=True) if get_space() is not None else _local_demo()
    demo.launch(footer_links=["gradio", "settings"])


def _local_demo() -> gr.Blocks:
    """Locally, Gradio's sign-in mock reads this machine's Hub account (whoami) while the page is built;
    without one it cannot start, so the page goes without the sign-in button and Merge & push offers a zip."""
    reason = "there is no Hugging Face login on this machine (HF_TOKEN or `hf auth login`)"
    if get_token() is not None:
        try:
            return build_demo(sign_in=True)
        except Exception as err:  # whoami refused, or answered without a field Gradio's mock reads
            reason = f"Gradio's sign-in mock could not read the account ({type(err).__name__}: {err})"
    print(f"hubmerge Space: {reason}; the sign-in button is left out and Merge & push offers a zip.", file=sys.stderr)
    return build_demo(sign_in=False)


if __name__ == "__main__":
    main()
