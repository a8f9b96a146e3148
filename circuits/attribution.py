"""Attribution patching (AtP), AtP*, RelP and integrated gradients over any sites.

For every component (site x position, x head for headed sites) the score estimates the
denoising effect of patching it, normalised like activation patching:

    score = sum_prompts sum_features (a_clean - a_corrupt) * dm/da  /  (LD_clean - LD_corrupt)

with m the logit difference averaged over prompts (arXiv 2508.21258, docs/METHODS.md).

1. Clean pass (no grad): trace the clean values of every site and the clean logit difference.
2. Corrupt pass with grad: every site's value gets a zero tensor added (exact forward values)
   whose gradient is dm/da; the same pass records the corrupt values and logit difference.
   One backward pass (``torch.autograd.grad`` on those zero tensors only: no parameter's
   ``.grad`` is touched) gives every site's gradient. So ``atp`` and ``relp`` cost two
   forward passes and one backward pass however many sites are scored.
3. ``atp``: plain backprop. ``relp``: the backward under LRP rules
   (:func:`circuits.lrp.lrp_rules`; ``gate_rule`` "half" or "constant" for the attention
   output gate). ``ig``: the gradient averaged over ``steps`` passes whose input embeddings
   (``resid_pre.0``) are ``e_corrupt + (k / steps)(e_clean - e_corrupt)``, k = 0 .. steps-1
   (a left Riemann sum; k = 0 is the corrupt pass of step 2). EAP-IG (edges,
   :mod:`circuits.graph`) uses k = 1 .. steps (Hanna et al. 2024, arXiv 2403.17806).
   ``relp`` with ``hold_attention=False`` keeps the softmax's gradient. ``atp*`` / ``relp*``
   add the attention corrections of :mod:`circuits.atp_star`; ``atp*`` with ``grad_drop``
   reruns the backward once per layer with that layer's writes dropped (GradDrop).
   Methods are objects of :mod:`circuits.methods`.
4. Score = (clean - corrupt) * gradient, summed over features (and over positions unless
   ``positions="each"``), over prompts, divided by ``LD_clean - LD_corrupt``.

``attn_gate`` is scored through its logits, like activation patching patches it.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import torch

from circuits.atp_star import attention_corrections, correction_sites
from circuits.lrp import lrp_rules
from circuits.methods import NODE_METHODS, AtPStar, Method, RelP, RelPStar, make
from interventions.components import Component, components, prepare, value_site
from interventions.patching import Grid, PatchingResult
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
        meta: ``positions`` and the method object's fields (``name``, ``steps``, rules);
            ``signed`` is false for GradDrop's magnitudes.
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
            model=self.model,
            task=self.task,
            mode=self.method,
            n_prompts=self.n_prompts,
            clean_logit_diff=self.clean_logit_diff,
            corrupt_logit_diff=self.corrupt_logit_diff,
            components=self.components,
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
        return {**asdict(self), "components": [c.to_dict() for c in self.components]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class GradientPass:
    """What one attribution pass yields for a list of sites (values are float32).

    Attributes:
        clean / corrupt: site -> value, (N, T, ...).
        grads: site -> dm/d(value) at the corrupt point (averaged over the IG path).
        clean_logit_diff / corrupt_logit_diff: mean metric of the two runs.
        dropped: GradDrop: ``dropped[l]`` is ``grads`` with layer l's writes into the
            residual stream passing no gradient (empty unless asked for).
        readers: ``(layer, head, channel) -> (N, T, d_model)``: dm/d(resid_pre.layer) through
            that head's q / k / v / g input alone (empty unless asked for).
    """

    clean: dict[Site, torch.Tensor]
    corrupt: dict[Site, torch.Tensor]
    grads: dict[Site, torch.Tensor]
    clean_logit_diff: float
    corrupt_logit_diff: float
    dropped: list[dict[Site, torch.Tensor]] = field(default_factory=list)
    readers: dict[tuple[int, int, str], torch.Tensor] = field(default_factory=dict)


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


class _Drop(torch.autograd.Function):
    """Identity forward; the backward passes no gradient while ``flags["drop"]`` is the
    layer given (GradDrop: one layer's writes into the residual stream dropped)."""

    @staticmethod
    def forward(ctx, x, flags, layer):
        ctx.flags, ctx.layer = flags, layer
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return (None if ctx.flags.get("drop") == ctx.layer else grad), None, None


def _dropper(flags: dict, layer: int):
    def fn(value, info):
        return _Drop.apply(value, flags, layer)

    return fn


def _track_gate(store: dict, layer: int):
    """A write hook whose new value (equal to the old) is what the model's gate then uses,
    so the metric's gradient with respect to it is the gate input's."""

    def fn(value, info):
        store[layer] = value * 1.0
        return store[layer]

    return fn


def _corrupt_trace(model: Model, sites: list[Site], batch: TaskBatch):
    with torch.no_grad(), Tracer(model, sites) as tr:
        ld = float(logit_diff(model.forward(batch.corrupt_ids, batch.attention_mask), batch).mean())
    return {s: tr[s].float() for s in sites}, ld


def _grads(outputs, inputs: list[torch.Tensor], retain: bool, cotangent=None) -> list:
    """``torch.autograd.grad`` of ``outputs`` on ``inputs`` only (zeros where unused)."""
    got = torch.autograd.grad(
        outputs, inputs, grad_outputs=cotangent, retain_graph=retain, allow_unused=True
    )
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, got, strict=True)]


def _reader_grads(
    track: dict, gates: dict, grads: dict, origin: dict[int, torch.Tensor]
) -> dict[tuple[int, int, str], torch.Tensor]:
    """Per head and channel: dm/d(resid_pre.layer) through that input alone, the vjp of the
    channel's tensor (its gradient masked to one head) back to the layer's input probe."""
    out = {}
    for layer, tensors in track.items():
        items = list(tensors.items()) + ([("g", gates[layer])] if layer in gates else [])
        for channel, tensor in items:
            g = grads[id(tensor)]
            axis = 2 if channel == "g" else 1  # gate logits are (N, T, H, .), q/k/v (N, H, T, d)
            for h in range(g.shape[axis]):
                cot = torch.zeros_like(g)
                cot.select(axis, h).copy_(g.select(axis, h))
                (r,) = _grads(tensor, [origin[layer]], True, cot)
                out[(layer, h, channel)] = r.float()
    return out


def gradient_pass(
    model: Model,
    sites: list[Site],
    batch: TaskBatch,
    method: str | Method = "atp",
    *,
    readers: bool = False,
    drop_layers: bool = False,
    **options,
) -> GradientPass:
    """Clean values, corrupt values and dm/d(value) for every site (whole-layer sites; steps
    1-3 of the module docstring). The gradient is averaged over ``method.alphas()``: the
    input embeddings are ``e_corrupt + alpha (e_clean - e_corrupt)``.

    ``readers``: also each attention head's reader gradients (needs ``resid_pre`` of every
    attention layer among ``sites``). ``drop_layers``: also GradDrop's gradients, one set
    per layer. Only the probes' gradients are computed: parameters' ``.grad`` stay as found.
    """
    from circuits.attention import attention

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
    n = model.dims.n_layers
    grads: dict[Site, torch.Tensor] = {}
    dropped: list[dict[Site, torch.Tensor]] = [{} for _ in range(n)] if drop_layers else []
    reader_grads: dict[tuple[int, int, str], torch.Tensor] = {}
    for alpha in alphas:
        zeros: dict[Site, torch.Tensor] = {}
        record = corrupt if alpha == 0.0 else None
        probes = [(s, _probe(s, zeros, record)) for s in sites]
        flags: dict = {"drop": None}
        drops = []
        if drop_layers:
            drops = [
                (Site(k, i), _dropper(flags, i))
                for i in range(n)
                for k in ("attn_out", "mlp_out")
                if model.has_site(Site(k, i))
            ]
        # order on one module: a block's own probe, then the drop, then resid_mid's probe
        # (written through the attention output): resid_mid keeps its skip-path gradient
        mids = [p for p in probes if p[0].kind == "resid_mid"]
        entries = [p for p in probes if p[0].kind != "resid_mid"] + drops + mids
        if alpha != 0.0:
            entries.insert(0, (EMBED, _mix(alpha, clean[EMBED])))
        track: dict = {}
        gates: dict = {}
        if readers:
            entries += [
                (Site("attn_gate_logit", i), _track_gate(gates, i))
                for i in model.layers_with("head_out")
                if model.has_site(Site("attn_gate_logit", i))
            ]
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            if method.rules:
                assert isinstance(method, RelP)  # the methods with LRP rules
                stack.enter_context(
                    lrp_rules(model, method.gate_rule, method.glu_rule, method.hold_attention)
                )
            if readers:
                stack.enter_context(attention(model, track=track))
            stack.enter_context(hook_sites(model, entries, write=True))
            metric = logit_diff(model.forward(batch.corrupt_ids, mask), batch).mean()
            if alpha == 0.0:
                corrupt_ld = float(metric.detach())
            keys = list(zeros)
            extra = [t for layer in track.values() for t in layer.values()] + list(gates.values())
            more = readers or drop_layers
            got = _grads(metric, [zeros[s] for s in keys] + extra, more)
            for s, g in zip(keys, got, strict=False):
                grads[s] = grads.get(s, 0) + g.float() / len(alphas)
            if readers:
                by_id = {id(t): g for t, g in zip(extra, got[len(keys) :], strict=True)}
                origin = {i: zeros[Site("resid_pre", i)] for i in track}
                for key, r in _reader_grads(track, gates, by_id, origin).items():
                    reader_grads[key] = reader_grads.get(key, 0) + r / len(alphas)
            for layer in range(len(dropped)):
                flags["drop"] = layer
                got = _grads(metric, [zeros[s] for s in keys], layer < n - 1)
                for s, g in zip(keys, got, strict=True):
                    dropped[layer][s] = dropped[layer].get(s, 0) + g.float() / len(alphas)
    return GradientPass(
        clean=clean,
        corrupt=corrupt,
        grads=grads,
        clean_logit_diff=clean_ld,
        corrupt_logit_diff=corrupt_ld,
        dropped=dropped,
        readers=reader_grads,
    )


def _product(run: GradientPass, c: Component, grads: dict[Site, torch.Tensor]) -> float:
    """sum (clean - corrupt) * gradient of one component (unnormalised)."""
    s = value_site(c)
    contrib = (run.clean[s] - run.corrupt[s]) * grads[s]  # (N, T, ...)
    if c.head is not None:
        contrib = contrib[:, :, c.head]  # (N, T, d)
    per_pos = contrib.flatten(2).sum(-1).sum(0)  # (T,)
    return float(per_pos.sum() if c.position is None else per_pos[c.position])


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
    ``steps=5``, ``hold_attention=False``, ``grad_drop=True``).

    Args:
        sites: a site pattern (``"head_out.*,mlp_out.2"``) or a list of sites; headed sites
            without a head are scored head by head.
        positions: ``None`` scores all positions at once, ``"each"`` every position (on the
            largest group of equal-length prompts), a list those positions.
    """
    method = make(method, **options)
    if method.edges:
        raise GatescopeError(
            f"'{method.name}' scores edges; use circuits.graph.build_graph (or a node "
            f"method: {', '.join(NODE_METHODS)})"
        )
    drop = bool(getattr(method, "grad_drop", False))
    if drop and model.dims.n_layers < 2:
        raise GatescopeError("GradDrop needs at least two layers (it averages over L - 1)")
    batch = prepare(model, task, positions)
    comps = components(model, sites, positions, batch.clean_ids.shape[1])
    needed = {value_site(c) for c in comps}
    star = isinstance(method, AtPStar | RelPStar)
    if star:
        needed |= set(correction_sites(model, comps))
    run = gradient_pass(model, sorted(needed), batch, method, drop_layers=drop)
    span = run.clean_logit_diff - run.corrupt_logit_diff
    if abs(span) < 1e-6:
        raise GatescopeError(
            "clean and corrupt runs give the same logit difference; "
            "nothing to attribute (check the corrupt prompts)"
        )
    grad_sets = [run.grads, *run.dropped]
    extra = (
        attention_corrections(model, batch, comps, run, method, grad_sets)
        if star
        else [None] * len(comps)
    )
    for c, fix in zip(comps, extra, strict=True):
        values = []
        for k, g in enumerate(grad_sets):
            own, correction = (None, 0.0) if fix is None else fix[k]
            values.append((_product(run, c, g) if own is None else own) + correction)
        if drop:
            c.effect = sum(abs(v) for v in values[1:]) / (model.dims.n_layers - 1) / abs(span)
        else:
            c.effect = values[0] / span
    return Attribution(
        method=method.name,
        model=model.name,
        task=task.name,
        gate_rule=getattr(method, "gate_rule", None),
        n_prompts=len(batch),
        clean_logit_diff=run.clean_logit_diff,
        corrupt_logit_diff=run.corrupt_logit_diff,
        components=comps,
        meta={"positions": positions, "signed": not drop, **method.to_dict()},
    )
