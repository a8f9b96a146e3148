"""Attribution patching (AtP), RelP and integrated gradients over any sites.

For every component (site x position, x head for headed sites) the score estimates the
denoising effect of patching it, normalised like activation patching:

    score = sum_prompts sum_features (a_clean - a_corrupt) * dm/da  /  (LD_clean - LD_corrupt)

with m the logit difference averaged over prompts (arXiv 2508.21258, docs/METHODS.md).

1. Clean pass (no grad): trace the clean values of every site and the clean logit difference.
2. Corrupt pass with grad: every site's value gets a zero tensor added (exact forward values)
   whose gradient is dm/da; the same pass records the corrupt values and logit difference.
   One backward pass gives every site's gradient. So ``atp`` and ``relp`` cost two forward
   passes and one backward pass however many sites are scored.
3. ``atp``: plain backprop. ``relp``: the backward under LRP rules
   (:func:`circuits.lrp.lrp_rules`; ``gate_rule`` "half" or "constant" for the attention
   output gate). ``ig``: the gradient averaged over ``steps`` passes whose input embeddings
   (``resid_pre.0``) are ``e_corrupt + (k / steps)(e_clean - e_corrupt)``, k = 0 .. steps-1
   (Hanna et al. 2024, arXiv 2403.17806); k = 0 is the corrupt pass of step 2.
   ``relp`` with ``hold_attention=False`` keeps the softmax's gradient. ``atp*`` / ``relp*``
   add the attention corrections of :mod:`circuits.atp_star` (exact attention outputs).
   Methods are objects of :mod:`circuits.methods`.
4. Score = (clean - corrupt) * gradient, summed over features (and over positions unless
   ``positions="each"``), over prompts, divided by ``LD_clean - LD_corrupt``.

``attn_gate`` is scored through its logits, like activation patching patches it.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from circuits.atp_star import attention_corrections, correction_sites
from circuits.lrp import lrp_rules
from circuits.methods import NODE_METHODS, AtPStar, Method, RelPStar, make
from interventions.patching import Component, Grid, PatchingResult, _components, _prepare
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model
from probe.sites import Site
from probe.tasks import Task, TaskBatch, logit_diff
from probe.tracer import Tracer

EMBED = Site("resid_pre", 0)


@dataclass
class Attribution:
    """Scores per component of one attribution method (see the module docstring).

    Attributes:
        method: the method's registry name (its fields are in ``meta``).
        model / task: names.
        gate_rule: the RelP rule for the attention output gate (``None`` for other methods).
        n_prompts: prompts scored (per-position scores use the largest equal-length group).
        clean_logit_diff / corrupt_logit_diff: the metric's end points.
        components: one :class:`Component` per scored unit, ``effect`` is its score.
        meta: ``positions`` and the method object's fields (``name``, ``steps``, rules).
    """

    method: str
    model: str
    task: str
    gate_rule: str | None
    n_prompts: int
    clean_logit_diff: float
    corrupt_logit_diff: float
    components: list[Component]
    meta: dict = field(default_factory=dict)

    def scores(self) -> list[float]:
        return [c.effect for c in self.components]

    def _view(self) -> PatchingResult:
        return PatchingResult(
            self.model,
            self.task,
            self.method,
            self.n_prompts,
            self.clean_logit_diff,
            self.corrupt_logit_diff,
            self.components,
        )

    def grid(self, kind: str) -> Grid:
        """Scores of ``kind`` as a table (layers x heads or positions), as for patching."""
        return self._view().grid(kind)

    def figure(self, kind: str):
        """A Plotly heatmap of ``grid(kind)``."""
        fig = self._view().figure(kind)
        rule = f", gate rule {self.gate_rule}" if self.gate_rule else ""
        fig.update_layout(title=f"{self.method}{rule}: {kind} on {self.task}")
        return fig

    def top(self, n: int = 10) -> list[Component]:
        return sorted(self.components, key=lambda c: -abs(c.effect))[:n]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class GradientPass:
    """What one attribution pass yields for a list of sites (values are float32).

    Attributes:
        clean / corrupt: site -> value, (N, T, ...).
        grads: site -> dm/d(value) at the corrupt point (averaged over the IG path).
        clean_logit_diff / corrupt_logit_diff: mean metric of the two runs.
    """

    clean: dict[Site, torch.Tensor]
    corrupt: dict[Site, torch.Tensor]
    grads: dict[Site, torch.Tensor]
    clean_logit_diff: float
    corrupt_logit_diff: float


def check_method(method: str | Method, **options) -> Method:
    """The method object (:func:`circuits.methods.make`): unknown methods, fields or rules
    are refused."""
    return make(method, **options)


def _probe(site: Site, zeros: dict, values: dict | None):
    """A write hook adding a zero leaf to the site's value (its gradient is dm/d value)."""

    def fn(value, info):
        if values is not None:
            values[site] = value.detach().float()
        z = torch.zeros_like(value, requires_grad=True)
        zeros[site] = z
        return value + z

    return fn


def _mix(alpha: float, clean_embed: torch.Tensor):
    def fn(value, info):
        return value + alpha * (clean_embed.to(value.dtype) - value)

    return fn


def _corrupt_trace(model: Model, sites: list[Site], batch: TaskBatch):
    with torch.no_grad(), Tracer(model, sites) as tr:
        ld = float(logit_diff(model.forward(batch.corrupt_ids, batch.attention_mask), batch).mean())
    return {s: tr[s].float() for s in sites}, ld


def gradient_pass(
    model: Model, sites: list[Site], batch: TaskBatch, method: str | Method = "atp", **options
) -> GradientPass:
    """Clean values, corrupt values and dm/d(value) for every site (whole-layer sites; steps
    1-3 of the module docstring). The gradient is averaged over ``method.alphas()``: the
    input embeddings are ``e_corrupt + alpha (e_clean - e_corrupt)``."""
    method = make(method, **options)
    mask = batch.attention_mask
    alphas = method.alphas()
    mixing = alphas != [0.0]
    traced = sorted(set(sites) | ({EMBED} if mixing else set()))
    with torch.no_grad(), Tracer(model, traced) as tr:
        clean_ld = float(logit_diff(model.forward(batch.clean_ids, mask), batch).float().mean())
    clean = {s: tr[s].float() for s in traced}
    corrupt: dict[Site, torch.Tensor] = {}
    corrupt_ld = float("nan")
    if 0.0 not in alphas:
        corrupt, corrupt_ld = _corrupt_trace(model, sorted(set(sites)), batch)
    grads: dict[Site, torch.Tensor] = {}
    for alpha in alphas:
        zeros: dict[Site, torch.Tensor] = {}
        record = corrupt if alpha == 0.0 else None
        entries = [(s, _probe(s, zeros, record)) for s in sites]
        if alpha != 0.0:
            entries.insert(0, (EMBED, _mix(alpha, clean[EMBED])))
        rules = (
            lrp_rules(model, method.gate_rule, method.glu_rule, method.hold_attention)  # pyright: ignore[reportAttributeAccessIssue]
            if method.rules
            else nullcontext()
        )
        with torch.enable_grad(), rules, hook_sites(model, entries, write=True):
            metric = logit_diff(model.forward(batch.corrupt_ids, mask), batch).mean()
            if alpha == 0.0:
                corrupt_ld = float(metric.detach())
            metric.backward()
        for s, z in zeros.items():
            grad = z.grad.float() if z.grad is not None else torch.zeros_like(z, dtype=torch.float)
            grads[s] = grads.get(s, 0) + grad / len(alphas)
    return GradientPass(clean, corrupt, grads, clean_ld, corrupt_ld)


def _value_site(c: Component) -> Site:
    return Site("attn_gate_logit" if c.kind == "attn_gate" else c.kind, c.layer)


def attribute(
    model: Model,
    task: Task,
    sites,
    method: str | Method = "relp",
    *,
    positions: None | str | list[int] = None,
    **options,
) -> Attribution:
    """Score every component of ``sites`` with ``method`` (a name or a method object from
    :mod:`circuits.methods`; ``options`` are its fields, e.g. ``gate_rule="constant"``,
    ``steps=5``, ``hold_attention=False``).

    Args:
        sites: a site pattern (``"head_out.*,mlp_out.2"``) or a list of sites; headed sites
            without a head are scored head by head.
        positions: ``None`` scores all positions at once, ``"each"`` every position (on the
            largest group of equal-length prompts), a list those positions.
    """
    method = make(method, **options)
    if method.edges:
        raise GatescopeError(
            f"'{method.name}' scores edges; use circuits.edges.edge_scores (or a node "
            f"method: {', '.join(NODE_METHODS)})"
        )
    batch = _prepare(model, task, positions)
    comps = _components(model, sites, positions, batch.clean_ids.shape[1])
    needed = {_value_site(c) for c in comps}
    star = isinstance(method, AtPStar | RelPStar)
    if star:
        needed |= set(correction_sites(model))
    run = gradient_pass(model, sorted(needed), batch, method)
    span = run.clean_logit_diff - run.corrupt_logit_diff
    if abs(span) < 1e-6:
        raise GatescopeError(
            "clean and corrupt runs give the same logit difference; "
            "nothing to attribute (check the corrupt prompts)"
        )
    extra = attention_corrections(model, batch, comps, run, method) if star else None
    for i, c in enumerate(comps):
        s = _value_site(c)
        contrib = (run.clean[s] - run.corrupt[s]) * run.grads[s]  # (N, T, ...)
        if c.head is not None:
            contrib = contrib[:, :, c.head]  # (N, T, d)
        per_pos = contrib.flatten(2).sum(-1).sum(0)  # (T,)
        value = float(per_pos.sum() if c.position is None else per_pos[c.position])
        if extra is not None:
            value += extra[i]
        c.effect = value / span
    return Attribution(
        method.name,
        model.name,
        task.name,
        getattr(method, "gate_rule", None),
        len(batch),
        run.clean_logit_diff,
        run.corrupt_logit_diff,
        comps,
        {"positions": positions, **method.to_dict()},
    )
