"""A finished merge: its files, written locally or pushed to the Hub in one commit.

Every file is built in memory first (weights, config, report, recipe, the
model card and the heatmap), so a failure while building leaves nothing
behind: no directory, no repo, no commit. A local save writes the same files
a push uploads, so a folder uploaded later with ``hf upload`` has its card.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save, save_file

from .adapter import SAFETENSORS_NAME
from .config import CONFIG_NAME
from .errors import InvalidArgumentError
from .output import write_directory
from .recipe import RECIPE_NAME, Recipe
from .report import REPORT_NAME, MergeReport
from .sources import check_repo_id

if TYPE_CHECKING:
    from .hub import PushResult  # the Hub code, and huggingface_hub's HfApi, only when pushing

__all__ = ["CARD_NAME", "HEATMAP_NAME", "MergeResult", "RECIPE_NAME"]

HEATMAP_NAME = "similarity.png"
CARD_NAME = "README.md"


@dataclass(frozen=True)
class MergeResult:
    """A merged adapter held in memory, with its report and recipe.

    Attributes:
        config: the merged ``adapter_config.json`` (built from an allow-list, never copied).
        tensors: the merged adapter's tensors, PEFT key → tensor.
        report: the :class:`~hubmerge.report.MergeReport`.
        recipe: the :class:`~hubmerge.recipe.Recipe` that reproduces this merge.
        extra_files: files saved and pushed next to the adapter's own, e.g. the llama.cpp
            GGUF (:func:`hubmerge.gguf_export.attach_gguf`).
    """

    config: Mapping[str, Any]
    tensors: Mapping[str, torch.Tensor]
    report: MergeReport
    recipe: Recipe
    extra_files: Mapping[str, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:
        names = ", ".join(self.report.names)
        return f"MergeResult(adapters=[{names}], modules={self.report.modules.union}, exact={self.report.exact})"

    @property
    def warnings(self) -> tuple:
        """The report's warnings (:class:`~hubmerge.notice.Notice`)."""
        return self.report.warnings

    def default_repo_name(self) -> str:
        """A repo name derived from the sources, e.g. ``math-medicine-merged``."""
        stem = "-".join(re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-") for name in self.report.names)
        stem = re.sub(r"-{2,}", "-", stem)[:80].strip("-")  # the Hub refuses "--" and ".."
        return (stem or "adapters") + "-merged"

    def files(self, *, repo_id: str | None = None, figure: bool = True) -> dict[str, bytes]:
        """The merged adapter's files, in memory, exactly as a push uploads them.

        Args:
            repo_id: the repo the card describes; default the derived name.
            figure: also draw ``similarity.png`` (the card links it).

        Returns:
            File name → content: ``adapter_model.safetensors``, ``adapter_config.json``,
            ``hubmerge_report.json``, ``hubmerge_recipe.json``, ``README.md`` (and ``similarity.png``).
        """
        files = {SAFETENSORS_NAME: save(dict(self.tensors), metadata=_metadata())}
        for name, write in self._small_files(repo_id, figure).items():
            files[name] = write()
        return files

    def save_pretrained(self, save_directory: str | Path, *, overwrite: bool = False, figure: bool = True) -> Path:
        """Write a directory that ``peft.PeftModel.from_pretrained`` loads, with its card.

        It holds ``adapter_config.json``, ``adapter_model.safetensors``, ``hubmerge_report.json``,
        ``hubmerge_recipe.json``, ``README.md`` (the model card) and ``similarity.png``: what
        :meth:`push_to_hub` uploads. Written atomically, with the permissions the umask gives.

        Args:
            save_directory: where to write.
            overwrite: replace an existing non-empty directory.
            figure: draw ``similarity.png`` (``False`` skips it and its matplotlib import).

        Returns:
            The directory written.

        Raises:
            OutputExistsError: the directory is not empty and ``overwrite`` is false.
        """
        small = {name: write() for name, write in self._small_files(None, figure).items()}  # built before writing
        writers: dict[str, Callable[[Path], object]] = {
            # straight from the tensors to the file: no second in-memory copy of the weights
            SAFETENSORS_NAME: lambda path: save_file(dict(self.tensors), str(path), metadata=_metadata()),
        }
        writers.update({name: _writer(data) for name, data in small.items()})
        return write_directory(save_directory, writers, overwrite=overwrite)

    def _small_files(self, repo_id: str | None, figure: bool) -> dict[str, Callable[[], bytes]]:
        from .card import card_text

        def card() -> bytes:
            text = card_text(
                self.report,
                repo_id=repo_id or self.default_repo_name(),
                command=self.recipe.command,
                heatmap_path=HEATMAP_NAME if figure else None,
            )
            return text.encode("utf-8")

        files: dict[str, Callable[[], bytes]] = {
            CONFIG_NAME: lambda: _json(self.config),
            REPORT_NAME: lambda: _json(self.report.to_dict()),
            RECIPE_NAME: lambda: _json(self.recipe.to_dict()),
            CARD_NAME: card,
        }
        if figure:
            from .figures import render_heatmap  # matplotlib, only when the figure is wanted

            files[HEATMAP_NAME] = lambda: render_heatmap(self.report.similarity)
        for name, data in self.extra_files.items():
            files[name] = _constant(data)
        return files

    def push_to_hub(
        self,
        repo_id: str | None = None,
        *,
        token: str | bool | None = None,
        private: bool | None = None,
        create_pr: bool = False,
        commit_message: str | None = None,
        figure: bool = True,
    ) -> PushResult:
        """Push the merged adapter, its model card, report, recipe and heatmap in one commit.

        Args:
            repo_id: target ``user/name``; default a name derived from the sources
                in the token owner's namespace.
            token: Hub token; default the logged-in one (``HF_TOKEN`` / ``hf auth login``).
            private: ``True`` creates the repo private (and refuses an existing public
                repo); ``None`` leaves the Hub's default, e.g. an organisation's.
            create_pr: open a pull request instead of committing to main.
            commit_message: default "Merge <names> with hubmerge".
            figure: also push ``similarity.png`` (``False``: the card omits it, as :meth:`files` does).

        Returns:
            A :class:`PushResult`: the commit (or, unchanged content, the commit already holding it).

        Raises:
            InvalidArgumentError: the target is not a valid repo id, or is one of the sources.
            HubError, PushError: not logged in, no write access, the Hub refused.
        """
        from .hub import push_files

        repo_id = self.resolve_repo_id(repo_id, token=token)
        for source in self.report.sources:
            if source.repo_id and not source.subfolder and source.repo_id.lower() == repo_id.lower():
                raise InvalidArgumentError(
                    f"{repo_id} is also a source; pushing would overwrite that adapter", reason="target_is_source"
                )
        files = self.files(repo_id=repo_id, figure=figure)  # built before anything is created
        names = ", ".join(self.report.names)
        return push_files(
            repo_id,
            files,
            token=token,
            private=private,
            create_pr=create_pr,
            commit_message=commit_message or f"Merge {names} with hubmerge",
            commit_description=f"Reproduce with:\n\n    {self.recipe.command}\n",
        )

    def resolve_repo_id(self, repo_id: str | None, *, token: str | bool | None = None) -> str:
        """``repo_id`` as given, or ``<user>/<default name>`` with the user from ``whoami``.

        Raises:
            InvalidArgumentError: the result is not a valid repo id.
        """
        from .hub import whoami

        if not repo_id or "/" not in repo_id:
            repo_id = f"{whoami(token=token)}/{repo_id or self.default_repo_name()}"
        return check_repo_id(repo_id)


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _writer(data: bytes) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(data)


def _metadata() -> dict[str, str]:
    # One key only: safetensors writes the metadata map in a random order, so with two keys the same merge gave
    # different bytes half the time, and a re-push of identical content made a commit. The version is in the report.
    return {"format": "pt"}


def _json(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
