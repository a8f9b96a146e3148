"""Per-head tests: direct logit attribution and the interchange test with a permutation null.

Direct logit attribution (DLA) of head h at the last token:
1. its output through ``o_proj`` (the module the family's ``head_out`` tap feeds, called with
   every other head zeroed, minus its bias);
2. through the final norm with its scale frozen at the clean run (a linear map probed from the
   norm itself: RMSNorm scales, LayerNorm also centres);
3. projected on ``W_U[answer] - W_U[wrong]``, averaged over prompts.
The heads of a layer sum to the attention output's direct effect (without o_proj's bias).

Interchange test (How Alignment Routes, 2025): swap one head's ``o_proj`` input between the
clean and corrupt runs, in both directions; the effect is the mean absolute change of the
logit difference. The null distribution swaps the head with a *mismatched* prompt (a random
permutation of the source rows); the p-value is the fraction of null effects at least as
large as the observed one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from interventions.edits import Patch, intervene
from probe.errors import GatescopeError
from probe.hooks import locate
from probe.model import Model, resolve_path
from probe.sites import Site
from probe.tasks import Task, last_token_logits, logit_diff
from probe.tracer import Tracer


@dataclass
class HeadScores:
    """A [layer][head] table of one per-head figure (and p-values where there are any)."""

    name: str
    scores: list[list[float]]
    p_values: list[list[float]] | None = None

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=self.scores, colorscale="RdBu", zmid=0))
        fig.update_layout(title=self.name, xaxis_title="head", yaxis_title="layer")
        return fig

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _frozen_norm(norm: torch.nn.Module, x: torch.Tensor):
    """The final norm at ``x`` with its scale frozen, as a linear map of a contribution c.

    Probed from the module itself (no architecture switch): ``norm(0)`` is its bias; a norm
    that ignores a constant shift (LayerNorm) centres c first. Exact for RMSNorm and LayerNorm.
    """
    bias = norm(torch.zeros_like(x[:1]))  # (1, d_model)
    centred = torch.allclose(norm(x + 1.0), norm(x), atol=1e-4)
    xc = x - x.mean(-1, keepdim=True) if centred else x
    scale = (norm(x) - bias) / xc  # (N, d_model)

    def apply(c: torch.Tensor) -> torch.Tensor:
        return scale * (c - c.mean(-1, keepdim=True) if centred else c)

    return apply


@torch.no_grad()
def direct_logit_attribution(model: Model, task: Task) -> HeadScores:
    """DLA of every head on ``logit(answer) - logit(wrong)`` (clean prompts, last token).

    Head h's contribution is ``o_proj(z with every other head zeroed) - o_proj(0)``, computed
    by calling the module the ``head_out`` tap feeds (so Linear and Conv1D layouts alike)."""
    batch = task.tokenize(model.tokenizer)
    last_layer = model.dims.n_layers - 1
    with Tracer(model, ["head_out.*", f"resid_post.{last_layer}"], positions=[-1]) as tr:
        model.forward(batch.clean_ids, batch.attention_mask)
    x = tr[Site("resid_post", last_layer)][:, 0]  # (N, d_model)
    frozen = _frozen_norm(resolve_path(model.hf, model.family.final_norm), x)
    unembed = resolve_path(model.hf, model.family.unembed).weight  # (V, d_model)
    direction = unembed[batch.answer_ids] - unembed[batch.wrong_ids]  # (N, d_model)
    scores = []
    for layer in range(model.dims.n_layers):
        o_proj = locate(model, Site("head_out", layer))
        z = tr[Site("head_out", layer)][:, 0]  # (N, H, d_head)
        zero = o_proj(torch.zeros_like(z.flatten(1)))  # (N, d_model): the bias, if any
        row = []
        for h in range(model.dims.n_heads):
            only = torch.zeros_like(z)
            only[:, h] = z[:, h]
            out = o_proj(only.flatten(1)) - zero  # (N, d_model)
            row.append(float((frozen(out) * direction).sum(-1).mean()))
        scores.append(row)
    return HeadScores("direct logit attribution", scores)


@torch.no_grad()
def interchange_test(model: Model, task: Task, n_null: int = 20, seed: int = 0) -> HeadScores:
    """Swap each head between clean and corrupt runs (both ways) against a permutation null."""
    batch = task.tokenize(model.tokenizer)
    mask, n = batch.attention_mask, len(batch)
    if n < 2:
        raise GatescopeError("the interchange test needs at least 2 prompts for its null")
    with Tracer(model, "head_out.*") as clean:
        base_clean = logit_diff(model.forward(batch.clean_ids, mask), batch)
    with Tracer(model, "head_out.*") as corrupt:
        base_corrupt = logit_diff(model.forward(batch.corrupt_ids, mask), batch)
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n, generator=g) for _ in range(n_null)]

    def effect(layer, head, rows_clean, rows_corrupt) -> float:
        site = Site("head_out", layer, head)
        src_c = clean[Site("head_out", layer)][rows_clean][:, :, head]
        src_x = corrupt[Site("head_out", layer)][rows_corrupt][:, :, head]
        with intervene(model, Patch(site, source=src_c)):
            to_corrupt = logit_diff(model.forward(batch.corrupt_ids, mask), batch)
        with intervene(model, Patch(site, source=src_x)):
            to_clean = logit_diff(model.forward(batch.clean_ids, mask), batch)
        return float(((to_corrupt - base_corrupt).abs() + (to_clean - base_clean).abs()).mean() / 2)

    same = torch.arange(n)
    scores, pvals = [], []
    for layer in range(model.dims.n_layers):
        row, prow = [], []
        for head in range(model.dims.n_heads):
            observed = effect(layer, head, same, same)
            null = [effect(layer, head, p, p) for p in perms]
            row.append(observed)
            prow.append((1 + sum(v >= observed for v in null)) / (1 + len(null)))
        scores.append(row)
        pvals.append(prow)
    return HeadScores("interchange effect (mean |change in logit difference|)", scores, pvals)


__all__ = ["HeadScores", "direct_logit_attribution", "interchange_test", "last_token_logits"]
