"""Attribution patching (AtP), RelP and integrated gradients over any sites.

For every component (site x position, x head for headed sites) the score estimates the
denoising effect of patching it, normalised like activation patching:

    score = sum_prompts sum_features (a_clean - a_corrupt) * dm/da  /  (LD_clean - LD_corrupt)

with m the logit difference averaged over prompts (arXiv 2508.21258, METHODS.md).

1. ``atp``: dm/da at the corrupt point by plain backprop -- two forward passes (clean values,
   corrupt values + graph) and one backward pass, however many sites are scored.
2. ``relp``: the same with the backward under LRP rules (:func:`circuits.lrp.lrp_rules`;
   ``gate_rule`` "half" or "constant" for the attention output gate).
3. ``ig``: the gradient averaged over ``steps`` runs whose input embeddings are interpolated
   ``e_corrupt + (k / steps)(e_clean - e_corrupt)``, k = 0 .. steps-1 (Hanna et al. 2024).

Gradients reach a site through a zero tensor added to its value (exact forward values);
``attn_gate`` is scored through its logits, like activation patching patches it.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from circuits.lrp import lrp_rules
from interventions.patching import Component, _components, _select, equal_length_rows
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model, resolve_path
from probe.sites import Site
from probe.tasks import Task, TaskBatch, logit_diff
from probe.tracer import Tracer

METHODS = ("atp", "relp", "ig")


@dataclass
class Attribution:
    """Scores per component of one attribution method (see the module docstring)."""

    method: str
    model: str
    task: str
    gate_rule: str | None
    n_prompts: int
    clean_logit_diff: float
    corrupt_logit_diff: float
    components: list[Component]

    def scores(self) -> list[float]:
        return [c.effect for c in self.components]

    def grid(self, kind: str):
        from interventions.patching import PatchingResult

        view = PatchingResult(
            self.model,
            self.task,
            self.method,
            self.n_prompts,
            self.clean_logit_diff,
            self.corrupt_logit_diff,
            self.components,
        )
        return view.grid(kind)

    def top(self, n: int = 10) -> list[Component]:
        return sorted(self.components, key=lambda c: -abs(c.effect))[:n]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _value_site(site: Site) -> Site:
    return Site("attn_gate_logit" if site.kind == "attn_gate" else site.kind, site.layer)


@torch.no_grad()
def _values(model: Model, sites: list[Site], ids, mask) -> tuple[dict, torch.Tensor]:
    with Tracer(model, sites) as tr:
        logits = model.forward(ids, mask)
    return {s: tr[s].float() for s in sites}, logits


def _embedding_mix(model: Model, clean_ids, corrupt_ids, alpha: float):
    embed = resolve_path(model.hf, model.family.embed)
    with torch.no_grad():
        e_clean, e_corrupt = embed(clean_ids.to(model.device)), embed(corrupt_ids.to(model.device))
    mixed = e_corrupt + alpha * (e_clean - e_corrupt)
    return embed.register_forward_hook(lambda m, a, out: mixed.to(out.dtype))


def site_gradients(
    model: Model, sites: list[Site], batch: TaskBatch, method: str, gate_rule: str, steps: int
) -> dict[Site, torch.Tensor]:
    """dm/d(site value) at the corrupt point (averaged over the IG path for ``ig``)."""
    total: dict[Site, torch.Tensor] = {}
    runs = steps if method == "ig" else 1
    for k in range(runs):
        zeros: dict[Site, torch.Tensor] = {}

        def adder(site, zeros=zeros):
            def fn(value, info):
                z = torch.zeros_like(value, requires_grad=True)
                zeros[site] = z
                return value + z

            return fn

        handle = (
            _embedding_mix(model, batch.clean_ids, batch.corrupt_ids, k / runs)
            if method == "ig"
            else None
        )
        rules = lrp_rules(model, gate_rule) if method == "relp" else nullcontext()
        try:
            with (
                torch.enable_grad(),
                rules,
                hook_sites(model, [(s, adder(s)) for s in sites], True),
            ):
                logits = model.forward(batch.corrupt_ids, batch.attention_mask)
                logit_diff(logits, batch).mean().backward()
        finally:
            if handle is not None:
                handle.remove()
        for s, z in zeros.items():
            grad = z.grad if z.grad is not None else torch.zeros_like(z)
            total[s] = total.get(s, 0) + grad.detach().float() / runs
    return total


def attribute(
    model: Model,
    task: Task,
    sites,
    method: str = "relp",
    *,
    positions: None | str = None,
    gate_rule: str = "half",
    steps: int = 5,
) -> Attribution:
    """Score every component of ``sites`` (all positions at once, or ``"each"`` position)."""
    if method not in METHODS:
        raise GatescopeError(f"method '{method}' is unknown; valid methods: {', '.join(METHODS)}")
    if method == "ig" and steps < 1:
        raise GatescopeError(f"IG steps must be at least 1, got {steps}")
    batch = task.tokenize(model.tokenizer)
    if positions is not None:
        batch = _select(batch, equal_length_rows(batch))
    comps = _components(model, sites, positions, batch.clean_ids.shape[1])
    value_sites = sorted({_value_site(Site(c.kind, c.layer)) for c in comps})
    clean, clean_logits = _values(model, value_sites, batch.clean_ids, batch.attention_mask)
    corrupt, corrupt_logits = _values(model, value_sites, batch.corrupt_ids, batch.attention_mask)
    clean_ld = float(logit_diff(clean_logits, batch).mean())
    corrupt_ld = float(logit_diff(corrupt_logits, batch).mean())
    if abs(clean_ld - corrupt_ld) < 1e-6:
        raise GatescopeError("clean and corrupt runs give the same logit difference")
    grads = site_gradients(model, value_sites, batch, method, gate_rule, steps)
    for c in comps:
        s = _value_site(Site(c.kind, c.layer))
        contrib = (clean[s] - corrupt[s]) * grads[s]  # (N, T, ...)
        if c.head is not None:
            contrib = contrib[:, :, c.head]
        per_pos = contrib.flatten(2).sum(-1).sum(0)  # (T,)
        value = per_pos.sum() if c.position is None else per_pos[c.position]
        c.effect = float(value) / (clean_ld - corrupt_ld)
    return Attribution(
        method,
        model.name,
        task.name,
        gate_rule if method == "relp" else None,
        len(batch),
        clean_ld,
        corrupt_ld,
        comps,
    )
