"""Shared pieces of the command line: model loading, prompt input, JSON and atomic output.

Every command module (``app/cli_*.py``) uses these so that user mistakes end the same way:
a clear message on stderr, exit code 2, no traceback, and no half-written file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import typer

from probe.errors import GatescopeError

MODEL_HELP = "'reference', 'reference-plain', a local model directory or a hub id"


def fail(message: str) -> None:
    """Print a user-facing error and exit with status 2."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def user_errors(fn: Callable) -> Callable:
    """Turn GatescopeError (and missing files) raised by a command into a clean exit 2."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GatescopeError as exc:
            fail(str(exc))
        except FileNotFoundError as exc:
            fail(f"file not found: {exc.filename or exc}")

    return wrapper


DEVICE_HELP = "torch device, e.g. cpu, cuda, cuda:1"
DEVICE_MAP_HELP = "'auto' spreads a large model over the GPUs (transformers device_map)"
DTYPE_HELP = "weights dtype: float32, bfloat16 or float16 (statistics stay in float32)"
BACKEND_HELP = "'hooks' (local PyTorch hooks) or 'nnsight'"
REMOTE_HELP = "run on NDIF through nnsight (needs --backend nnsight and NDIF_API_KEY)"


def load(
    model: str,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    backend: str = "hooks",
    **kw: Any,
):
    """Load MODEL for a command (see :func:`probe.load_model`)."""
    from probe.load import load_model

    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        raise GatescopeError(f"--dtype {dtype}: expected float32, bfloat16 or float16")
    if device_map is not None and device is not None:
        raise GatescopeError("give --device or --device-map, not both")
    return load_model(
        model, device=device, dtype=dtype, device_map=device_map, backend=backend, **kw
    )


def read_prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    """Prompts from ``--prompt`` or ``--prompts`` (one per line, or JSONL with a text field)."""
    if (prompt is None) == (prompts_file is None):
        raise GatescopeError("give exactly one of --prompt TEXT or --prompts FILE")
    if prompt is not None:
        if not prompt.strip():
            raise GatescopeError("--prompt is empty; give some text")
        return [prompt]
    path = Path(prompts_file)
    if not path.is_file():
        raise GatescopeError(f"--prompts {path}: no such file")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise GatescopeError(f"--prompts {path}: the file has no prompts (one per line)")
    if path.suffix == ".jsonl":
        try:
            rows = [json.loads(ln) for ln in lines]
            return [r["text"] if isinstance(r, dict) else str(r) for r in rows]
        except (json.JSONDecodeError, KeyError) as exc:
            raise GatescopeError(
                f"--prompts {path}: expected JSON lines with a 'text' field ({exc})"
            ) from None
    return lines


def check_out_path(path: Path | None) -> None:
    """Refuse an output path whose directory does not exist, before any work starts."""
    if path is not None and not Path(path).expanduser().resolve().parent.is_dir():
        raise GatescopeError(
            f"output {path}: directory {Path(path).parent} does not exist; create it first"
        )


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it only if the block succeeds."""
    path = Path(path)
    check_out_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")


def echo_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
