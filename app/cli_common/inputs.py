"""Reading and checking command inputs: prompts, counts, numbers and plain names."""

from __future__ import annotations

from pathlib import Path

from app.cli_common.run import note
from probe import io
from probe.errors import GatescopeError


def read_prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    """Prompts from ``--prompt`` or ``--prompts`` (one per line, or JSONL with a text field)."""
    if (prompt is None) == (prompts_file is None):
        raise GatescopeError("give exactly one of --prompt TEXT or --prompts FILE")
    if prompt is not None:
        if not prompt.strip():
            raise GatescopeError("--prompt is empty; give some text")
        note(prompt_sha256=_sha(prompt))
        return [prompt]
    path = Path(prompts_file)
    if path.suffix == ".jsonl":
        return [r["text"] for r in io.read_jsonl(path, "--prompts", ("text",))]
    return io.read_lines(path, "--prompts")


def read_task(task: str, limit: int | None = None):
    """The task of ``--task`` (a bundled name or a JSONL file), its first ``--limit`` prompts;
    the number of prompts and the task go to the result's provenance."""
    from probe.tasks import load_task

    positive(limit, "--limit")
    t = load_task(task)
    t = t.subset(limit) if limit else t
    note(n_prompts=len(t.clean), task=t.name)
    return t


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def positive(value: int | None, option: str, allow_none: bool = True) -> None:
    """Refuse a count option below 1 (``--limit 0``, ``--batch-size -1``)."""
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise GatescopeError(f"{option} {value}: expected a whole number of at least 1")


def finite(value: float, option: str) -> None:
    import math

    if not math.isfinite(value):
        raise GatescopeError(f"{option} {value}: not a finite number; give e.g. 2 or -1.5")


def check_name(name: str, option: str = "--name") -> None:
    """A plain name (letters, digits, '-', '_', '.'), never a path (``../x``)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise GatescopeError(
            f"{option} {name!r}: expected a plain name (letters, digits, '-', '_'), not a path"
        )
