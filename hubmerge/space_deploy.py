"""Deploy hubmerge's Gradio Space: the Space's files, hubmerge's own source next to them, in one commit.

``hubmerge-space deploy USER/SPACE`` builds the Space repo in memory and uploads it through huggingface_hub
(``repo_type="space"``, sdk gradio):

- the Space's files from ``spaces/`` of a hubmerge checkout: ``app.py``, the modules it imports, and
  ``README.md``, whose metadata (``sdk: gradio``, ``sdk_version``, ``hf_oauth``) the Space builder reads;
- ``hubmerge/``, this installed package's source, next to ``app.py``: the Space runs the hubmerge that
  deployed it, and needs neither PyPI nor a git URL. The Space builder installs ``requirements.txt`` before it
  copies the repository, so a wheel inside the repo could not be installed from there; a package directory
  next to ``app.py`` is importable as it is;
- ``requirements.txt``: hubmerge's own dependencies, read from its installed metadata, and torch's CPU
  index (the free Spaces hardware is a CPU). Gradio comes from ``sdk_version``;
- optionally ``examples.json``: the shipped example adapters (``examples/adapters``), first pushed to a model
  repo of the same namespace, pinned to that commit, so a first visitor has something to click.

The Space is a client of hubmerge like any other: nothing here is imported by the library.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from ._version import __version__
from .errors import HubmergeError, InvalidArgumentError

__all__ = ["deploy", "main", "publish_examples", "requirements_txt", "space_files"]

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent  # a source checkout (or an editable install) has spaces/ and examples/ here
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
EXAMPLES_REPO_NAME = "hubmerge-example-adapters"
_SPACE_SUFFIXES = (".py", ".md")
_PACKAGE_SUFFIXES = (".py", ".typed", ".json")


def requirements_txt() -> str:
    """What the Space builder installs: hubmerge's runtime dependencies and torch's CPU index.

    Returns:
        The text of ``requirements.txt``.

    Raises:
        InvalidArgumentError: hubmerge is not installed with metadata (run from an installed copy).
    """
    try:
        declared = requires("hubmerge") or []
    except PackageNotFoundError:
        raise InvalidArgumentError("hubmerge's package metadata is missing: install it (pip install -e .)") from None
    # Optional extras carry an `extra == "…"` marker. The Space needs the plain dependencies and the `eval`
    # extra's (its Evaluate step loads a small base with transformers and peft); the other extras are for
    # development.
    runtime = []
    for req in declared:
        spec, _, marker = req.partition(";")
        if "extra ==" not in marker:
            runtime.append(req)
        elif re.fullmatch(r"""\s*extra\s*==\s*["']eval["']\s*""", marker):
            runtime.append(spec.strip())
    return "\n".join(
        [
            f"# Written by `hubmerge-space deploy` (hubmerge {__version__}). hubmerge itself is the hubmerge/ folder",
            "# next to app.py; these are its dependencies. Gradio comes from sdk_version in README.md.",
            *runtime,
            "# The free Spaces hardware is a CPU: torch's CPU build (about 200 MB) instead of the CUDA one.",
            f"--extra-index-url {CPU_INDEX}",
            "",
        ]
    )


def space_files(space_dir: Path, *, examples: list[dict] | None = None) -> dict[str, bytes]:
    """Every file of the Space repo, path in the repo → content.

    Args:
        space_dir: the folder holding ``app.py``, its modules and ``README.md`` (``spaces/`` of a checkout).
        examples: example forms for ``examples.json`` (``None``: no examples).

    Returns:
        The files: the Space's own, ``requirements.txt``, ``hubmerge/…`` and, with examples, ``examples.json``.

    Raises:
        InvalidArgumentError: ``space_dir`` has no ``app.py`` or no ``README.md`` with Space metadata.
    """
    space_dir = Path(space_dir)
    readme = space_dir / "README.md"
    if not (space_dir / "app.py").is_file() or not readme.is_file():
        raise InvalidArgumentError(f"{space_dir} is not the Space's folder: it needs app.py and README.md")
    if "sdk: gradio" not in readme.read_text(encoding="utf-8").split("---")[1]:
        raise InvalidArgumentError(f"{readme} has no `sdk: gradio` in its front matter")
    files = {
        path.name: path.read_bytes()
        for path in sorted(space_dir.iterdir())
        if path.is_file() and path.suffix in _SPACE_SUFFIXES
    }
    files["requirements.txt"] = requirements_txt().encode()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.is_file() and path.suffix in _PACKAGE_SUFFIXES and "__pycache__" not in path.parts:
            files[f"hubmerge/{path.relative_to(PACKAGE_DIR).as_posix()}"] = path.read_bytes()
    if examples:
        files["examples.json"] = (json.dumps({"examples": examples}, indent=2) + "\n").encode()
    return files


def publish_examples(namespace: str, examples_dir: Path, *, token: str | bool | None = None) -> list[dict]:
    """Push the example adapters to ``<namespace>/hubmerge-example-adapters`` (one subfolder each, one commit).

    Args:
        namespace: the user or organisation of the Space.
        examples_dir: a folder of adapter folders (``examples/adapters`` of a checkout).
        token: Hub token; default the logged-in one.

    Returns:
        The example forms, references pinned to the commit: all the adapters summed, and (with three or more)
        the first minus the second.

    Raises:
        InvalidArgumentError: fewer than two adapters in ``examples_dir``.
        PushError: the Hub refused.
    """
    folders = sorted(p for p in Path(examples_dir).iterdir() if (p / "adapter_config.json").is_file())
    if len(folders) < 2:
        raise InvalidArgumentError(f"{examples_dir} holds fewer than two adapters to use as examples")
    files = {
        f"{folder.name}/{name}": (folder / name).read_bytes()
        for folder in folders
        for name in ("adapter_config.json", "adapter_model.safetensors", "README.md")
        if (folder / name).is_file()
    }
    repo_id = f"{namespace}/{EXAMPLES_REPO_NAME}"
    from .hub import upload_repo_files  # the network, and torch with it, only when uploading

    message = "Example adapters for the hubmerge Space"
    commit = upload_repo_files(repo_id, files, repo_type="model", token=token, message=message)
    refs = [f"{repo_id}/{folder.name}@{commit.oid}" for folder in folders]
    names = [folder.name for folder in folders]
    forms = [{"label": " + ".join(names), "adapters": refs, "weights": [1.0] * len(refs), "method": "sum"}]
    if len(refs) > 2:
        forms.append({"label": f"{names[0]} − {names[1]}", "adapters": refs[:2], "weights": [1.0, -1.0]})
    return forms


def deploy(
    repo_id: str,
    *,
    space_dir: Path = CHECKOUT / "spaces",
    examples_dir: Path | None = CHECKOUT / "examples" / "adapters",
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
):
    """Create (or update) the Space ``repo_id`` and upload everything it needs in one commit.

    Args:
        repo_id: ``user/space``.
        space_dir: the Space's folder (see :func:`space_files`).
        examples_dir: example adapters to publish first (see :func:`publish_examples`); ``None``: no examples.
        token: Hub token with write access; default the logged-in one.
        private: create the Space private.
        commit_message: default "Deploy hubmerge <version>".

    Returns:
        huggingface_hub's ``CommitInfo`` of the Space's commit.

    Raises:
        InvalidArgumentError: a bad repo id or Space folder.
        HubError, PushError: the Hub refused.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InvalidArgumentError(f"{repo_id!r} is not a valid Space id ({err})", reason="bad_repo_id") from None
    if "/" not in repo_id:
        raise InvalidArgumentError(f"{repo_id!r}: give the Space as user/name", reason="bad_repo_id")
    files = space_files(space_dir)  # a bad Space folder stops here, before anything is uploaded
    if examples_dir is not None and Path(examples_dir).is_dir():
        examples = publish_examples(repo_id.split("/")[0], Path(examples_dir), token=token)
        files = space_files(space_dir, examples=examples)
    message = commit_message or f"Deploy hubmerge {__version__}"
    from .hub import upload_repo_files

    return upload_repo_files(repo_id, files, repo_type="space", token=token, private=private, message=message)


def main(argv: Sequence[str] | None = None) -> int:
    """``hubmerge-space deploy USER/SPACE``: the command line of :func:`deploy`. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="hubmerge-space", description="Deploy hubmerge's Gradio Space.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("deploy", help="create or update a Space repo with the Space and hubmerge, in one commit")
    run.add_argument("repo_id", metavar="USER/SPACE", help="the Space repo, e.g. alice/hubmerge")
    run.add_argument(
        "--space-dir", type=Path, default=CHECKOUT / "spaces", help="the Space's folder (default: %(default)s)"
    )
    run.add_argument("--examples-dir", type=Path, default=CHECKOUT / "examples" / "adapters",
                     help=f"example adapters to publish to USER/{EXAMPLES_REPO_NAME}")  # fmt: skip
    run.add_argument("--no-examples", action="store_true", help="publish no example adapters")
    run.add_argument("--private", action="store_true", help="create the Space private")
    run.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`)")
    run.add_argument("--dry-run", action="store_true", help="list the files the Space would get; upload nothing")
    args = parser.parse_args(argv)
    try:
        if args.dry_run:
            for path, data in sorted(space_files(args.space_dir).items()):
                print(f"{len(data):>9,}  {path}")
            return 0
        commit = deploy(
            args.repo_id,
            space_dir=args.space_dir,
            examples_dir=None if args.no_examples else args.examples_dir,
            token=args.token,
            private=args.private or None,
        )
    except HubmergeError as err:
        print(f"hubmerge-space: {err}", file=sys.stderr)
        return 1
    print(f"deployed to {commit.repo_url} ({commit.commit_url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
