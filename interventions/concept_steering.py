"""Concept steering: a CAV becomes a steering vector (add the concept) or an edit that
removes it (project the CAV out), and goes through the same evaluation with random controls.
"""

from __future__ import annotations

import torch

from interventions.edits import ProjectOut
from interventions.steering import SteeringVector
from probe.concepts import CAV
from probe.model import Model
from probe.sites import Site


def cav_steering_vector(cav: CAV, model: Model, scale: float | None = None) -> SteeringVector:
    """The CAV (a unit vector) as a steering vector at its site. ``scale`` sets its norm;
    by default the mean norm of the site's activations on a short prompt, so coefficients
    are comparable across sites."""
    from probe.concepts.cav import site_activations

    site = Site.parse(cav.site)
    if scale is None:
        acts = site_activations(model, ["The day was ordinary."], site, "mean")
        scale = float(torch.tensor(acts).norm(dim=-1).mean())
    shape = _site_shape(model, site)
    direction = cav.tensor(shape) * scale
    vec = SteeringVector(
        direction,
        site,
        1.0,
        "cav",
        {
            "model": model.name,
            "concept": cav.concept,
            "random": cav.random,
            "cav_accuracy": cav.accuracy,
        },
    )
    vec.check(model)
    return vec


def remove_concept(cav: CAV, model: Model) -> ProjectOut:
    """An edit that projects the concept direction out of its site."""
    site = Site.parse(cav.site)
    return ProjectOut(site, direction=cav.tensor(_site_shape(model, site)))


def _site_shape(model: Model, site: Site) -> tuple[int, ...]:
    from interventions.steering import _site_width

    return _site_width(model, site)
