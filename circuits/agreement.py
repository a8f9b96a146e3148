"""Agreement study: activation patching (the ground truth) vs each attribution method.

For a task and site kinds, patch every component (per layer x position; heads per layer x
head over all positions), score the same components with AtP, RelP (both gate rules where
the model has an attention gate) and IG, and report Pearson and Spearman correlations per
site kind, with a Plotly scatter figure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from circuits.attribution import attribute
from interventions.patching import activation_patching
from probe.model import Model
from probe.sites import HEADED_KINDS
from probe.tasks import Task


@dataclass
class AgreementResult:
    """``pearson[kind][method]``, ``spearman[kind][method]`` and the paired scores."""

    model: str
    task: str
    pearson: dict[str, dict[str, float]]
    spearman: dict[str, dict[str, float]]
    patching: dict[str, list[float]]
    scores: dict[str, dict[str, list[float]]]
    labels: dict[str, list[str]]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        methods = sorted({m for row in self.pearson.values() for m in row})
        lines = ["kind".ljust(12) + "".join(m.rjust(14) for m in methods)]
        for kind, row in self.pearson.items():
            lines.append(
                kind.ljust(12) + "".join(f"{row.get(m, float('nan')):14.3f}" for m in methods)
            )
        return "\n".join(lines)

    def figure(self, kind: str):
        import plotly.graph_objects as go

        fig = go.Figure()
        for method, values in self.scores[kind].items():
            fig.add_trace(
                go.Scatter(
                    x=self.patching[kind],
                    y=values,
                    mode="markers",
                    text=self.labels[kind],
                    name=f"{method} (r={self.pearson[kind][method]:.2f})",
                )
            )
        lo = min(self.patching[kind] + [0.0])
        hi = max(self.patching[kind] + [0.0])
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                name="y = x",
                line={"dash": "dot", "color": "gray"},
            )
        )
        fig.update_layout(
            title=f"{kind}: attribution vs activation patching ({self.task})",
            xaxis_title="activation patching effect",
            yaxis_title="attribution score",
        )
        return fig


def methods_for(model: Model) -> dict[str, dict]:
    """Method name -> attribute() keyword arguments (both gate rules on gated models)."""
    methods = {"atp": {"method": "atp"}}
    if model.is_gated:
        methods["relp_half"] = {"method": "relp", "gate_rule": "half"}
        methods["relp_const"] = {"method": "relp", "gate_rule": "constant"}
    else:
        methods["relp"] = {"method": "relp"}
    methods["ig"] = {"method": "ig", "steps": 5}
    return methods


def agreement(
    model: Model,
    task: Task,
    kinds=("resid_pre", "attn_out", "mlp_out", "head_out"),
    progress: bool = True,
    methods: dict[str, dict] | None = None,
) -> AgreementResult:
    """Pearson and Spearman r between patching and every method, per site kind.

    ``methods`` maps a column name to ``attribute()`` keyword arguments (default:
    :func:`methods_for`, e.g. ``{"relp_glu_grad": {"method": "relp", "glu_rule": "gradient"}}``).
    """
    methods = methods_for(model) if methods is None else methods
    from scipy.stats import pearsonr, spearmanr

    pearson, spearman, patched_all, scores_all, labels = {}, {}, {}, {}, {}
    for kind in kinds:
        sites = f"{kind}.*"
        positions = None if kind in HEADED_KINDS else "each"
        truth = activation_patching(model, task, sites, positions=positions, progress=progress)
        x = [c.effect for c in truth.components]
        patched_all[kind], labels[kind] = x, [c.label for c in truth.components]
        pearson[kind], spearman[kind], scores_all[kind] = {}, {}, {}
        for name, kwargs in methods.items():
            y = attribute(model, task, sites, positions=positions, **kwargs).scores()
            scores_all[kind][name] = y
            pearson[kind][name] = float(pearsonr(x, y)[0])
            spearman[kind][name] = float(spearmanr(x, y)[0])
    return AgreementResult(
        model.name, task.name, pearson, spearman, patched_all, scores_all, labels
    )
