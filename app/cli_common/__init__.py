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

The parts: :mod:`.run` (errors, ``--quiet``, notes), :mod:`.model` (model options, ``load``),
:mod:`.inputs` (prompts and value checks), :mod:`.output` (``--json``/``--out``, provenance).
Commands import from ``app.cli_common`` itself.
"""

from app.cli_common.inputs import check_name, finite, positive, read_prompts, read_task
from app.cli_common.model import (
    BACKEND_HELP,
    BACKENDS,
    DEVICE_HELP,
    DEVICE_MAP_HELP,
    DTYPE_HELP,
    DTYPES,
    MODEL_HELP,
    REMOTE_HELP,
    TRUST_HELP,
    ModelOptions,
    check_model_name,
    check_model_options,
    load,
    model_options,
)
from app.cli_common.output import (
    METRICS,
    check_out_path,
    echo_json,
    emit,
    json_out,
    provenance,
    write_json,
)
from app.cli_common.run import fail, note, show_progress, user_errors
from probe.io import atomic_path, check_out

__all__ = [
    "BACKENDS",
    "BACKEND_HELP",
    "DEVICE_HELP",
    "DEVICE_MAP_HELP",
    "DTYPES",
    "DTYPE_HELP",
    "METRICS",
    "MODEL_HELP",
    "REMOTE_HELP",
    "TRUST_HELP",
    "ModelOptions",
    "atomic_path",
    "check_model_name",
    "check_model_options",
    "check_name",
    "check_out",
    "check_out_path",
    "echo_json",
    "emit",
    "fail",
    "finite",
    "json_out",
    "load",
    "model_options",
    "note",
    "positive",
    "provenance",
    "read_prompts",
    "read_task",
    "show_progress",
    "user_errors",
    "write_json",
]
