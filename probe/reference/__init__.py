"""The bundled reference models: a gated Qwen3-Next model, its ungated Qwen3 twin and a
hybrid Qwen3-Next model (Gated-DeltaNet and MoE layers), trained here on a corpus built
offline (``corpus``), with their task data (``tasks``)."""

from __future__ import annotations

from pathlib import Path

from probe.errors import GatescopeError

DATA = Path(__file__).resolve().parents[2] / "data"
BUNDLED = {
    "reference": "reference-gated",
    "reference-gated": "reference-gated",
    "reference-plain": "reference-plain",
    "reference-hybrid": "reference-hybrid",
}


def reference_path(name: str) -> Path:
    """The directory of a bundled reference model (``reference``, ``reference-plain``)."""
    if name not in BUNDLED:
        raise GatescopeError(
            f"'{name}' is not a bundled model; bundled: {', '.join(sorted(BUNDLED))}"
        )
    path = DATA / "models" / BUNDLED[name]
    if not (path / "config.json").is_file():
        raise GatescopeError(
            f"the bundled model '{name}' is missing at {path}; "
            "re-create it with: gatescope reference train --out DIR, then copy DIR/model there"
        )
    return path
