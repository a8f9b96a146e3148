"""Concept steering: a CAV (arXiv 1711.11279) as a steering vector or as concept removal,
evaluated against random controls (Rogue Scalpel: random directions steer too).

1. Add: the CAV (a unit vector) scaled to the concept's gap along it (mean projection of the
   concept activations minus that of the random ones, kept on the CAV) becomes a
   :class:`~interventions.steering.SteeringVector`; ``coef = 1`` moves an activation by as
   much as the concept differs from random text along the direction.
2. Remove: project the CAV out of its site (``x - (x . c) c`` on the flattened per-token
   value, so headed sites lose the component of the whole vector).
3. Evaluate: adding goes through :func:`~interventions.steering.evaluate_steering` (the
   metric per coefficient next to random vectors of equal norm); removing is compared with
   removing random unit directions at the same site.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from interventions.edits import Apply, Edit, ProjectOut, intervene
from interventions.steering import SteeringEval, SteeringVector, evaluate_steering
from probe.concepts import CAV
from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.tracer import Tracer


def _site_shape(model: Model, site: Site) -> tuple[int, ...]:
    """Per-token shape of the site's value in this model."""
    with Tracer(model, site, positions=[0]) as tr, torch.no_grad():
        model.run("a")
    return tuple(tr[site].shape[2:])


def _direction(cav: CAV, model: Model) -> tuple[Site, torch.Tensor]:
    site = Site.parse(cav.site)
    model.check_site(site)
    shape = _site_shape(model, site)
    if math.prod(shape) != len(cav.direction):
        raise GatescopeError(
            f"the CAV has {len(cav.direction)} entries but {site} of this model has "
            f"{math.prod(shape)} per token {shape}; train the CAV on this model"
        )
    return site, cav.tensor(shape).float()


def cav_steering_vector(cav: CAV, model: Model, scale: float | None = None) -> SteeringVector:
    """The CAV as a steering vector at its site, of norm ``scale`` (default: the concept's
    gap along the CAV, so coefficient 1 is "one concept's worth")."""
    from interventions.steering import model_fingerprint

    site, direction = _direction(cav, model)
    if scale is None:
        scale = cav.gap if math.isfinite(cav.gap) and cav.gap > 0 else None
    if scale is None:
        raise GatescopeError(
            f"CAV of {cav.concept} at {cav.site} has no positive gap ({cav.gap}); give scale="
        )
    provenance = {
        "model": model.name,
        "fingerprint": model_fingerprint(model),
        "data": f"CAV {cav.concept} vs {cav.random}",
        "concept": cav.concept,
        "random": cav.random,
        "cav_accuracy": cav.accuracy,
        "pooling": cav.pooling,
    }
    vec = SteeringVector(
        direction=direction * float(scale), site=site, method="cav", provenance=provenance
    )
    vec.check(model)
    return vec


def _project_out(direction: torch.Tensor, site: Site) -> Edit:
    if direction.dim() == 1:
        return ProjectOut(site, direction=direction)
    unit = (direction / direction.norm()).flatten()  # (D,)

    def fn(value):
        flat = value.flatten(2)  # (B, T, D)
        u = unit.to(value)
        return (flat - (flat @ u).unsqueeze(-1) * u).view_as(value)

    return Apply(site, fn=fn)


def remove_concept(cav: CAV, model: Model) -> Edit:
    """An edit that projects the concept direction out of its site."""
    site, direction = _direction(cav, model)
    return _project_out(direction, site)


@dataclass
class ConceptSteeringEval:
    """Adding the CAV (per coefficient, with equal-norm random vectors) and removing it
    (with random directions removed at the same site as the control)."""

    concept: str
    site: str
    add: SteeringEval
    baseline: float
    removed: float
    removed_random: list[float]

    @property
    def removal_beats_random(self) -> bool:
        effect = abs(self.removed - self.baseline)
        return all(effect > abs(r - self.baseline) for r in self.removed_random)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=1, cols=2, subplot_titles=("add the CAV", "remove it (project out)")
        )
        for trace in self.add.figure().data:
            fig.add_trace(trace, 1, 1)
        fig.add_trace(go.Box(y=self.removed_random, name="random removed", boxpoints="all"), 1, 2)
        fig.add_trace(go.Scatter(x=["CAV removed"], y=[self.removed], name="CAV removed"), 1, 2)
        fig.add_hline(y=self.baseline, line_dash="dot", row=1, col=2)  # pyright: ignore[reportArgumentType]
        fig.update_xaxes(title_text="coefficient", row=1, col=1)
        fig.update_yaxes(title_text="behaviour metric", row=1, col=1)
        fig.update_layout(title=f"concept steering with {self.concept} at {self.site}")
        return fig

    def to_dict(self) -> dict:
        return {
            "concept": self.concept,
            "site": self.site,
            "add": self.add.to_dict(),
            "baseline": self.baseline,
            "removed": self.removed,
            "removed_random": self.removed_random,
            "removal_beats_random": self.removal_beats_random,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@torch.no_grad()
def evaluate_concept_steering(
    model: Model,
    cav: CAV,
    prompts: Sequence[str],
    metric: Callable[[torch.Tensor, torch.Tensor], float],
    coefs: Sequence[float] = (-2, -1, -0.5, 0, 0.5, 1, 2),
    n_random: int = 10,
    seed: int = 0,
    scale: float | None = None,
) -> ConceptSteeringEval:
    """Steer ``prompts`` with the CAV (added, every position) and remove it; ``metric``
    ``(logits, lengths) -> float`` on each, next to ``n_random`` random controls."""
    vec = cav_steering_vector(cav, model, scale)
    add = evaluate_steering(model, vec, prompts, metric, coefs, n_random, seed)
    batch = model.tokenize(list(prompts))

    def run(edits) -> float:
        with intervene(model, edits):
            return metric(model.forward(batch.input_ids, batch.attention_mask), batch.lengths)

    g = torch.Generator().manual_seed(seed + 1)
    randoms = [torch.randn(vec.direction.shape, generator=g) for _ in range(n_random)]
    return ConceptSteeringEval(
        concept=cav.concept,
        site=cav.site,
        add=add,
        baseline=run([]),
        removed=run(remove_concept(cav, model)),
        removed_random=[run(_project_out(r, vec.site)) for r in randoms],
    )
