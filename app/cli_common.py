"""Shared pieces of the command line: model options, output paths, JSON, provenance, errors.

Every command module (``app/cli_*.py``) uses these so that every command behaves the same:

- ``@user_errors`` (on every command): user mistakes (:class:`GatescopeError`, bad files)
  end with a message on stderr and exit 2, never a traceback (``--debug`` shows it);
  ``--quiet`` silences progress bars (which go to stderr, so ``--json`` stays clean).
- ``@model_options`` (on every command that loads a model): ``--device``, ``--dtype``,
  ``--device-map``, ``--backend``, ``--remote``, ``--trust-remote-code``, checked before any
  weight is loaded; :func:`load` then uses them.
- ``@json_out`` (on every command that computes numbers): ``--json``, ``--out FILE`` and
  ``--force``; the output path is checked before any work, and :func:`write_json` /
  :func:`echo_json` add a ``provenance`` block to the result.

Decorator order: ``@app.command() @user_errors @model_options @json_out def cmd(...)``.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from functools import wraps
from pathlib import Path
from typing import Any

import typer

from probe import io
from probe.errors import GatescopeError
from probe.io import atomic_path, check_out  # noqa: F401  (re-exported for commands)

MODEL_HELP = "'reference', 'reference-plain', a local model directory or a hub id"
DEVICE_HELP = "torch device, e.g. cpu, cuda, cuda:1"
DEVICE_MAP_HELP = "'auto' spreads a large model over the GPUs (transformers device_map)"
DTYPE_HELP = "weights dtype: float32, bfloat16 or float16 (statistics stay in float32)"
BACKEND_HELP = "'hooks' (local PyTorch hooks) or 'nnsight'"
REMOTE_HELP = "run on NDIF through nnsight (needs --backend nnsight and NDIF_API_KEY)"
TRUST_HELP = "run the model repository's own code (transformers trust_remote_code)"
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("hooks", "nnsight")


# ---------------------------------------------------------------- errors, --debug, --quiet


@dataclass
class _Run:
    """What the current command has done so far, for its result's provenance."""

    command: str
    started: float
    options: dict
    quiet: bool = False
    model: dict | None = None
    notes: dict | None = None
    cached: tuple | None = None


_RUN: ContextVar[_Run | None] = ContextVar("gatescope_run", default=None)


def fail(message: str) -> None:
    """Print a user-facing error and exit with status 2."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _add_params(fn: Callable, wrapper: Callable, params: list[inspect.Parameter]) -> None:
    sig = inspect.signature(fn, eval_str=True)
    have = set(sig.parameters)
    extra = [p for p in params if p.name not in have]
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])


def _opt(name: str, default: Any, *flags: str, help: str, annotation: Any = None):
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(default, *flags, help=help),
        annotation=annotation if annotation is not None else type(default),
    )


_ERROR_PARAMS = [
    _opt("debug", False, "--debug", help="show the Python traceback of an error"),
    _opt("quiet", False, "--quiet", "-q", help="no progress bars on stderr"),
]
_RECORDED = ("site", "sites", "positions", "seed", "limit", "mode", "method", "pooling")


def user_errors(fn: Callable) -> Callable:
    """Turn user mistakes raised by a command into a clean exit 2 (``--debug``: traceback)."""
    own = set(inspect.signature(fn).parameters)

    @wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False) if "debug" in own else kwargs.pop("debug", False)
        quiet = kwargs.get("quiet", False) if "quiet" in own else kwargs.pop("quiet", False)
        recorded = {k: _plain(kwargs[k]) for k in _RECORDED if kwargs.get(k) is not None}
        run = _Run(_command_name(fn), time.time(), recorded, quiet)
        tokens = (_RUN.set(run), io.SOURCES.set({}))
        try:
            return fn(*args, **kwargs)
        except (GatescopeError, FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as exc:
            if debug:
                traceback.print_exc()
            if isinstance(exc, GatescopeError):
                fail(str(exc))
            if isinstance(exc, UnicodeDecodeError):
                fail(f"an input is not UTF-8 text ({exc}); save it as UTF-8")
            fail(f"{exc.filename or exc}: {exc.strerror or 'cannot be read'}")
        finally:
            _RUN.reset(tokens[0])
            io.SOURCES.reset(tokens[1])

    _add_params(fn, wrapper, _ERROR_PARAMS)
    return wrapper


def _command_name(fn: Callable) -> str:
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.command_path:
        return ctx.command_path
    return fn.__name__


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def show_progress() -> bool:
    """Whether to draw progress bars (on stderr): not with ``--quiet``."""
    run = _RUN.get()
    return not (run is not None and run.quiet)


def note(**items: Any) -> None:
    """Add items (metric, formula, n_prompts, ...) to the current result's provenance."""
    run = _RUN.get()
    if run is not None:
        run.notes = {**(run.notes or {}), **{k: v for k, v in items.items() if v is not None}}


# ----------------------------------------------------------------------- model options


@dataclass(frozen=True)
class ModelOptions:
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    backend: str = "hooks"
    remote: bool = False
    trust_remote_code: bool = False


_MODEL_OPTIONS: ContextVar[ModelOptions] = ContextVar("gatescope_model_options")

_MODEL_PARAMS = [
    _opt("device", None, "--device", help=DEVICE_HELP, annotation=str),
    _opt("dtype", None, "--dtype", help=DTYPE_HELP, annotation=str),
    _opt("device_map", None, "--device-map", help=DEVICE_MAP_HELP, annotation=str),
    _opt("backend", "hooks", "--backend", help=BACKEND_HELP),
    _opt("remote", False, "--remote", help=REMOTE_HELP),
    _opt("trust_remote_code", False, "--trust-remote-code", help=TRUST_HELP),
]


def check_model_options(opts: ModelOptions) -> None:
    """Refuse options that cannot work here, before any config or weight is read."""
    import torch

    if opts.backend not in BACKENDS:
        raise GatescopeError(f"--backend {opts.backend}: unknown; choose {' or '.join(BACKENDS)}")
    if opts.remote and opts.backend != "nnsight":
        raise GatescopeError("--remote needs --backend nnsight (NDIF runs nnsight)")
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise GatescopeError(f"--dtype {opts.dtype}: expected float32, bfloat16 or float16")
    if opts.device_map is not None:
        if opts.device is not None:
            raise GatescopeError("give --device or --device-map, not both")
        if opts.backend == "nnsight":
            raise GatescopeError(
                "--device-map is for the hooks backend; with --backend nnsight give --device "
                "(nnsight places the model itself) or drop --backend"
            )
        if opts.device_map not in ("auto", "balanced", "sequential", "cpu") and not (
            opts.device_map.startswith("cuda")
        ):
            raise GatescopeError(
                f"--device-map {opts.device_map}: expected auto, balanced, sequential or cpu"
            )
        if opts.device_map != "cpu" and not torch.cuda.is_available():
            raise GatescopeError(
                f"--device-map {opts.device_map}: no CUDA GPU on this machine; drop the option "
                "to run on the CPU"
            )
    if opts.device is not None:
        _check_device(opts.device, opts.dtype)


def _check_device(name: str, dtype: str | None) -> None:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GatescopeError(
            f"--device {name}: not a torch device; e.g. cpu, cuda, cuda:1"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GatescopeError(
                f"--device {name}: CUDA is not available on this machine (no GPU or a CPU-only "
                "torch); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GatescopeError(
                f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"cuda:0-cuda:{torch.cuda.device_count() - 1}"
            )
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise GatescopeError(
                f"--dtype bfloat16: the GPU of --device {name} cannot run bfloat16; use float16"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise GatescopeError(f"--device {name}: MPS is not available; use --device cpu")
    elif device.type != "cpu":
        raise GatescopeError(f"--device {name}: expected cpu, cuda[:N] or mps")


def model_options(fn: Callable) -> Callable:
    """Add the shared model options to a command; they are checked before the command runs
    and :func:`load` uses them. Parameters the command declares itself are kept (read, not
    removed)."""
    own = set(inspect.signature(fn).parameters)
    fields = [p.name for p in _MODEL_PARAMS]

    @wraps(fn)
    def wrapper(*args, **kwargs):
        values = {}
        for name in fields:
            default = ModelOptions.__dataclass_fields__[name].default
            value = kwargs.get(name, default) if name in own else kwargs.pop(name, default)
            values[name] = default if value is None and default is not None else value
        opts = ModelOptions(**values)
        check_model_options(opts)
        token = _MODEL_OPTIONS.set(opts)
        try:
            return fn(*args, **kwargs)
        finally:
            _MODEL_OPTIONS.reset(token)

    _add_params(fn, wrapper, _MODEL_PARAMS)
    return wrapper


def check_model_name(model: str) -> None:
    """Refuse a typo of a bundled name and a model directory without readable weights."""
    io.check_model_name(str(model))
    io.check_model_dir(str(model))


def load(
    model: str,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    backend: str | None = None,
    remote: bool | None = None,
    trust_remote_code: bool | None = None,
    **kw: Any,
):
    """Load MODEL with the command's model options (explicit arguments win); see
    :func:`probe.load_model`. Records the model in the result's provenance."""
    from probe.load import load_model

    given = {
        "device": device,
        "dtype": dtype,
        "device_map": device_map,
        "backend": backend,
        "remote": remote,
        "trust_remote_code": trust_remote_code,
    }
    opts = replace(
        _MODEL_OPTIONS.get(ModelOptions()), **{k: v for k, v in given.items() if v is not None}
    )
    check_model_options(opts)
    check_model_name(model)
    m = load_model(model, **asdict(opts), **kw)
    run = _RUN.get()
    if run is not None:
        run.model = {
            "id": m.name,
            "family": m.family.name,
            "fingerprint": io.weight_fingerprint(m),
            "device": str(m.device),
            "dtype": str(next(m.hf.parameters()).dtype).removeprefix("torch."),
            "backend": opts.backend,
        }
    return m


# --------------------------------------------------------------------- inputs and names


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


# ------------------------------------------------------------------ --json, --out, provenance

_OUT_PARAMS = [
    _opt("json_", False, "--json", help="print the result as JSON on stdout"),
    _opt("out", None, "--out", help="write the result as JSON to this file", annotation=Path),
    _opt("force", False, "--force", help="overwrite an existing --out file"),
]


def json_out(fn: Callable) -> Callable:
    """Add ``--json``, ``--out FILE`` and ``--force`` to a command (those it declares itself
    are kept) and check the ``--out`` path before any work."""
    own = set(inspect.signature(fn).parameters)

    @wraps(fn)
    def wrapper(*args, **kwargs):
        values = {}
        for p in _OUT_PARAMS:
            values[p.name] = kwargs.get(p.name) if p.name in own else kwargs.pop(p.name, None)
        check_out(values["out"], bool(values["force"]))
        return fn(*args, **kwargs)

    _add_params(fn, wrapper, _OUT_PARAMS)
    return wrapper


METRICS = {
    "patch": (
        "logit difference",
        "LD = logit(answer) - logit(wrong) at the last token; denoise effect = "
        "(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt); noise effect = "
        "(LD_patched - LD_clean) / (LD_clean - LD_corrupt)",
    ),
    "attribute": (
        "attributed logit difference",
        "score = attribution of LD = logit(answer) - logit(wrong), normalised by "
        "(LD_clean - LD_corrupt) like denoising activation patching",
    ),
    "circuit": (
        "faithfulness",
        "(LD_circuit - LD_corrupt) / (LD_clean - LD_corrupt), nodes outside the circuit "
        "patched from the corrupt run",
    ),
    "agreement": ("correlation", "Pearson / Spearman r of method scores with patching effects"),
    "gates": ("gate statistics", "mean sigmoid gate, fraction below thresholds, sink, max |x|"),
    "steer eval": ("word logit difference", "mean logit(positive words) - mean logit(negative)"),
    "concept cav": ("held-out accuracy", "logistic-regression CAV, concept vs random set"),
    "concept tcav": (
        "TCAV score",
        "fraction of inputs with a positive directional derivative of the target logit along "
        "the CAV; t-test against random CAVs",
    ),
    "concept probe": ("probe accuracy", "held-out logistic-regression accuracy per layer"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gatescope")
    except PackageNotFoundError:
        return "unknown"


def provenance(result: Any = None) -> dict:
    """The provenance block of the current command's result."""
    run = _RUN.get()
    if run is None:
        return {"gatescope": _version()}
    short = run.command.split(" ", 1)[-1] if " " in run.command else run.command
    metric = METRICS.get(short)
    block: dict[str, Any] = {
        "gatescope": _version(),
        "command": run.command,
        "model": run.model,
        "sources": [{"path": p, "sha256": h} for p, h in (io.SOURCES.get() or {}).items()],
        **run.options,
    }
    if metric is not None:
        block["metric"], block["formula"] = metric
    if isinstance(result, dict):
        for key in ("n_prompts", "metric", "mode", "task", "site", "sites"):
            if key in result and not isinstance(result[key], (dict, list)):
                block.setdefault(key, result[key])
    block.update(run.notes or {})
    if run.model is not None:
        block.setdefault("device", run.model["device"])
        block.setdefault("dtype", run.model["dtype"])
    block["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started))
    block["seconds"] = round(time.time() - run.started, 3)
    return block


def _with_provenance(obj: Any) -> Any:
    run = _RUN.get()
    if run is None:
        return obj
    if run.cached is None or run.cached[0] is not obj:  # one block for --json and --out
        run.cached = (obj, provenance(obj if isinstance(obj, dict) else None))
    block = run.cached[1]
    if isinstance(obj, dict):
        return {**obj, "provenance": block}
    return {"results": obj, "provenance": block}


def write_json(obj: Any, path: Path) -> None:
    """Write a result (with its provenance) atomically, with the user's umask."""
    io.write_text(path, json.dumps(_with_provenance(obj), indent=2))


def echo_json(obj: Any) -> None:
    """Print a result (with its provenance) as JSON on stdout."""
    sys.stdout.write(json.dumps(_with_provenance(obj), indent=2) + "\n")


def emit(obj: Any, json_: bool, out: Path | None) -> bool:
    """Write ``obj`` to ``out`` and/or print it as JSON; True if printed."""
    if out is not None:
        write_json(obj, out)
    if json_:
        echo_json(obj)
    return bool(json_)


def check_out_path(path: Path | None, force: bool = True) -> None:
    """Refuse an output path that is a directory or whose directory does not exist (and an
    existing file unless ``force``), before any work starts."""
    check_out(path, force)
