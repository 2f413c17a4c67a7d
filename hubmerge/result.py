"""A finished merge: its files, written locally or pushed to the Hub in one commit.

Every file is built in memory first (weights, config, report, recipe, and
for the Hub the model card and the heatmap), so a failure while building
leaves nothing behind: no directory, no repo, no commit.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import torch
from safetensors.torch import save, save_file

from ._version import __version__
from .adapter import SAFETENSORS_NAME, LoraAdapter
from .config import CONFIG_NAME
from .errors import InvalidArgumentError
from .output import write_directory
from .report import REPORT_NAME, dtype_name

__all__ = ["CARD_NAME", "HEATMAP_NAME", "MergeResult", "RECIPE_NAME", "build_recipe"]

RECIPE_NAME = "hubmerge_recipe.json"
HEATMAP_NAME = "similarity.png"
CARD_NAME = "README.md"


class MergeResult:
    """A merged adapter held in memory, with its report and recipe.

    Attributes:
        config: the merged ``adapter_config.json`` (a dict).
        tensors: the merged adapter's tensors, PEFT key → tensor (empty for a report-only run).
        report: the JSON-able merge report.
        recipe: what reproduces this merge (sources pinned to commit shas, weights, dtype, command).
        adapters: the loaded input adapters.
    """

    def __init__(
        self,
        *,
        config: dict,
        tensors: dict[str, torch.Tensor],
        report: dict,
        recipe: dict,
        adapters: list[LoraAdapter],
    ):
        self.config = config
        self.tensors = tensors
        self.report = report
        self.recipe = recipe
        self.adapters = adapters
        # Files written and pushed next to the adapter's own, e.g. the llama.cpp GGUF (hubmerge.gguf_export).
        self.extra_files: dict[str, bytes] = {}

    def __repr__(self) -> str:
        names = ", ".join(a.name for a in self.adapters)
        modules = self.report["modules"]["union"]
        return f"MergeResult(adapters=[{names}], modules={modules}, exact={self.report['exact']})"

    @property
    def warnings(self) -> list[dict]:
        return self.report["warnings"]

    def default_repo_name(self) -> str:
        """A repo name derived from the sources, e.g. ``math-medicine-merged``."""
        stem = "-".join(re.sub(r"[^A-Za-z0-9_]+", "-", a.name).strip("-") for a in self.adapters)
        stem = re.sub(r"-{2,}", "-", stem)[:80].strip("-")  # the Hub refuses "--" and ".."
        return (stem or "adapters") + "-merged"

    def files(self, *, repo_id: str | None = None, card: bool = False) -> dict[str, bytes]:
        """The merged adapter's files, in memory.

        Args:
            repo_id: the repo the card describes (needed with ``card``).
            card: also build ``README.md`` (the model card) and ``similarity.png``.

        Returns:
            File name → content: ``adapter_model.safetensors``, ``adapter_config.json``,
            ``hubmerge_report.json``, ``hubmerge_recipe.json`` (and the card files).
        """
        if not self.tensors:
            raise InvalidArgumentError("this result has no tensors (it was made with report_only=True)")
        files = {
            SAFETENSORS_NAME: save(self.tensors, metadata=self._metadata()),
            CONFIG_NAME: _json(self.config),
            REPORT_NAME: _json(self.report),
            RECIPE_NAME: _json(self.recipe),
            **self.extra_files,
        }
        if card:
            from .card import build_card  # matplotlib and the card are only needed for the Hub
            from .figures import render_heatmap

            files[HEATMAP_NAME] = render_heatmap(self.report["similarity"])
            files[CARD_NAME] = str(
                build_card(self.report, repo_id=repo_id or self.default_repo_name(), command=self.recipe["command"])
            ).encode("utf-8")
        return files

    def save_pretrained(self, save_directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write a directory that ``peft.PeftModel.from_pretrained`` loads.

        It holds ``adapter_config.json``, ``adapter_model.safetensors``,
        ``hubmerge_report.json`` and ``hubmerge_recipe.json``, written atomically.

        Args:
            save_directory: where to write.
            overwrite: replace an existing non-empty directory.

        Returns:
            The directory written.

        Raises:
            OutputExistsError: the directory is not empty and ``overwrite`` is false.
            InvalidArgumentError: this result was made with ``report_only=True``.
        """
        if not self.tensors:
            raise InvalidArgumentError("this result has no tensors (it was made with report_only=True)")
        writers = {
            # straight from the tensors to the file: no second in-memory copy of the weights
            SAFETENSORS_NAME: lambda path: save_file(self.tensors, str(path), metadata=self._metadata()),
            CONFIG_NAME: lambda path: path.write_bytes(_json(self.config)),
            REPORT_NAME: lambda path: path.write_bytes(_json(self.report)),
            RECIPE_NAME: lambda path: path.write_bytes(_json(self.recipe)),
            **{name: (lambda path, data=data: path.write_bytes(data)) for name, data in self.extra_files.items()},
        }
        return write_directory(save_directory, writers, overwrite=overwrite)

    def _metadata(self) -> dict[str, str]:
        return {"format": "pt", "hubmerge_version": __version__}

    def push_to_hub(
        self,
        repo_id: str | None = None,
        *,
        token: str | bool | None = None,
        private: bool | None = None,
        create_pr: bool = False,
        commit_message: str | None = None,
    ):
        """Push the merged adapter, its model card, report, recipe and heatmap in one commit.

        Args:
            repo_id: target ``user/name``; default a name derived from the sources
                in the token owner's namespace.
            token: Hub token; default the logged-in one (``HF_TOKEN`` / ``hf auth login``).
            private: ``True`` creates the repo private (and refuses an existing public
                repo); ``None`` leaves the Hub's default, e.g. an organisation's.
            create_pr: open a pull request instead of committing to main.
            commit_message: default "Merge <names> with hubmerge".

        Returns:
            huggingface_hub's ``CommitInfo`` (``commit_url``, ``pr_url``, ``repo_url``).

        Raises:
            HubError, PushError: not logged in, no write access, the Hub refused.
        """
        from .hub import push_files

        repo_id = self.resolve_repo_id(repo_id, token=token)
        for adapter in self.adapters:
            if adapter.repo_id and not adapter.subfolder and adapter.repo_id.lower() == repo_id.lower():
                raise InvalidArgumentError(f"{repo_id} is also a source; pushing would overwrite that adapter")
        files = self.files(repo_id=repo_id, card=True)  # built before anything is created
        names = ", ".join(a.name for a in self.adapters)
        return push_files(
            repo_id,
            files,
            token=token,
            private=private,
            create_pr=create_pr,
            commit_message=commit_message or f"Merge {names} with hubmerge",
            commit_description=f"Reproduce with:\n\n    {self.recipe['command']}\n",
        )

    def resolve_repo_id(self, repo_id: str | None, *, token: str | bool | None = None) -> str:
        """``repo_id`` as given, or ``<user>/<default name>`` with the user from ``whoami``.

        Raises:
            InvalidArgumentError: the result is not a valid repo id.
        """
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        from .hub import whoami

        if not repo_id or "/" not in repo_id:
            repo_id = f"{whoami(token=token)}/{repo_id or self.default_repo_name()}"
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            raise InvalidArgumentError(f"{repo_id!r} is not a valid repo id ({err})") from None
        return repo_id


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _pinned(adapter: LoraAdapter) -> str:
    if adapter.repo_id is None:
        return adapter.source
    where = adapter.repo_id + (f"/{adapter.subfolder}" if adapter.subfolder else "")
    return f"{where}@{adapter.commit_sha}" if adapter.commit_sha else where


def build_recipe(
    adapters, weights, dtype, *, method: str, params: dict, allow_base_mismatch: bool, allow_pickle: bool
) -> dict:
    """What reproduces a merge: sources pinned to commit shas, weights, method, dtype, and the command."""
    pinned = [_pinned(a) for a in adapters]
    words = ["hubmerge", *pinned, f"--weights={','.join(_weight_text(w) for w in weights)}"]
    words += [f"--method={method}"] * (method != "sum")
    words += [f"--{name.replace('_', '-')}={value}" for name, value in params.items()]
    words += [f"--dtype={dtype_name(dtype)}"]
    words += ["--allow-base-mismatch"] * allow_base_mismatch + ["--allow-pickle"] * allow_pickle
    return {
        "hubmerge_version": __version__,
        "method": method,
        "method_parameters": params,
        "sources": [
            {
                "source": text,
                "repo_id": a.repo_id,
                "subfolder": a.subfolder,
                "revision": a.commit_sha,
                "weight": w,
            }
            for text, a, w in zip(pinned, adapters, weights)
        ],
        "dtype": dtype_name(dtype),
        "allow_base_mismatch": allow_base_mismatch,
        "allow_pickle": allow_pickle,
        "command": shlex.join(words),
    }


def _weight_text(weight: float) -> str:
    return str(int(weight)) if weight == int(weight) else repr(weight)
