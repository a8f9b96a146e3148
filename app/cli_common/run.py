"""The current command's run: user errors end with exit 2 (``--debug``: the traceback),
``--quiet`` silences progress bars, and :func:`note` collects what the result's provenance
records. Also the helpers that add shared options to a command's signature."""

from __future__ import annotations

import inspect
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from typing import Any

import typer

from probe import io
from probe.errors import GatescopeError


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
#: typer passes the command's context to a parameter annotated ``typer.Context`` (typer runs
#: its own copy of click, so ``click.get_current_context`` does not see it).
_CONTEXT = inspect.Parameter(
    "gatescope_context", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typer.Context
)


def user_errors(fn: Callable) -> Callable:
    """Turn user mistakes raised by a command into a clean exit 2 (``--debug``: traceback)."""
    own = set(inspect.signature(fn).parameters)

    @wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False) if "debug" in own else kwargs.pop("debug", False)
        quiet = kwargs.get("quiet", False) if "quiet" in own else kwargs.pop("quiet", False)
        context = kwargs.pop(_CONTEXT.name, None)
        recorded = {k: _plain(kwargs[k]) for k in _RECORDED if kwargs.get(k) is not None}
        run = _Run(_command_name(fn, context), time.time(), recorded, quiet)
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

    _add_params(fn, wrapper, [*_ERROR_PARAMS, _CONTEXT])
    return wrapper


def _command_name(fn: Callable, ctx: Any = None) -> str:
    """The command as typed after the program's name (``patch``, ``steer eval``), from the
    command's context, whatever the program was called (``gatescope``, ``python -m app.cli``)
    and whatever the function's name."""
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or (ctx.command.name or ""))
        ctx = ctx.parent
    if names:
        return " ".join(reversed(names))
    return fn.__name__.removesuffix("_cmd").replace("_", " ")


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
