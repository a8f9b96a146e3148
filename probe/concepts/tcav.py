"""TCAV with significance testing, and cross-layer consistency (Kim et al. 2018; GCAV).

1. Directional derivative of a target (a token's logit at the last position, a logit
   difference ``"A|B"``, or any function of the logits) along a CAV: the gradient of the
   target with respect to the site's value (``last`` pooling: at the last token; ``mean``:
   every real position moved along the CAV), dotted with the CAV.
2. TCAV score: the fraction of inputs whose directional derivative is positive.
3. Significance: CAVs of the concept against each of >= 10 random sets give concept scores;
   CAVs of a random set against the others give random scores; a two-sided t-test
   (scipy) compares the two distributions.
4. Cross-layer consistency: CAV accuracy and TCAV score per layer side by side, the variance
   of the scores across layers, and the cosine similarity of CAVs of adjacent layers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from probe.concepts.cav import CAV, fit_cav, site_activations
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model
from probe.sites import Site
from probe.tasks import last_token_logits

MIN_RANDOM_SETS = 10
Target = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def target_function(model: Model, target: Target) -> Callable:
    """``(logits, lengths) -> (N,)`` for a token (``" good"``), ``"A|B"`` or a function."""
    if callable(target):
        return target
    from probe.reference.tokenizer import single_token_id

    parts = target.split("|")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise GatescopeError(f"target '{target}': expected a word or 'word|other word'")
    ids = [single_token_id(model.tokenizer, p) for p in parts]

    def fn(logits, lengths):
        last = last_token_logits(logits, lengths)  # (N, V)
        return last[:, ids[0]] - (last[:, ids[1]] if len(ids) == 2 else 0.0)

    return fn


def directional_derivatives(
    model: Model, inputs: Sequence[str], cav: CAV, target: Target
) -> np.ndarray:
    """(N,) the derivative of the target along the CAV, per input."""
    site = Site.parse(cav.site)
    fn = target_function(model, target)
    out = []
    for batch in model.batches(list(inputs), 16):
        store = {}

        def add_zero(value, info, store=store):
            store["z"] = torch.zeros_like(value, requires_grad=True)
            return value + store["z"]

        with torch.enable_grad(), hook_sites(model, [(site, add_zero)], write=True):
            logits = model.forward(batch.input_ids, batch.attention_mask)
            fn(logits, batch.lengths).sum().backward()
        grad = store["z"].grad.flatten(2)  # (B, T, D)
        direction = torch.tensor(cav.direction, dtype=grad.dtype)
        if cav.pooling == "last":
            rows = torch.arange(len(grad))
            g = grad[rows, batch.lengths - 1]  # (B, D)
        else:
            g = (grad * batch.attention_mask.unsqueeze(-1)).sum(1)
        out.append((g @ direction).numpy())
    return np.concatenate(out)


def tcav_score(model: Model, inputs: Sequence[str], cav: CAV, target: Target) -> float:
    return float((directional_derivatives(model, inputs, cav, target) > 0).mean())


@dataclass
class TCAVResult:
    """TCAV of one concept at one site, with its random distribution and p-value."""

    site: str
    target: str
    concept_scores: list[float]
    random_scores: list[float]
    cav_accuracy: list[float]
    p_value: float

    @property
    def score(self) -> float:
        return float(np.mean(self.concept_scores))

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_trace(go.Box(y=self.concept_scores, name="concept", boxpoints="all"))
        fig.add_trace(go.Box(y=self.random_scores, name="random", boxpoints="all"))
        fig.update_layout(
            title=f"TCAV at {self.site} on {self.target} (p = {self.p_value:.3g})",
            yaxis_title="TCAV score",
            yaxis_range=[0, 1],
        )
        return fig

    def to_dict(self) -> dict:
        return {**asdict(self), "score": self.score, "significant": self.significant}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def tcav(
    model: Model,
    concept: Sequence[str],
    random_sets: Sequence[Sequence[str]],
    site: Site | str,
    target: Target,
    inputs: Sequence[str],
    pooling: str = "last",
) -> TCAVResult:
    """TCAV score of ``concept`` with a two-sided t-test against random CAVs."""
    from scipy.stats import ttest_ind

    if len(random_sets) < MIN_RANDOM_SETS:
        raise GatescopeError(
            f"TCAV needs at least {MIN_RANDOM_SETS} random sets for its significance test; "
            f"got {len(random_sets)}"
        )
    target_function(model, target)  # refuse a bad target before any work
    site = str(site)
    xc = site_activations(model, concept, site, pooling)
    xr = [site_activations(model, r, site, pooling) for r in random_sets]
    concept_scores, random_scores, accs = [], [], []
    for i, x in enumerate(xr):
        normal, acc = fit_cav(xc, x, seed=i)
        cav = CAV(site, normal.tolist(), acc, "concept", f"random_{i}", pooling)
        concept_scores.append(tcav_score(model, inputs, cav, target))
        accs.append(acc)
        other = xr[(i + 1) % len(xr)]
        normal_r, acc_r = fit_cav(x, other, seed=i)
        cav_r = CAV(site, normal_r.tolist(), acc_r, f"random_{i}", "random", pooling)
        random_scores.append(tcav_score(model, inputs, cav_r, target))
    p = float(ttest_ind(concept_scores, random_scores, equal_var=False).pvalue)
    p = 1.0 if np.isnan(p) else p  # identical constant scores: no evidence of a difference
    return TCAVResult(site, str(target), concept_scores, random_scores, accs, p)


@dataclass
class CrossLayerResult:
    """Per-layer CAV accuracy, TCAV score and p-value; their spread; adjacent-layer cosines."""

    kind: str
    layers: list[int]
    accuracy: list[float]
    tcav: list[float]
    p_values: list[float]
    tcav_variance: float
    adjacent_cosine: list[float]

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("per layer", "CAV cosine, L vs L+1"))
        fig.add_trace(go.Scatter(x=self.layers, y=self.accuracy, name="CAV accuracy"), 1, 1)
        fig.add_trace(go.Scatter(x=self.layers, y=self.tcav, name="TCAV score"), 1, 1)
        fig.add_trace(go.Bar(x=self.layers[:-1], y=self.adjacent_cosine, name="cosine"), 1, 2)
        fig.update_layout(
            title=f"cross-layer consistency at {self.kind} (TCAV variance {self.tcav_variance:.3f})"
        )
        return fig

    def to_dict(self) -> dict:
        return asdict(self)


def cross_layer(
    model: Model,
    concept: Sequence[str],
    random_sets: Sequence[Sequence[str]],
    kind: str,
    target: Target,
    inputs: Sequence[str],
    pooling: str = "last",
) -> CrossLayerResult:
    """TCAV at every layer of ``kind`` side by side (the GCAV paper's concern)."""
    layers, accs, scores, pvals, mean_cavs = [], [], [], [], []
    for site in model.sites(f"{kind}.*"):
        res = tcav(model, concept, random_sets, site, target, inputs, pooling)
        xc = site_activations(model, concept, site, pooling)
        normals = [
            fit_cav(xc, site_activations(model, r, site, pooling), i)[0]
            for i, r in enumerate(random_sets[:3])
        ]
        mean = np.mean(normals, 0)
        mean_cavs.append(mean / np.linalg.norm(mean))
        layers.append(site.layer)
        accs.append(float(np.mean(res.cav_accuracy)))
        scores.append(res.score)
        pvals.append(res.p_value)
    cosines = [
        float(a @ b) if a.shape == b.shape else float("nan")
        for a, b in zip(mean_cavs, mean_cavs[1:], strict=False)
    ]
    return CrossLayerResult(kind, layers, accs, scores, pvals, float(np.var(scores)), cosines)
