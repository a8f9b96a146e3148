"""Where the bundled data lives: the reference models (``models/``) and the task files
(``tasks/``).

In a source checkout this is the repository's ``data/`` directory. A built wheel installs the
same directory as the package ``gatescope_data`` (pyproject.toml maps ``data/`` to it), found
here through :mod:`importlib.resources`, so a non-editable install works offline from any
directory. The checkout is tried first, so a checkout never reads another installation's data.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from probe.errors import GatescopeError

PACKAGE = "gatescope_data"
#: Bundled model names (``reference`` is the gated one) -> directory under ``models/``.
BUNDLED_MODELS = {
    "reference": "reference-gated",
    "reference-gated": "reference-gated",
    "reference-plain": "reference-plain",
    "reference-hybrid": "reference-hybrid",
}


def _checkout_data() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "data" / "tasks").is_dir():
        return root / "data"
    return None


def data_root() -> Path:
    """The bundled data directory: the checkout's ``data/``, else the installed package."""
    checkout = _checkout_data()
    if checkout is not None:
        return checkout
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        root = None
    if isinstance(root, Path) and root.is_dir():
        return root
    # neither a checkout nor an installed wheel: the errors name the path that was expected
    return Path(__file__).resolve().parents[1] / "data"


DATA = data_root()
MODELS_DIR = DATA / "models"
TASKS_DIR = DATA / "tasks"


def bundled_model_dir(name: str) -> Path:
    """The directory of a bundled reference model (``reference``, ``reference-plain``,
    ``reference-hybrid``)."""
    if name not in BUNDLED_MODELS:
        raise GatescopeError(
            f"'{name}' is not a bundled model; bundled: {', '.join(sorted(BUNDLED_MODELS))}"
        )
    path = MODELS_DIR / BUNDLED_MODELS[name]
    if not (path / "config.json").is_file():
        raise GatescopeError(
            f"the bundled model '{name}' is missing at {path}; "
            "re-create it with: gatescope reference train --out DIR, then copy DIR/model there"
        )
    return path
