"""The recipe of a merge (``hubmerge_recipe.json``): what reproduces it, and nothing that could take over.

A :class:`Recipe` holds the sources pinned to commits (a local folder by its
name and the sha256 of its files), their weights, the method with the
parameters that method declares, and the dtype. Recipes are pushed next to
every merge, so the one a user replays is usually somebody else's file; it is
read through an allow-list (:meth:`Recipe.from_dict`): an unknown key, or a
parameter the method does not declare, is refused by name, and no key can
choose where output goes, push anything, carry a token, change a limit or
overwrite a directory. Whether the original merge needed pickle loading or a
base-model mismatch is recorded (:attr:`Recipe.needs_allow_pickle`,
:attr:`Recipe.needs_allow_base_mismatch`); a replay requires the user's own
consent for those, never the recipe's.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import InvalidArgumentError
from .methods import MethodParams, get_method
from .methods.rank_limit import parse_fit

__all__ = ["RECIPE_NAME", "Recipe", "RecipeSource"]

RECIPE_NAME = "hubmerge_recipe.json"

# The keys a recipe may hold (hubmerge 0.1 wrote exactly these); "command" is derived, read and ignored.
_RECIPE_KEYS = {
    "hubmerge_version",
    "method",
    "method_parameters",
    "sources",
    "dtype",
    "allow_base_mismatch",
    "allow_pickle",
    "command",
    "max_rank",  # a rank cap (--max-rank, --fit) is part of what the merge computed
    "fit",
}
_SOURCE_KEYS = {"source", "repo_id", "subfolder", "revision", "weight", "files_sha256"}
# Settings that belong to the person running the command, never to a file they were given.
_FORBIDDEN = {
    "output",
    "push",
    "token",
    "overwrite",
    "private",
    "create_pr",
    "commit_message",
    "dry_run",
    "max_adapters",
    "max_download_size",
    "max_download_bytes",
    "report_only",
    "recipe",
}


@dataclass(frozen=True)
class RecipeSource:
    """One source of a recipe: the reference to fetch it again, and its weight."""

    source: str
    weight: float
    repo_id: str | None = None
    subfolder: str | None = None
    revision: str | None = None  # the commit sha for a Hub source
    files_sha256: Mapping[str, str] | None = None  # a local source: file name → sha256


@dataclass(frozen=True)
class Recipe:
    """What reproduces a merge. Build one with :meth:`from_dict` from a file, or get it from a merge.

    Attributes:
        sources: the sources in merge order, pinned.
        method: the merge method's name.
        method_parameters: the parameters that method declares, with the values used.
        dtype: the output dtype's name (``None``: the inputs').
        needs_allow_pickle: the original merge read pickle weights.
        needs_allow_base_mismatch: the original merge switched the base-model check off.
        hubmerge_version: the version that wrote it.
        max_rank, fit: the rank cap of ``--max-rank`` / ``--fit vllm[=MAX]`` (``None``: none).
    """

    sources: tuple[RecipeSource, ...]
    method: str = "sum"
    method_parameters: Mapping[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    needs_allow_pickle: bool = False
    needs_allow_base_mismatch: bool = False
    hubmerge_version: str = __version__
    max_rank: int | None = None
    fit: str | None = None

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    @property
    def references(self) -> list[str]:
        return [s.source for s in self.sources]

    @property
    def command(self) -> str:
        """The ``hubmerge`` command line that replays this merge."""
        words = ["hubmerge", *self.references, f"--weights={','.join(_weight_text(w) for w in self.weights)}"]
        words += [f"--method={self.method}"] * (self.method != "sum")
        words += [f"--{name.replace('_', '-')}={value}" for name, value in self.method_parameters.items()]
        words += [f"--dtype={self.dtype}"] * (self.dtype is not None)
        words += ["--allow-base-mismatch"] * self.needs_allow_base_mismatch + [
            "--allow-pickle"
        ] * self.needs_allow_pickle
        words += [f"--max-rank={self.max_rank}"] * (self.max_rank is not None) + [f"--fit={self.fit}"] * bool(self.fit)
        return shlex.join(words)

    def check_local_sources(self) -> None:
        """Check that each local source's folder holds the files the recipe pinned (by sha256).

        A recipe names a local folder only by its name, so a replay finds it relative to the
        working directory; this makes sure it is the same adapter, not another of that name.

        Raises:
            InvalidArgumentError: a folder is missing, or a file's sha256 differs from the recorded one.
        """
        from .provenance import local_origin

        for index, item in enumerate(self.sources):
            if not item.files_sha256:
                continue
            folder = Path(item.source).expanduser()
            files = tuple(folder / name for name in item.files_sha256)
            if not all(path.is_file() for path in files):
                raise InvalidArgumentError(
                    f"recipe source {index} {item.source!r}: no folder with {', '.join(item.files_sha256)} "
                    "here; run the replay where the recipe's local folders are",
                    reason="recipe_source_missing",
                    source=item.source,
                )
            found = dict(local_origin(folder, files).files_sha256)
            for name, digest in item.files_sha256.items():
                if found[name] != digest:
                    raise InvalidArgumentError(
                        f"recipe source {index} {item.source!r}: {name} has sha256 {found[name][:12]}…, not the "
                        f"recorded {digest[:12]}…; this is not the adapter the recipe was made from",
                        reason="recipe_source_changed",
                        source=item.source,
                    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``hubmerge_recipe.json``."""
        return {
            "hubmerge_version": self.hubmerge_version,
            "method": self.method,
            "method_parameters": dict(self.method_parameters),
            "sources": [
                {
                    "source": s.source,
                    "repo_id": s.repo_id,
                    "subfolder": s.subfolder,
                    "revision": s.revision,
                    "weight": s.weight,
                    **({"files_sha256": dict(s.files_sha256)} if s.files_sha256 else {}),
                }
                for s in self.sources
            ],
            "dtype": self.dtype,
            "allow_base_mismatch": self.needs_allow_base_mismatch,
            "allow_pickle": self.needs_allow_pickle,
            **({"max_rank": self.max_rank} if self.max_rank is not None else {}),
            **({"fit": self.fit} if self.fit else {}),
            "command": self.command,
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "recipe") -> Recipe:
        """Read a recipe through the allow-list.

        Raises:
            InvalidArgumentError: not an object, a forbidden or unknown key, a parameter the method
                does not declare, or a value of the wrong type; the message names it.
        """

        def fail(message: str) -> InvalidArgumentError:
            return InvalidArgumentError(f"{where}: {message}", reason="bad_recipe")

        if not isinstance(data, Mapping):
            raise fail(f"must hold a JSON object, not {type(data).__name__}")
        _refuse_keys(data, _RECIPE_KEYS, f"a recipe holds {', '.join(sorted(_RECIPE_KEYS))}", fail)
        method_name = data.get("method", "sum")
        if not isinstance(method_name, str):
            raise fail(f"method {method_name!r} is not a name")
        try:
            method = get_method(method_name)
        except InvalidArgumentError as err:
            raise fail(str(err)) from err
        parameters = data.get("method_parameters") or {}
        if not isinstance(parameters, Mapping):
            raise fail("method_parameters must be an object")
        declared = ", ".join(method.parameters) or "no parameters"
        _refuse_keys(parameters, set(method.parameters), f"in method_parameters: {method.name} takes {declared}", fail)
        try:
            MethodParams(**parameters).validate()
        except (InvalidArgumentError, TypeError) as err:
            raise fail(f"method_parameters: {err}") from err
        sources = data.get("sources")
        if not isinstance(sources, list) or not sources:
            raise fail("sources must be a non-empty list")
        dtype = data.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            raise fail(f"dtype {dtype!r} is not a name")
        flags = {}
        for key in ("allow_pickle", "allow_base_mismatch"):
            value = data.get(key, False)
            if not isinstance(value, bool):
                raise fail(f"{key} must be true or false, not {value!r}")
            flags[key] = value
        version = data.get("hubmerge_version", "unknown")
        max_rank, fit = data.get("max_rank"), data.get("fit")
        if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int)):
            raise fail(f"max_rank {max_rank!r} is not a whole number")
        if fit is not None and not isinstance(fit, str):
            raise fail(f"fit {fit!r} is not a string such as 'vllm=16'")
        try:
            parse_fit(fit, max_rank)
        except InvalidArgumentError as err:
            raise fail(str(err)) from err
        return cls(
            sources=tuple(_read_source(entry, index, fail) for index, entry in enumerate(sources)),
            method=method.name,
            method_parameters=dict(parameters),
            dtype=dtype,
            needs_allow_pickle=flags["allow_pickle"],
            needs_allow_base_mismatch=flags["allow_base_mismatch"],
            hubmerge_version=str(version),
            max_rank=max_rank,
            fit=fit,
        )


def _refuse_keys(data: Mapping[str, Any], allowed: set[str], unknown: str, fail) -> None:
    """Refuse a forbidden key, then one outside ``allowed``; ``unknown`` says what is allowed."""
    for key in data:
        if key in _FORBIDDEN:
            raise fail(
                f"{key!r} cannot be set by a recipe (output, push, token, limits and overwriting are the "
                "command's own settings); remove it from the file"
            )
    for key in data:
        if key not in allowed:
            raise fail(f"unknown key {key!r} ({unknown})")


def _read_source(entry: Any, index: int, fail) -> RecipeSource:
    if not isinstance(entry, Mapping):
        raise fail(f"sources[{index}] must be an object")
    unknown = sorted(set(entry) - _SOURCE_KEYS)
    if unknown:
        raise fail(f"sources[{index}]: unknown key {unknown[0]!r} (a source holds {', '.join(sorted(_SOURCE_KEYS))})")
    text, weight = entry.get("source"), entry.get("weight", 1.0)
    if not isinstance(text, str) or not text.strip():
        raise fail(f"sources[{index}]: 'source' must be a non-empty string")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise fail(f"sources[{index}]: weight {weight!r} is not a finite number")
    optional = {}
    for key in ("repo_id", "subfolder", "revision"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(f"sources[{index}]: {key} {value!r} is not a string")
        optional[key] = value
    digests = entry.get("files_sha256")
    if digests is not None and (
        not isinstance(digests, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items())
    ):
        raise fail(f"sources[{index}]: files_sha256 must map file names to hex digests")
    return RecipeSource(source=text, weight=float(weight), files_sha256=dict(digests) if digests else None, **optional)


def _weight_text(weight: float) -> str:
    return str(int(weight)) if weight == int(weight) else repr(weight)
