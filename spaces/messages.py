"""What the Space says when something stops a request: hubmerge's words, then the Space's own next step.

hubmerge's messages say what is wrong; the next step depends on the front end. The command line can offer
flags, this page cannot: it offers sign-in, the form's fields and nothing else. So each message is hubmerge's
first line (with any advice written for the command line taken out, :func:`without_cli_advice`), followed by
one hint per exception type and reason code from :data:`HINTS`, in the Space's words.

No Gradio here: these are plain strings, turned into ``gr.Error`` by the page.
"""

from __future__ import annotations

import inspect
import re

import hubmerge
from hubmerge.errors import lookup_hint

__all__ = ["HINTS", "REFERENCE_HINT", "SpaceError", "explain", "hint_for", "space_words", "without_cli_advice"]

REFERENCE_HINT = "user/repo[/subfolder][@revision]"

# (exception type, reason) -> the next step on this page, as the CLI's table is for the command line. Looked up
# along the exception's class hierarchy, its reason first (an IncompatibleAdaptersError: any of its problems'
# codes), then None for the type as a whole; so a new subclass or reason gets its parent's hint until it has
# its own row.
HINTS: dict[tuple[type[BaseException], str | None], str] = {
    (hubmerge.SourceError, None): f"Write each adapter as {REFERENCE_HINT}.",
    (hubmerge.UnsafeAdapterError, None): (
        "This Space only reads adapter_model.safetensors: convert the adapter's weights to safetensors "
        "and add them to its repo."
    ),
    (hubmerge.AdapterNotFoundError, None): (
        "Check the repo id and the subfolder: each adapter needs adapter_config.json and adapter_model.safetensors."
    ),
    (hubmerge.AdapterFormatError, None): "Check that this repo holds a PEFT LoRA adapter saved with save_pretrained.",
    (hubmerge.AdapterError, None): "Check that this repo holds a PEFT LoRA adapter.",
    (hubmerge.IncompatibleAdaptersError, "base_model_mismatch"): (
        "This Space merges adapters of one base model only: choose adapters trained on the same one."
    ),
    (hubmerge.IncompatibleAdaptersError, None): (
        "Choose adapters trained on the same base model, with the same settings."
    ),
    (hubmerge.EvaluationDataError, None): (
        "Check the evaluation data: each record needs text, prompt + completion, question + answer or messages."
    ),
    (hubmerge.BaseModelError, None): "Evaluate on the base model the adapters were trained on.",
    (hubmerge.EvaluationMemoryError, None): "Evaluate fewer or shorter examples at a time, or with more memory.",
    (hubmerge.MissingDependencyError, None): "Install the optional extra the message names.",
    (hubmerge.InvalidArgumentError, "weight_overflow"): "Use smaller weights.",
    (hubmerge.InvalidArgumentError, "dtype_overflow"): "Use smaller weights.",
    (hubmerge.InvalidArgumentError, None): "Change the value named above in the form.",
    (hubmerge.GGUFExportError, None): (
        "This Space publishes the PEFT adapter only; convert it to GGUF on your machine with hubmerge-gguf."
    ),
    (hubmerge.GatedRepoAccessError, None): (
        "Ask for access on the repo's page, then sign in with Hugging Face with the account that has it."
    ),
    (hubmerge.RepoNotFoundError, None): (
        "Check the spelling; if the repo is private, sign in with Hugging Face with an account that can read it."
    ),
    (hubmerge.RevisionNotFoundError, None): (
        "Check the branch, tag or commit after @, or leave @… out for the default branch."
    ),
    (hubmerge.PushError, "public_repo"): (
        "Make the repo private in its settings on the Hub first, or untick Private repository, or type another "
        "repo name."
    ),
    (hubmerge.PushError, None): "Sign in with an account that may write there, or type another output repo name.",
    (hubmerge.HubError, "moved"): "Someone pushed to that repo meanwhile: press Merge & push again.",
    (hubmerge.HubError, "not_logged_in"): "Sign in with Hugging Face to publish.",
    (hubmerge.HubError, "token_rejected"): "Sign out and sign in with Hugging Face again.",
    (hubmerge.HubError, None): "The Hub did not answer as expected: try again in a minute.",
}

# The keyword arguments of hubmerge.merge() a message may name as the way to allow something ("allow_pickle"):
# Python's words, not the page's. Only names with an underscore, so plain words ("rank", "weights") stay, and not
# base_model, which is also the Hub's card field (and the start of PEFT's tensor keys).
_PYTHON_ARGUMENTS = sorted(
    name for name in inspect.signature(hubmerge.merge).parameters if "_" in name and name != "base_model"
)
# Command-line advice: an option, an `hf` command, a token variable, a keyword of the Python API, a local path.
_CLI_ADVICE = re.compile(
    r"--[A-Za-z][\w-]*|(?<![\w-])-o\b|`hf [^`]*`|\bHF_TOKEN\b|\b[a-z_]+=(True|False|None)\b|\blocal directory\b"
    rf"|(?<![\w.])({'|'.join(_PYTHON_ARGUMENTS)})(?![\w.])"
)
# Options the page does offer, under another name: the method descriptions mention them.
_SPACE_NAMES = {"--rank": "the chosen rank", "--density": "the chosen density"}
_SEPARATORS = re.compile(r"(; |: |, or |, | or )")
_PARENTHESISED = re.compile(r"\s*\([^()]*\)")


class SpaceError(Exception):
    """A request the Space cannot carry out, with a message for the visitor.

    Attributes:
        message: one line: what is wrong, then what to do on this page.
        title: a short heading for the message box.
    """

    def __init__(self, message: str, *, title: str = "hubmerge could not do it"):
        super().__init__(message)
        self.message = message
        self.title = title


def without_cli_advice(text: str) -> str:
    """``text`` without the parts that only make sense on the command line.

    Parenthesised asides naming an option go whole; otherwise the clause (between ``;``, ``:``, ``,`` or
    ``or``) holding it goes. The first clause always stays: it says what is wrong.

    Args:
        text: one line of a hubmerge message.

    Returns:
        The line, shortened where it gave command-line advice.

    Example:
        >>> without_cli_advice("bases differ; pass --allow-base-mismatch if they really are the same weights")
        'bases differ'
    """
    text = _PARENTHESISED.sub(lambda m: "" if _CLI_ADVICE.search(m.group()) else m.group(), text)
    parts = _SEPARATORS.split(text)
    kept, pending = parts[0], None
    for separator, clause in zip(parts[1::2], parts[2::2]):
        if _CLI_ADVICE.search(clause):
            pending = pending or separator  # the next clause kept joins where the dropped one began
        else:
            kept += (pending or separator) + clause
            pending = None
    return kept.rstrip(" ;:,")


def space_words(text: str) -> str:
    """A description written for the command line, in the page's words (``--rank`` → "the chosen rank")."""
    for option, words in _SPACE_NAMES.items():
        text = re.sub(rf"{re.escape(option)}\b", words, text)
    return without_cli_advice(text)


def explain(err: hubmerge.HubmergeError, *, limits_text: str | None = None) -> SpaceError:
    """hubmerge's error as the Space says it: its first line without command-line advice, then the hint.

    Args:
        err: the error hubmerge raised.
        limits_text: what this Space allows, added to a :class:`hubmerge.LimitExceededError`.

    Returns:
        A :class:`SpaceError` whose message is one line.
    """
    # The library's messages say what is wrong without command-line advice; the filter stays as a safety net.
    first = without_cli_advice(str(err).splitlines()[0].strip() if str(err).strip() else type(err).__name__)
    if isinstance(err, hubmerge.LimitExceededError):
        return SpaceError(f"{_sentence(first)} This Space allows {limits_text}.", title="Over the limit")
    if isinstance(err, hubmerge.IncompatibleAdaptersError):  # every problem, on one line
        first = f"{first.rstrip(':')}: " + " · ".join(without_cli_advice(p.message) for p in err.problems)
    return SpaceError(f"{_sentence(first)} {hint_for(err)}".strip())


def hint_for(err: hubmerge.HubmergeError) -> str:
    """The Space's next step for ``err``, from :data:`HINTS` (empty if none applies)."""
    return lookup_hint(err, HINTS) or ""


def _sentence(text: str) -> str:
    # Not capitalised: messages often start with a repo id, and "Alice/x" is another repo.
    return text.rstrip(" .") + "."
