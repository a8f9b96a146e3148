"""The bundled reference models: a gated Qwen3-Next model, its ungated Qwen3 twin and a
hybrid Qwen3-Next model (Gated-DeltaNet and MoE layers), trained here on a corpus built
offline (``corpus``), with their task data (``tasks``)."""

from __future__ import annotations

from probe.paths import BUNDLED_MODELS as BUNDLED
from probe.paths import DATA
from probe.paths import bundled_model_dir as reference_path

__all__ = ["BUNDLED", "DATA", "reference_path"]
