"""Writing into a forward pass: edits, activation patching, steering, per-head tests.

Everything goes through one mechanism, :func:`interventions.edits.intervene` (built on
``probe.hook_sites(..., write=True)``).
"""

from interventions.edits import (
    Ablate,
    Add,
    Apply,
    BanExperts,
    ClampGate,
    Edit,
    ForceExperts,
    Patch,
    ProjectOut,
    Rotate,
    ScaleGate,
    intervene,
)
from interventions.heads import HeadScores, direct_logit_attribution, interchange_test
from interventions.patching import Component, Grid, PatchingResult, activation_patching
from interventions.steering import (
    SteeringEval,
    SteeringVector,
    build_vector,
    directional_ablation,
    evaluate_steering,
    from_direction,
    generate,
)

__all__ = [
    "Ablate",
    "Add",
    "Apply",
    "BanExperts",
    "ClampGate",
    "ForceExperts",
    "Component",
    "Edit",
    "Grid",
    "HeadScores",
    "Patch",
    "PatchingResult",
    "ProjectOut",
    "Rotate",
    "ScaleGate",
    "SteeringEval",
    "SteeringVector",
    "activation_patching",
    "build_vector",
    "direct_logit_attribution",
    "directional_ablation",
    "evaluate_steering",
    "from_direction",
    "generate",
    "interchange_test",
    "intervene",
]
