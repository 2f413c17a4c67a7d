"""The only module that talks to the network: resolve, download, whoami, push.

Everything goes through huggingface_hub, so the HF cache, tokens (``token=``,
``HF_TOKEN``, ``hf auth login``), ``HF_ENDPOINT``, progress bars and
``HF_HUB_OFFLINE=1`` behave as in the rest of the ecosystem. Each Hub failure
becomes one :class:`~hubmerge.errors.HubError` line that names the repo and
says what to do next; tokens never appear in them.

Split in three rooms: :mod:`.download` (resolve, fetch, base models), :mod:`.push` (whoami, push,
uploads) and :mod:`._failures` (what a failed request becomes).
"""

from .download import (
    BaseModelInfo,
    PulledAdapter,
    ResolvedAdapter,
    check_download_size,
    dataset_commit,
    fetch_adapter,
    fetch_base_config,
    fetch_base_model,
    resolve_adapter,
    resolve_base_model,
)
from .push import PushResult, check_logged_in, push_files, upload_repo_files, whoami

__all__ = [
    "BaseModelInfo",
    "PulledAdapter",
    "PushResult",
    "ResolvedAdapter",
    "check_download_size",
    "check_logged_in",
    "dataset_commit",
    "fetch_adapter",
    "fetch_base_config",
    "fetch_base_model",
    "push_files",
    "resolve_adapter",
    "resolve_base_model",
    "upload_repo_files",
    "whoami",
]
