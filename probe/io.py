"""One reader (and one writer) for every file gatescope reads or writes.

Every failure a user can cause with a file (missing, a directory, not UTF-8, a bad JSON line,
a truncated or foreign safetensors file, a model directory without weights) becomes a
:class:`~probe.errors.GatescopeError` that names the file (and the line or tensor), says what
was expected and how to fix it. Writes go to a temporary name beside the target and are
renamed onto it, so a failed or interrupted command leaves no half-written file; the file
gets the user's umask (not ``mkstemp``'s 0600).

Each successful read of a user file is also noted in :data:`SOURCES` (path and sha256), so a
result's provenance can name every input it came from.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from probe.errors import GatescopeError
from probe.paths import BUNDLED_MODELS as BUNDLED

#: Inputs read during the current command: ``{path: sha256}`` (None outside a command).
SOURCES: ContextVar[dict[str, str] | None] = ContextVar("gatescope_sources", default=None)

#: Names ``load_model`` resolves without a path or the hub (the one list, in probe.paths).
BUNDLED_MODELS = tuple(BUNDLED)


def _note(path: Path, data: bytes) -> None:
    sources = SOURCES.get()
    if sources is not None:
        sources[str(path)] = hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_bytes(path: str | Path, what: str = "input") -> bytes:
    """The bytes of a file, or a clear error if it is missing, a directory or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise GatescopeError(f"{what} {path}: is a directory; expected a file")
    if not path.exists():
        raise GatescopeError(f"{what} {path}: no such file; check the path")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GatescopeError(f"{what} {path}: cannot be read ({exc.strerror})") from None
    _note(path, data)
    return data


def read_text(path: str | Path, what: str = "input") -> str:
    """A UTF-8 text file; a file in another encoding is refused naming the byte and line."""
    path = Path(path)
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise GatescopeError(
            f"{what} {path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start}); save the file as UTF-8 (e.g. iconv -t utf-8)"
        ) from None


def read_lines(path: str | Path, what: str = "input") -> list[str]:
    """The non-blank lines of a UTF-8 text file (at least one)."""
    lines = [ln for ln in read_text(path, what).splitlines() if ln.strip()]
    if not lines:
        raise GatescopeError(
            f"{what} {path}: the file is empty; expected one item per line (it has no prompts)"
        )
    return lines


def read_json(path: str | Path, what: str = "input") -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GatescopeError(
            f"{what} {path} line {exc.lineno}: not valid JSON ({exc.msg}); fix or re-create it"
        ) from None


def read_jsonl(path: str | Path, what: str = "input", fields: tuple[str, ...] = ()) -> list[dict]:
    """JSON objects, one per non-blank line, each with ``fields``; errors name the line."""
    rows = []
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GatescopeError(
                f"{what} {path} line {n}: not valid JSON ({exc.msg}); expected one JSON "
                f"object per line{_with(fields)}"
            ) from None
        if not isinstance(row, dict):
            raise GatescopeError(
                f"{what} {path} line {n}: expected a JSON object{_with(fields)}, got "
                f"{type(row).__name__}"
            )
        missing = [f for f in fields if f not in row]
        if missing:
            raise GatescopeError(
                f"{what} {path} line {n}: missing {_join(missing)}; each line needs {_join(fields)}"
            )
        rows.append(row)
    if not rows:
        raise GatescopeError(f"{what} {path}: the file is empty; expected JSON lines")
    return rows


def _join(names) -> str:
    names = [repr(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _with(fields: tuple[str, ...]) -> str:
    return f" with {_join(fields)}" if fields else ""


def safetensors_header(path: str | Path, what: str = "tensor file") -> dict:
    """The header of a safetensors file, checked against the file's size (catches truncated
    and random-bytes files before torch sees them)."""
    path = Path(path)
    if path.is_dir():
        raise GatescopeError(f"{what} {path}: is a directory; expected a .safetensors file")
    if not path.is_file():
        raise GatescopeError(f"{what} {path}: no such file; check the path")
    size = path.stat().st_size
    fix = "the file is truncated or not safetensors; re-create or re-download it"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise GatescopeError(f"{what} {path}: {size} bytes, too short; {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise GatescopeError(f"{what} {path}: header length {n} exceeds the file; {fix}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        assert isinstance(header, dict)
    except (UnicodeDecodeError, json.JSONDecodeError, AssertionError):
        raise GatescopeError(f"{what} {path}: the header is not valid JSON; {fix}") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise GatescopeError(f"{what} {path}: tensor '{name}' has no offsets; {fix}") from None
        end = max(end, int(stop))
        if int(start) > int(stop):
            raise GatescopeError(f"{what} {path}: tensor '{name}' has bad offsets; {fix}")
    if 8 + n + end > size:
        raise GatescopeError(
            f"{what} {path}: the tensors need {8 + n + end} bytes but the file has {size}; {fix}"
        )
    return header


def load_tensors(path: str | Path, what: str = "tensor file", names: tuple[str, ...] = ()) -> dict:
    """Tensors of a safetensors file (checked first), with ``names`` required present."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    safetensors_header(path, what)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GatescopeError(f"{what} {path}: cannot be read as safetensors ({exc})") from None
    missing = [n for n in names if n not in tensors]
    if missing:
        raise GatescopeError(
            f"{what} {path}: no tensor {', '.join(map(repr, missing))} (it has "
            f"{', '.join(map(repr, sorted(tensors))) or 'none'}); is it the right file?"
        )
    with open(path, "rb") as f:
        _note(Path(path), f.read())
    return tensors


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_model_dir(path: str | Path) -> None:
    """Refuse a local model directory without weights or with broken safetensors files."""
    path = Path(path)
    if not path.is_dir():
        return
    found = [f for f in WEIGHT_FILES if (path / f).is_file()]
    shards = sorted(path.glob("model-*.safetensors"))
    if not found and not shards:
        raise GatescopeError(
            f"model {path}: the directory has no weights (expected model.safetensors or "
            "sharded model-*.safetensors); save the model with save_pretrained"
        )
    single = path / "model.safetensors"
    for file in ([single] if single.is_file() else []) + shards:
        safetensors_header(file, "model weights")


def check_model_name(name: str) -> None:
    """Refuse a name that is a near miss of a bundled name (``referense``) at once, instead
    of letting the hub retry it; a path that exists or a hub id (``org/name``) passes."""
    if name in BUNDLED_MODELS or "/" in name or os.sep in name or Path(name).exists():
        return
    close = difflib.get_close_matches(name.lower(), BUNDLED_MODELS, n=1, cutoff=0.75)
    if close:
        raise GatescopeError(
            f"model '{name}': no such bundled model or directory; did you mean {close[0]}? "
            f"(bundled: {', '.join(BUNDLED_MODELS)})"
        )


def weight_fingerprint(model: Any) -> str:
    """sha256 of the weights as loaded: names, shapes and (float32) values of every parameter
    and buffer; a strided sample of at most 4096 values per tensor beyond 4M values in all."""
    import torch

    hf = getattr(model, "hf", model)
    tensors = sorted(hf.state_dict().items())
    total = sum(t.numel() for _, t in tensors)
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in tensors:
            h.update(f"{name}:{tuple(t.shape)};".encode())
            if t.device.type == "meta":
                continue
            flat = t.detach().reshape(-1)
            if total > 4_000_000 and flat.numel() > 4096:
                flat = flat[:: max(1, flat.numel() // 4096)]
            h.update(flat.float().cpu().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def check_out(path: str | Path | None, force: bool = False, what: str = "--out") -> None:
    """Refuse an output path before any work: a directory, a missing parent directory, or an
    existing file (unless ``force``)."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise GatescopeError(f"{what} {path}: is a directory; give a file name inside it")
    if not path.parent.resolve().is_dir():
        raise GatescopeError(
            f"{what} {path}: directory {path.parent} does not exist; create it first"
        )
    if path.exists() and not force:
        raise GatescopeError(f"{what} {path}: the file exists; pass --force to overwrite it")


def check_out_dir(
    path: str | Path | None, resume: bool = False, force: bool = False, what: str = "--out"
) -> None:
    """Refuse an output directory before any work: a file in its place, or a missing parent
    directory. An existing non-empty directory is what a resumed run continues (``resume``);
    otherwise it is refused unless ``force``."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise GatescopeError(f"{what} {path}: is a file; give a directory (new or to resume)")
    if not path.parent.resolve().is_dir():
        raise GatescopeError(
            f"{what} {path}: directory {path.parent} does not exist; create it first"
        )
    if path.is_dir() and any(path.iterdir()) and not (resume or force):
        raise GatescopeError(
            f"{what} {path}: the directory exists and is not empty; pass --resume to continue "
            "the run in it, --force to write over it, or give a new directory"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it only if the block succeeds; the
    result has mode ``0666 & ~umask``."""
    path = Path(path)
    if not path.parent.resolve().is_dir():
        raise GatescopeError(f"output {path}: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically, with the user's umask."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically, with the user's umask."""
    write_text(path, json.dumps(obj, indent=indent))


def save_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``tensors`` as a safetensors file atomically (temporary name, then renamed), with
    the user's umask; the one writer of every tensor file gatescope saves."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path
