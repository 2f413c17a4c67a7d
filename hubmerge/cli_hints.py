"""The commands' next step for each error: a table per command from (exception type, reason) to a hint in its words.

The library says what is wrong; only a front end knows its own flags (the Space keeps its own table). ``hubmerge``
looks its hints up in :data:`HINTS`, ``hubmerge-gguf`` in :data:`GGUF_HINTS`; what the two say alike (a Hub
failure) is written once.
"""

from __future__ import annotations

from .errors import (
    EvaluationMemoryError,
    GatedRepoAccessError,
    GGUFExportError,
    HubError,
    HubmergeError,
    IncompatibleAdaptersError,
    InvalidArgumentError,
    LimitExceededError,
    OutputExistsError,
    PushError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnsafeAdapterError,
    lookup_hint,
)

__all__ = ["GGUF_HINTS", "HINTS", "TOKEN_FLAG_HINTS", "gguf_hint_for", "hint_for"]

Hints = dict[tuple[type[HubmergeError], str | None], str]

# A Hub failure's next step, the same in both commands (each has --token).
_HUB_HINTS: Hints = {
    (RepoNotFoundError, None): "check the name; for a private repo log in with `hf auth login` or set HF_TOKEN",
    (RevisionNotFoundError, None): "check the branch, tag or commit sha",
    (GatedRepoAccessError, None): "request access on the repo's page, then use that account's token (`hf auth login`)",
    (HubError, "offline"): "run once with network access, or unset HF_HUB_OFFLINE",
    (HubError, "not_logged_in"): "run `hf auth login`, set HF_TOKEN, or pass --token",
    (HubError, "token_rejected"): "log in again with `hf auth login`",
}


def _base_not_found(flag: str) -> Hints:
    """The base model the adapter names is not there (no such repo, revision or config.json): give it with ``flag``."""
    give = f"give the base model with {flag} DIR_OR_REPO"
    return {
        (RepoNotFoundError, "base_not_found"): (
            f"{give}; for a private repo log in with `hf auth login` or set HF_TOKEN"
        ),
        (RevisionNotFoundError, "base_not_found"): give,
        (HubError, "base_not_found"): give,
        (HubError, "no_base_config"): f"{flag} takes a folder or repo that holds the base model's config.json",
    }


# The next step for an error, in this command's words: (exception type, reason) → hint. The library says
# what is wrong; only the front end knows its own flags. Looked up along the exception's MRO, the reason
# first (IncompatibleAdaptersError: any of its problems' codes), then None for the type as a whole.
HINTS: Hints = {
    **_HUB_HINTS,
    **_base_not_found("--gguf-base"),
    (
        UnsafeAdapterError,
        "pickle_only",
    ): "convert it to adapter_model.safetensors, or pass --allow-pickle if you trust it",
    (IncompatibleAdaptersError, "base_model_mismatch"): (
        "pass --allow-base-mismatch if they really are the same weights"
    ),
    (OutputExistsError, "not_empty"): "choose another output (-o) or pass --overwrite",
    (OutputExistsError, "not_a_directory"): "choose another output path (-o DIR)",
    (LimitExceededError, "max_adapters"): "raise the limit (set with --max-adapters N, or none for no limit)",
    (LimitExceededError, "max_download_bytes"): (
        "check the repo ids, or raise the limit (set with --max-download-size SIZE, or none for no limit)"
    ),
    (InvalidArgumentError, "dtype_overflow"): (
        "use smaller --weights, or a wider --dtype (float32 or bfloat16 hold what float16 cannot, "
        "float64 what they cannot)"
    ),
    (InvalidArgumentError, "weight_overflow"): "use smaller --weights",
    (InvalidArgumentError, "bad_fit"): "write --fit vllm or --fit vllm=MAX with MAX one of 1, 8, 16, 32, 64, 128, "
    "256, 320, 512",
    (GGUFExportError, "no_base_model"): "give the base model with --gguf-base DIR_OR_REPO",
    (GGUFExportError, "unsupported_architecture"): "leave out --gguf and run llama.cpp's convert_lora_to_gguf.py",
    (GGUFExportError, "gguf_missing"): "pip install 'hubmerge[gguf]'",
    (EvaluationMemoryError, "batch_size"): "lower --eval-batch-size (or --eval-max-length)",
    (EvaluationMemoryError, "max_length"): "lower --eval-max-length",
    (HubError, "moved"): "run the command again",
    (PushError, "no_write_access"): (
        "push to your own namespace, use --create-pr to open a pull request, or log in with a write token"
    ),
    (
        PushError,
        "public_repo",
    ): "--private does not change an existing repo: make it private on the Hub, or push elsewhere",
}


# hubmerge-gguf's: one adapter folder, its base (--base), no pickles, no push.
GGUF_HINTS: Hints = {
    **_HUB_HINTS,
    **_base_not_found("--base"),
    (GGUFExportError, "gguf_exists"): "pass --overwrite to replace it",
    (GGUFExportError, "no_base_model"): "give the base model with --base DIR_OR_REPO",
    (GGUFExportError, "unsupported_architecture"): "run llama.cpp's convert_lora_to_gguf.py instead",
    (GGUFExportError, "gguf_missing"): "pip install 'hubmerge[gguf]'",
    (UnsafeAdapterError, "pickle_only"): "convert it to adapter_model.safetensors (hubmerge-gguf reads no pickles)",
}


# Where the token came from with --token (both commands have it): the value given is what to check, not the login.
TOKEN_FLAG_HINTS: Hints = {
    (HubError, "token_rejected"): "check the --token value, or leave it out to use your `hf auth login` token",
}


def gguf_hint_for(err: HubmergeError, *, token_flag: bool = False) -> str | None:
    """``hubmerge-gguf``'s next step for ``err``, from :data:`GGUF_HINTS`.

    Args:
        token_flag: the token came from ``--token`` (:data:`TOKEN_FLAG_HINTS` first).
    """
    if token_flag and (hint := lookup_hint(err, TOKEN_FLAG_HINTS)):
        return hint
    return lookup_hint(err, GGUF_HINTS)


def hint_for(err: HubmergeError, *, token_flag: bool = False) -> str | None:
    """The CLI's next step for ``err``, from :data:`HINTS`.

    Args:
        token_flag: the token came from ``--token`` (:data:`TOKEN_FLAG_HINTS` first).
    """
    if token_flag and (hint := lookup_hint(err, TOKEN_FLAG_HINTS)):
        return hint
    # --allow-base-mismatch lifts the base-model check alone: with other problems (shapes that differ, as
    # they do between two real bases) offering it would send the user into the next refusal.
    if isinstance(err, IncompatibleAdaptersError) and err.reasons > {"base_model_mismatch"}:
        return "choose adapters trained on the same base model (--allow-base-mismatch would leave the other problems)"
    return lookup_hint(err, HINTS)
