"""TCAV with significance testing, and cross-layer consistency (Kim et al. 2018, arXiv
1711.11279; the GCAV paper's concern that CAVs trained per layer disagree).

1. Gradient of a target (a token's logit at the last position, a logit difference
   ``"A|B"``, or any function ``(logits, lengths) -> (N,)``) with respect to a site's value,
   read through a zero tensor added to the site in a write hook; pooled like the CAV
   (``last``: the last real token; ``mean``: the sum over real positions, i.e. every position
   moved along the CAV). One backward pass per batch serves every CAV and every layer.
2. Directional derivative: that gradient dotted with the CAV; TCAV score: the fraction of
   inputs where it is positive.
3. Significance over ``n >= 10`` random sets: concept scores from CAVs of the concept against
   each random set; random scores from CAVs of random set i against random set i+1; a
   two-sided Welch t-test (scipy) of the two (``p_tcav``). Because every concept CAV shares
   the one concept sample, a random set that happens to lean along the target gradient
   (more positive sentences than the others, say) gets consistent scores and a small
   ``p_tcav`` although its CAVs are noise (held-out accuracy at chance). So the concept must
   also separate from the random sets better than chance and better than they separate from
   each other (one-sided t-tests of the held-out CAV accuracies against 0.5 and against the
   random CAVs' accuracies, which fall below chance when there is nothing to learn; the larger
   p is ``p_accuracy``); the reported ``p_value`` is the larger of ``p_tcav`` and
   ``p_accuracy`` (an intersection-union test, valid at the same level).
4. Cross-layer consistency: CAV accuracy, TCAV score and p-value per layer side by side, the
   variance of the scores across layers, and the cosine of the (mean) CAVs of adjacent layers.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from probe.concepts.cav import CAV, _sites, fit_cav, pooled_activations
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model
from probe.sites import Site
from probe.tasks import last_token_logits

MIN_RANDOM_SETS = 10
Target = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def target_function(model: Model, target: Target) -> Callable:
    """``(logits, lengths) -> (N,)`` for a token (``"good"``), ``"A|B"`` or a function."""
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


def _add_zero(store: dict, site: Site) -> Callable:
    """A write hook adding a zero tensor that requires grad (its .grad is the site's)."""

    def hook(value, info):
        store[site] = torch.zeros_like(value, requires_grad=True)
        return value + store[site]

    return hook


def _logit_twin(model: Model, site: Site) -> Site | None:
    """For a site read as ``sigmoid(x)`` (``attn_gate``), the site of ``x`` itself
    (``attn_gate_logit``); ``None`` for any other site.

    Such sites are written in logit space and only where the value changed (the hooks keep
    an unchanged gate bit-exact), so a zero added to the gate value is dropped and no
    gradient reaches it: the gradient is read at the logit instead and divided by
    ``d sigmoid / dx``."""
    taps = model.family.taps
    tap = taps[site.kind]
    if getattr(tap.transform, "name", None) != "sigmoid":
        return None

    def where(t):  # the tensor a tap reads, whatever layout instance describes it
        return (t.modules, t.side, t.index, type(t.layout), vars(t.layout))

    for kind, other in taps.items():
        if other.transform is None and where(other) == where(tap):
            return Site(kind, site.layer, site.head)
    raise GatescopeError(
        f"site '{site}': no gradient can be read at a sigmoid site without its logit site "
        f"(this family has none); use another site kind"
    )


def _add_zero_logit(store: dict, site: Site) -> Callable:
    """A write hook on the logit twin of a sigmoid site: adds a zero tensor that requires
    grad and keeps ``sigmoid'(x)`` so that ``d target / d gate = grad(x) / sigmoid'(x)``."""

    def hook(value, info):
        x = value.detach().float()
        store[site] = (
            torch.zeros_like(value, requires_grad=True),
            torch.sigmoid(x) * torch.sigmoid(-x),  # sigmoid'(x), no cancellation near 1
        )
        return value + store[site][0]

    return hook


def site_gradients(
    model: Model, inputs: Sequence[str], sites, target: Target, pooling: str = "last"
) -> dict[Site, np.ndarray]:
    """Site -> (N, D): gradient of the target w.r.t. each site's value per input, pooled."""
    sites = _sites(model, sites)
    fn = target_function(model, target)
    twins = {s: _logit_twin(model, s) for s in sites}
    out: dict[Site, list[np.ndarray]] = {s: [] for s in sites}
    for batch in model.batches(list(inputs), 16):
        zeros: dict[Site, Any] = {}  # site -> zero tensor (or (zero, slope) at a logit twin)
        hooks: list[tuple[Site, Callable]] = []
        for s in sites:
            twin = twins[s]
            hooks.append(
                (s, _add_zero(zeros, s)) if twin is None else (twin, _add_zero_logit(zeros, s))
            )
        with torch.enable_grad(), hook_sites(model, hooks, write=True):
            logits = model.forward(batch.input_ids, batch.attention_mask)
            leaves = [zeros[s] if twins[s] is None else zeros[s][0] for s in sites]
            # gradients of the probes only: the model's parameters' .grad stay as found
            got = torch.autograd.grad(fn(logits, batch.lengths).sum(), leaves, allow_unused=True)
        mask = batch.attention_mask.float().cpu().unsqueeze(-1)  # (B, T, 1)
        for site, g in zip(sites, got, strict=True):
            if g is None:
                raise GatescopeError(f"site '{site}': the target's gradient does not reach it")
            if twins[site] is None:
                grad = g.detach().float()
            else:
                grad = g.detach().float() / zeros[site][1]
            grad = grad.cpu().flatten(2)  # (B, T, D)
            if pooling == "last":
                g = grad[torch.arange(len(grad)), batch.lengths.cpu() - 1]  # (B, D)
            else:
                g = (grad * mask).sum(1)  # (B, D)
            out[site].append(g.numpy())
    return {s: np.concatenate(g) for s, g in out.items()}


def directional_derivatives(
    model: Model, inputs: Sequence[str], cav: CAV, target: Target
) -> np.ndarray:
    """(N,) the derivative of the target along the CAV, per input."""
    grads = site_gradients(model, inputs, cav.site, target, cav.pooling)
    return next(iter(grads.values())) @ cav.array()


def tcav_score(model: Model, inputs: Sequence[str], cav: CAV, target: Target) -> float:
    return float((directional_derivatives(model, inputs, cav, target) > 0).mean())


def _ttest(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """Welch's t-test p-value; two constant samples: 1 if equal, else 0."""
    from scipy.stats import ttest_ind

    if np.ptp(a) == 0 and np.ptp(b) == 0:
        same = np.mean(a) == np.mean(b)
        return 1.0 if same or (alternative == "greater" and np.mean(a) < np.mean(b)) else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant samples
        test: Any = ttest_ind(a, b, equal_var=False, alternative=alternative)
        p = float(test.pvalue)
    return 1.0 if np.isnan(p) else p


@dataclass
class TCAVResult:
    """TCAV of one concept at one site, with its random distribution and p-values."""

    site: str
    target: str
    concept_scores: list[float]
    random_scores: list[float]
    cav_accuracy: list[float]
    random_accuracy: list[float]
    p_tcav: float
    p_accuracy: float
    gradient_agreement: float = float("nan")

    @property
    def all_or_none(self) -> bool:
        """Whether every input's gradient points the same way (mean cosine to the mean
        gradient > 0.99, as at the last layer, where the gradient is nearly the unembedding
        direction for every input): each CAV then scores 0 or 1 by construction, and the
        score only says on which side of that one direction the CAV falls."""
        return self.gradient_agreement > 0.99

    @property
    def p_value(self) -> float:
        return max(self.p_tcav, self.p_accuracy)

    @property
    def score(self) -> float:
        return float(np.mean(self.concept_scores))

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("TCAV score", "CAV accuracy"))
        for col, (c, r) in enumerate(
            ((self.concept_scores, self.random_scores), (self.cav_accuracy, self.random_accuracy))
        ):
            for name, y, color in (("concept", c, "#1f77b4"), ("random", r, "#aaaaaa")):
                box = go.Box(y=y, name=name, boxpoints="all", marker_color=color)
                fig.add_trace(box.update(showlegend=False), 1, col + 1)
        fig.update_yaxes(range=[0, 1.05])
        fig.update_layout(
            title=f"TCAV at {self.site} on {self.target}: {self.score:.2f}, "
            f"p = {self.p_value:.3g} (scores {self.p_tcav:.3g}, accuracy {self.p_accuracy:.3g})"
        )
        return fig

    def to_dict(self) -> dict:
        d = asdict(self)
        return {
            **d,
            "p_value": self.p_value,
            "score": self.score,
            "significant": self.significant,
            "all_or_none": self.all_or_none,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _agreement(grads: np.ndarray) -> float:
    """Mean cosine of each input's gradient (N, D) with their mean direction."""
    mean = grads.mean(0)
    norms = np.linalg.norm(grads, axis=1) * np.linalg.norm(mean)
    if not norms.all():
        return float("nan")
    return float(np.mean(grads @ mean / norms))


def _tcav_from_arrays(
    site: str, target: str, xc: np.ndarray, xr: list[np.ndarray], grads: np.ndarray, pooling
) -> tuple[TCAVResult, list[CAV]]:
    """Steps 2-3 on pooled activations and gradients; also the concept CAVs."""
    cavs, concept_scores, random_scores, random_accs = [], [], [], []
    for i, x in enumerate(xr):
        cav = fit_cav(xc, x, i, site, ("concept", f"random set {i}"), pooling)
        cavs.append(cav)
        concept_scores.append(float((grads @ cav.array() > 0).mean()))
        rnd = fit_cav(x, xr[(i + 1) % len(xr)], i, site, (f"random set {i}", "random"), pooling)
        random_scores.append(float((grads @ rnd.array() > 0).mean()))
        random_accs.append(rnd.accuracy)
    accs = [c.accuracy for c in cavs]
    result = TCAVResult(
        site=site,
        target=target,
        concept_scores=concept_scores,
        random_scores=random_scores,
        cav_accuracy=accs,
        random_accuracy=random_accs,
        p_tcav=_ttest(concept_scores, random_scores),
        p_accuracy=max(
            _ttest(accs, random_accs, "greater"), _ttest(accs, [0.5] * len(accs), "greater")
        ),
        gradient_agreement=_agreement(grads),
    )
    return result, cavs


def _check_tcav_args(model: Model, random_sets, target: Target) -> None:
    if len(random_sets) < MIN_RANDOM_SETS:
        raise GatescopeError(
            f"TCAV needs at least {MIN_RANDOM_SETS} random sets for its significance test; "
            f"got {len(random_sets)} (the bundled ones: random_0 ... random_11)"
        )
    target_function(model, target)  # refuse a bad target before any work


def tcav(
    model: Model,
    concept: Sequence[str],
    random_sets: Sequence[Sequence[str]],
    site: Site | str,
    target: Target,
    inputs: Sequence[str],
    pooling: str = "last",
) -> TCAVResult:
    """TCAV score of ``concept`` at ``site`` for ``target`` on ``inputs``, tested against
    CAVs of random sets."""
    _check_tcav_args(model, random_sets, target)
    (site,) = _sites(model, site)
    xc = pooled_activations(model, concept, site, pooling)[site]
    xr = [pooled_activations(model, r, site, pooling)[site] for r in random_sets]
    grads = site_gradients(model, inputs, site, target, pooling)[site]
    return _tcav_from_arrays(str(site), str(target), xc, xr, grads, pooling)[0]


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
    results: list[TCAVResult]

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("per layer", "CAV cosine, L vs L+1"))
        fig.add_trace(go.Scatter(x=self.layers, y=self.accuracy, name="CAV accuracy"), 1, 1)
        fig.add_trace(go.Scatter(x=self.layers, y=self.tcav, name="TCAV score"), 1, 1)
        random = [float(np.mean(r.random_scores)) for r in self.results]
        dotted = {"dash": "dot"}
        fig.add_trace(go.Scatter(x=self.layers, y=random, name="random TCAV", line=dotted), 1, 1)
        labels = [f"{a}-{b}" for a, b in zip(self.layers, self.layers[1:], strict=False)]
        fig.add_trace(go.Bar(x=labels, y=self.adjacent_cosine, name="cosine"), 1, 2)
        fig.update_yaxes(range=[0, 1.05], row=1, col=1)
        fig.update_xaxes(title_text="layer", row=1, col=1)
        fig.update_layout(
            title=f"cross-layer consistency at {self.kind} (TCAV variance {self.tcav_variance:.3f})"
        )
        return fig

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = [r.to_dict() for r in self.results]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def cross_layer(
    model: Model,
    concept: Sequence[str],
    random_sets: Sequence[Sequence[str]],
    kind: str,
    target: Target,
    inputs: Sequence[str],
    pooling: str = "last",
    on_step: Callable[[str, int, int], None] | None = None,
) -> CrossLayerResult:
    """TCAV at every layer of ``kind`` side by side (the GCAV paper's concern).
    ``on_step(what, done, total)`` is told after each activation set, the gradients and each
    layer's CAVs (a progress bar's hook)."""
    _check_tcav_args(model, random_sets, target)
    sites = model.sites(f"{kind}.*")
    total, done = len(random_sets) + 2 + len(sites), 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(what, done, total)

    xc = pooled_activations(model, concept, sites, pooling)
    step("concept activations")
    xr = []
    for i, r in enumerate(random_sets):
        xr.append(pooled_activations(model, r, sites, pooling))
        step(f"random set {i + 1} activations")
    grads = site_gradients(model, inputs, sites, target, pooling)
    step("gradients of the target")
    results, means = [], []
    for site in sites:
        res, cavs = _tcav_from_arrays(
            str(site), str(target), xc[site], [x[site] for x in xr], grads[site], pooling
        )
        mean = np.mean([c.array() for c in cavs], 0)  # (D,)
        means.append(mean / np.linalg.norm(mean))
        results.append(res)
        step(f"CAVs at {site}")
    scores = [r.score for r in results]
    return CrossLayerResult(
        kind=kind,
        layers=[s.layer for s in sites],
        accuracy=[float(np.mean(r.cav_accuracy)) for r in results],
        tcav=scores,
        p_values=[r.p_value for r in results],
        tcav_variance=float(np.var(scores)),
        adjacent_cosine=[float(a @ b) for a, b in zip(means, means[1:], strict=False)],
        results=results,
    )
