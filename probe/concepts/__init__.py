"""Concepts: CAVs, TCAV with significance testing, cross-layer consistency, linear probes."""

from probe.concepts.cav import (
    CAV,
    ProbeResult,
    fit_cav,
    pooled_activations,
    probe_layers,
    site_activations,
    train_cav,
)
from probe.concepts.tcav import (
    CrossLayerResult,
    TCAVResult,
    cross_layer,
    directional_derivatives,
    site_gradients,
    tcav,
    tcav_score,
)

__all__ = [
    "CAV",
    "CrossLayerResult",
    "ProbeResult",
    "TCAVResult",
    "cross_layer",
    "directional_derivatives",
    "fit_cav",
    "pooled_activations",
    "probe_layers",
    "site_gradients",
    "site_activations",
    "tcav",
    "tcav_score",
    "train_cav",
]
