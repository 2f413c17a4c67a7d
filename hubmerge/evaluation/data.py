"""Evaluation data: reading ``.jsonl`` / ``.txt`` files or Hub datasets, templates, splits, tokenisation.

A domain's data is a list of records, each one of:

- ``text``: every token after the first of the tokenizer's output (default
  special tokens) is predicted, the text cut to its first ``max_length`` tokens;
- ``prompt`` + ``completion``: only the completion's tokens are predicted; an
  over-long example loses the start of its prompt, never the completion;
- ``question`` + ``answer``: read as ``"Question: {question}\\nAnswer: {answer}"``
  with ``" {answer}"`` as the completion (the space goes with the answer, as
  BPE tokenizers read it);
- ``messages`` (chat): the last message, which must be the assistant's, is the
  completion; everything before it, rendered by the tokenizer's chat template
  with the generation prompt, is the prompt.

Prompts are tokenised with the tokenizer's default special tokens, completions
without (a completion is a continuation, not a new sequence). A ``.txt`` file
holds one ``text`` record per non-empty line. When records carry a ``split``
field, only those of the chosen split are read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EvaluationDataError, MissingDependencyError

__all__ = ["EvalData", "Example", "Record", "encode", "parse_eval_spec", "read_eval_data", "tokenise"]

QA_TEMPLATE = "Question: {question}\nAnswer:"
FORMATS = ("text", "prompt_completion", "question_answer", "messages")


@dataclass(frozen=True)
class Record:
    """One evaluation record: ``text`` alone, a ``prompt`` with its ``completion``, or chat ``messages``."""

    format: str
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class Example:
    """One tokenised record: the ids and the index of the first predicted token."""

    ids: tuple[int, ...]
    start: int
    truncated: bool

    @property
    def predicted(self) -> int:
        return len(self.ids) - self.start


@dataclass(frozen=True)
class EvalData:
    """The records of one domain, in file order.

    Attributes:
        name: the domain's label (a source's display name).
        path: the file or Hub dataset id it was read from.
        kind: ``"file"`` or ``"hub"``.
        sha256: of the file's bytes (``None`` for a Hub dataset).
        revision: the Hub dataset's commit (``None`` offline, read from the ``datasets`` cache).
        split: the split read, or ``None`` when the records carry no ``split`` field.
        formats: the record formats found.
        records: the records of that split.
    """

    name: str
    path: str
    kind: str
    sha256: str | None
    revision: str | None
    split: str | None
    formats: tuple[str, ...]
    records: tuple[Record, ...] = field(repr=False)

    def describe(self) -> dict:
        """The JSON-able description the report keeps (everything but the records)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "sha256": self.sha256,
            "revision": self.revision,
            "split": self.split,
            "formats": list(self.formats),
            "records": len(self.records),
        }


def parse_eval_spec(text: str) -> tuple[str, str]:
    """``"NAME=PATH"`` → ``(NAME, PATH)``.

    Raises:
        EvaluationDataError: no ``=``, or an empty name or path.
    """
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise EvaluationDataError(f"evaluation data {text!r} is not NAME=PATH, e.g. math=math_test.jsonl")
    return name.strip(), path.strip()


def read_eval_data(name: str, path: str | Path, *, split: str = "test") -> EvalData:
    """Read one domain's records from a ``.jsonl`` / ``.txt`` file or a Hub dataset.

    Args:
        name: the domain's label.
        path: a local ``.jsonl`` or ``.txt`` file; anything else that is not an
            existing file is read as a Hub dataset id with the ``datasets`` package.
        split: which split to read when records carry a ``split`` field (for a Hub
            dataset: the dataset's split).

    Returns:
        The :class:`EvalData`.

    Raises:
        EvaluationDataError: the file is missing, empty, not JSON Lines, has a record with no usable
            text field, or has no record of ``split``.
        MissingDependencyError: a Hub dataset without the ``datasets`` package.
    """
    local = Path(path).expanduser()
    if local.is_file():
        return _read_file(name, local, split)
    if local.suffix.lower() in (".jsonl", ".txt", ".json") or local.exists():
        raise EvaluationDataError(f"evaluation data {name}: {path} is not a readable .jsonl or .txt file")
    return _read_hub(name, str(path), split)


def _read_file(name: str, path: Path, split: str) -> EvalData:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EvaluationDataError(f"evaluation data {name}: {path} is not UTF-8 text ({err.reason})") from None
    if not content.strip():
        raise EvaluationDataError(f"evaluation data {name}: {path} is empty; give a file with at least one record")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        records = [Record("text", text=line.rstrip("\r")) for line in _lines(content) if line.strip()]
        return EvalData(name, str(path), "file", digest, None, None, ("text",), tuple(records))
    if suffix != ".jsonl":
        raise EvaluationDataError(f"evaluation data {name}: {path} is neither .jsonl nor .txt")
    rows = []
    for number, line in enumerate(_lines(content), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvaluationDataError(
                f"evaluation data {name}: line {number} of {path} is not JSON ({err.msg}); one object per line"
            ) from None
        if not isinstance(row, dict):
            raise EvaluationDataError(f"evaluation data {name}: line {number} of {path} is not a JSON object")
        rows.append((number, row))
    return _from_rows(name, str(path), "file", digest, None, rows, split)


def _lines(content: str) -> list[str]:
    # Only "\n" ends a line: str.splitlines() also splits at U+2028 and friends, which JSON strings may hold raw.
    return content.split("\n")


def _read_hub(name: str, dataset_id: str, split: str) -> EvalData:
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(
            f"evaluation data {name}: {dataset_id} is not a local file, and reading it as a Hub dataset needs the "
            "datasets package: pip install 'hubmerge[eval]'"
        ) from None
    from ..hub import dataset_commit

    commit = dataset_commit(dataset_id)  # pinned: the report names the commit that was read
    try:
        loaded = datasets.load_dataset(dataset_id, split=split, revision=commit)
    except Exception as err:  # datasets raises many unrelated types; all mean "cannot read it"
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise EvaluationDataError(
            f"evaluation data {name}: cannot read Hub dataset {dataset_id} split {split!r} ({detail})"
        ) from None
    rows = [(index + 1, dict(row)) for index, row in enumerate(loaded)]
    data = _from_rows(name, dataset_id, "hub", None, commit, rows, None)
    return EvalData(data.name, data.path, data.kind, None, data.revision, split, data.formats, data.records)


def _from_rows(name, path, kind, digest, revision, rows: list[tuple[int, dict]], split: str | None) -> EvalData:
    if not rows:
        raise EvaluationDataError(f"evaluation data {name}: {path} has no records")
    chosen = split
    if split is not None and any("split" in row for _, row in rows):
        found = sorted({str(row.get("split")) for _, row in rows})
        rows = [(n, row) for n, row in rows if row.get("split") == split]
        if not rows:
            raise EvaluationDataError(
                f"evaluation data {name}: no record of {path} has split {split!r} (splits found: {', '.join(found)}); "
                "choose one of those splits"
            )
    else:
        chosen = None
    records = [_record(name, path, number, row) for number, row in rows]
    formats = tuple(sorted({r.format for r in records}, key=FORMATS.index))
    return EvalData(name, path, kind, digest, revision, chosen, formats, tuple(records))


def _record(name: str, path: str, number: int, row: dict) -> Record:
    def text(key: str) -> str | None:
        value = row.get(key)
        return value if isinstance(value, str) else None

    messages = row.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        if messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str):
            raise EvaluationDataError(
                f"evaluation data {name}: record {number} of {path}: the last message must be the assistant's, "
                "with text content (it is the completion that is scored)"
            )
        return Record("messages", messages=tuple(messages))
    if text("prompt") is not None and text("completion"):
        return Record("prompt_completion", prompt=text("prompt"), completion=text("completion"))
    if text("question") is not None and text("answer"):
        prompt = QA_TEMPLATE.format(question=text("question"))
        return Record("question_answer", prompt=prompt, completion=" " + (text("answer") or ""))
    if text("text"):
        return Record("text", text=text("text"))
    keys = ", ".join(sorted(row)) or "none"
    raise EvaluationDataError(
        f"evaluation data {name}: record {number} of {path} has no usable text field (found keys: {keys}); "
        "each record needs text, prompt + completion, question + answer, or messages"
    )


def encode(record: Record, tokenizer, max_length: int) -> Example | None:
    """Tokenise one record for scoring; ``None`` when nothing in it can be predicted within ``max_length``.

    Args:
        record: the record.
        tokenizer: a transformers tokenizer.
        max_length: at most this many tokens per example.

    Returns:
        The :class:`Example`, or ``None`` (a text of fewer than two tokens, or a
        completion that leaves no room for a single prompt token).

    Raises:
        EvaluationDataError: chat messages and a tokenizer without a chat template.
    """
    if record.format == "text":
        ids = list(tokenizer(record.text)["input_ids"])
        truncated = len(ids) > max_length
        ids = ids[:max_length]
        return Example(tuple(ids), 1, truncated) if len(ids) >= 2 else None
    prompt_text, completion_text = record.prompt, record.completion
    if record.format == "messages":
        prompt_text, completion_text = _chat_parts(record, tokenizer)
    prompt = list(tokenizer(prompt_text)["input_ids"])
    completion = list(tokenizer(completion_text, add_special_tokens=False)["input_ids"])
    if not completion:
        return None
    if not prompt:  # no context at all: the first completion token cannot be predicted
        fits = 2 <= len(completion) <= max_length
        return Example(tuple(completion), 1, False) if fits else None
    room = max_length - len(completion)
    if room < 1:  # the completion alone fills the window; it is never cut, so the example cannot be scored
        return None
    truncated = len(prompt) > room
    prompt = prompt[len(prompt) - room :] if truncated else prompt
    return Example(tuple(prompt + completion), len(prompt), truncated)


def _chat_parts(record: Record, tokenizer) -> tuple[str, str]:
    if not getattr(tokenizer, "chat_template", None):
        raise EvaluationDataError(
            "chat messages need a tokenizer with a chat template, and the base model's tokenizer has none; "
            "give prompt + completion records instead"
        )
    messages = list(record.messages or ())
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):  # a template that rewrites earlier turns: score the last message as written
        return prompt, messages[-1]["content"]
    return prompt, full[len(prompt) :]


def tokenise(data: EvalData, tokenizer, *, samples: int | None, max_length: int, offset: int = 0) -> dict:
    """The examples of records ``offset .. offset + samples`` of a domain.

    Returns:
        ``{"examples": [Example...], "skipped": n, "truncated": n}``.
    """
    chosen = data.records[offset : offset + samples if samples is not None else None]
    examples, skipped = [], 0
    for record in chosen:
        example = encode(record, tokenizer, max_length)
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    return {"examples": examples, "skipped": skipped, "truncated": sum(e.truncated for e in examples)}
