"""Tasks: prompt pairs (clean, corrupt) with answer and wrong-answer tokens, and the
logit-difference metric ``logit(answer) - logit(wrong)`` at each prompt's last token.

A task file is JSONL with one object per line: ``clean``, ``corrupt``, ``answer``, ``wrong``
(answers are words, usually with a leading space: ``" Mary"``). Bundled tasks (``ioi``,
``facts``, ``induction``) live in ``data/tasks/`` (see its README), installed with the
package (``probe.paths``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from probe.errors import GatescopeError
from probe.paths import TASKS_DIR

BUNDLED_TASKS = ("ioi", "facts", "induction")


@dataclass
class TaskBatch:
    """A tokenized task: ``clean_ids``/``corrupt_ids`` (N, T) right-padded, equal lengths per
    row; ``answer_ids``/``wrong_ids`` (N,); ``lengths`` (N,) real tokens per row."""

    clean_ids: torch.Tensor
    corrupt_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    answer_ids: torch.Tensor
    wrong_ids: torch.Tensor

    def __len__(self) -> int:
        return self.clean_ids.shape[0]

    def select(self, rows: torch.Tensor) -> TaskBatch:
        """The prompts ``rows``, trimmed to their longest length."""
        n = int(self.lengths[rows].max())
        return TaskBatch(
            clean_ids=self.clean_ids[rows, :n],
            corrupt_ids=self.corrupt_ids[rows, :n],
            attention_mask=self.attention_mask[rows, :n],
            lengths=self.lengths[rows],
            answer_ids=self.answer_ids[rows],
            wrong_ids=self.wrong_ids[rows],
        )

    def tile(self, k: int, ids: torch.Tensor | None = None) -> TaskBatch:
        """The prompts repeated ``k`` times (block j = rows ``j*n .. (j+1)*n``); ``ids``
        (N, T) replaces both the clean and corrupt ids (the run being patched)."""
        clean = self.clean_ids if ids is None else ids
        corrupt = self.corrupt_ids if ids is None else ids
        return TaskBatch(
            clean_ids=clean.repeat(k, 1),  # (k * N, T)
            corrupt_ids=corrupt.repeat(k, 1),
            attention_mask=self.attention_mask.repeat(k, 1),
            lengths=self.lengths.repeat(k),
            answer_ids=self.answer_ids.repeat(k),
            wrong_ids=self.wrong_ids.repeat(k),
        )


@dataclass(frozen=True)
class Task:
    """Prompt pairs and their answers; ``tokenize`` checks them against a tokenizer."""

    name: str
    clean: list[str]
    corrupt: list[str]
    answers: list[str]
    wrongs: list[str]

    def __post_init__(self) -> None:
        n = len(self.clean)
        if n == 0:
            raise GatescopeError(f"task '{self.name}' has no prompts")
        if not (len(self.corrupt) == len(self.answers) == len(self.wrongs) == n):
            raise GatescopeError(
                f"task '{self.name}': clean, corrupt, answers and wrongs must have the same "
                f"number of rows ({n}, {len(self.corrupt)}, {len(self.answers)}, "
                f"{len(self.wrongs)})"
            )

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, n: int) -> Task:
        """The first ``n`` rows (``n`` >= 1)."""
        if n < 1:
            raise GatescopeError(f"task '{self.name}': a subset needs at least 1 row, not {n}")
        return Task(
            name=self.name,
            clean=self.clean[:n],
            corrupt=self.corrupt[:n],
            answers=self.answers[:n],
            wrongs=self.wrongs[:n],
        )

    def tokenize(self, tokenizer) -> TaskBatch:
        """Tokenize; refuse rows whose clean and corrupt lengths differ and answers that are
        not single tokens (patching needs aligned positions and one-token answers)."""
        enc = lambda text: tokenizer(text, add_special_tokens=True)["input_ids"]  # noqa: E731
        clean = [enc(t) for t in self.clean]
        corrupt = [enc(t) for t in self.corrupt]
        for i, (a, b) in enumerate(zip(clean, corrupt, strict=True)):
            if len(a) != len(b):
                raise GatescopeError(
                    f"task '{self.name}' row {i}: the clean prompt is {len(a)} tokens and the "
                    f"corrupt prompt {len(b)} tokens; patching needs equal lengths so "
                    "positions line up. Rephrase the corrupt prompt (e.g. swap a name for one "
                    "that is a single token)"
                )
        answers = [
            _single_token(tokenizer, a, self.name, i, "answer") for i, a in enumerate(self.answers)
        ]
        wrongs = [
            _single_token(tokenizer, w, self.name, i, "wrong") for i, w in enumerate(self.wrongs)
        ]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        width = max(map(len, clean))
        shape = (len(clean), width)
        clean_ids, corrupt_ids = torch.full(shape, pad), torch.full(shape, pad)
        mask = torch.zeros(shape, dtype=torch.long)
        for i, (a, b) in enumerate(zip(clean, corrupt, strict=True)):
            clean_ids[i, : len(a)], corrupt_ids[i, : len(b)] = torch.tensor(a), torch.tensor(b)
            mask[i, : len(a)] = 1
        return TaskBatch(
            clean_ids=clean_ids,
            corrupt_ids=corrupt_ids,
            attention_mask=mask,
            lengths=mask.sum(1),
            answer_ids=torch.tensor(answers),
            wrong_ids=torch.tensor(wrongs),
        )


def _single_token(tokenizer, word: str, task: str, row: int, what: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise GatescopeError(
            f"task '{task}' row {row}: the {what} {word!r} is not a single token (it "
            f"tokenizes as {pieces}); use a one-token {what}"
        )
    return ids[0]


def last_token_logits(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, V): the logits at each row's last real token."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, lengths.to(logits.device) - 1]


def logit_diff(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """(N,) ``logit(answer) - logit(wrong)`` at each row's last real token."""
    last = last_token_logits(logits, batch.lengths)
    dev = last.device
    rows = torch.arange(last.shape[0], device=dev)
    return last[rows, batch.answer_ids.to(dev)] - last[rows, batch.wrong_ids.to(dev)]


def _read_jsonl(path: Path, what: str, fields: tuple[str, ...] = ()) -> list[dict]:
    from probe.io import read_jsonl

    return read_jsonl(path, what, fields)


def _resolve(name_or_path: str | Path, kind: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".jsonl" or path.exists():
        return path
    bundled = TASKS_DIR / f"{name_or_path}.jsonl"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in TASKS_DIR.glob("*.jsonl")) if TASKS_DIR.is_dir() else []
    raise GatescopeError(
        f"{kind} '{name_or_path}' is neither a JSONL file nor a bundled name; bundled: "
        f"{', '.join(names) or 'none'}"
    )


def load_task(name_or_path: str | Path) -> Task:
    """A bundled task (``ioi``, ``facts``, ``induction``) or a JSONL file of pairs."""
    path = _resolve(name_or_path, "task")
    rows = _read_jsonl(path, "task")
    need = ("clean", "corrupt", "answer", "wrong")
    for i, row in enumerate(rows):
        missing = [k for k in need if k not in row]
        if missing:
            raise GatescopeError(
                f"task {path} row {i}: missing {', '.join(missing)}; each line needs "
                f"{', '.join(need)}"
            )
        for key in need:
            if not isinstance(row[key], str) or not row[key]:
                raise GatescopeError(f"task {path} row {i}: '{key}' must be a non-empty text")
    same = [i for i, r in enumerate(rows) if r["clean"] == r["corrupt"]]
    if same:
        raise GatescopeError(
            f"task {path} row {same[0]}: the clean and corrupt prompts are the same text "
            f"({len(same)} such rows); patching needs a corrupt prompt that differs (e.g. "
            "another name)"
        )
    return Task(
        name=path.stem,
        clean=[r["clean"] for r in rows],
        corrupt=[r["corrupt"] for r in rows],
        answers=[r["answer"] for r in rows],
        wrongs=[r["wrong"] for r in rows],
    )


def load_texts(name_or_path: str | Path) -> list[str]:
    """Sentences of a bundled set (``concept_sport``, ``random_0``, ...) or a JSONL file with a
    ``text`` field per line."""
    path = _resolve(name_or_path, "text set")
    rows = _read_jsonl(path, "text set")
    for n, r in enumerate(rows, 1):
        if "text" not in r:
            raise GatescopeError(f"text set {path} row {n}: every line needs a 'text' field")
        if not isinstance(r["text"], str) or not r["text"].strip():
            raise GatescopeError(f"text set {path} row {n}: 'text' must be a non-empty text")
    return [r["text"] for r in rows]
