"""The shared model options (``--device``, ``--dtype``, ``--device-map``, ``--backend``,
``--remote``, ``--trust-remote-code``): ``@model_options`` adds and checks them before any
weight is read; :func:`load` loads a model with them and records it for the provenance."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from functools import wraps
from typing import Any

from app.cli_common.run import _RUN, _add_params, _opt, show_progress
from probe import io
from probe.errors import GatescopeError

MODEL_HELP = "'reference', 'reference-plain', a local model directory or a hub id"
DEVICE_HELP = "torch device, e.g. cpu, cuda, cuda:1"
DEVICE_MAP_HELP = "'auto' spreads a large model over the GPUs (transformers device_map)"
DTYPE_HELP = "weights dtype: float32, bfloat16 or float16 (statistics stay in float32)"
BACKEND_HELP = "'hooks' (local PyTorch hooks) or 'nnsight'"
REMOTE_HELP = "run on NDIF through nnsight (needs --backend nnsight and NDIF_API_KEY)"
TRUST_HELP = "run the model repository's own code (transformers trust_remote_code)"
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("hooks", "nnsight")


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


@contextmanager
def _quiet_transformers(quiet: bool):
    """Without progress (``--quiet``), transformers' own bars ("Loading weights") too."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


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
    with _quiet_transformers(not show_progress()):
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
