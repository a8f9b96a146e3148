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
permutation of the source rows among prompts of the same token length, so positions line
up); the p-value is ``(1 + #null >= observed) / (1 + n_null)``. The matched swap and the
null swaps of one head ride in one batched pass per direction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from interventions.edits import Patch, intervene
from probe.errors import GatescopeError
from probe.locate import locate, module_at, tensor_of
from probe.model import Model
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


def frozen_norm(norm: torch.nn.Module, x: torch.Tensor):
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
    frozen = frozen_norm(module_at(model.hf, model.family.final_norm), x)
    unembed = tensor_of(module_at(model.hf, model.family.unembed))  # (V, d_model)
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
    return HeadScores(name="direct logit attribution", scores=scores)


def _within_length_perms(lengths: torch.Tensor, n_perm: int, seed: int) -> list[torch.Tensor]:
    """Random permutations that move each prompt only among prompts of its own token length,
    so a swapped activation always lands on the same positions."""
    g = torch.Generator().manual_seed(seed)
    perms = []
    for _ in range(n_perm):
        perm = torch.arange(len(lengths))
        for length in lengths.unique():
            rows = torch.nonzero(lengths == length).flatten()
            perm[rows] = rows[torch.randperm(len(rows), generator=g)]
        perms.append(perm)
    return perms


def _swap_effects(model, site, sources, base_ids, mask, batch, base_ld) -> torch.Tensor:
    """(P,) mean |change in logit difference| when ``sources[p]`` (n, T, d) replaces the head
    in the ``base_ids`` run; all P variants ride in one pass (block p of rows = variant p)."""
    n_var, n = len(sources), len(batch)
    expanded = batch.tile(n_var, base_ids)  # (P * n, T)
    with intervene(model, Patch(site, source=torch.cat(sources))):  # (P * n, T, d_head)
        ld = logit_diff(model.forward(expanded.clean_ids, expanded.attention_mask), expanded)
    return (ld.view(n_var, n) - base_ld).abs().mean(1)  # (P,)


@torch.no_grad()
def interchange_test(
    model: Model,
    task: Task,
    n_null: int = 20,
    seed: int = 0,
    batch_rows: int = 512,
    progress: bool = False,
) -> HeadScores:
    """Swap each head between clean and corrupt runs (both ways) against a permutation null
    (swaps from other prompts of the same token length); ``progress``: a bar on stderr over
    the heads."""
    batch = task.tokenize(model.tokenizer)
    mask, n = batch.attention_mask, len(batch)
    perms = _within_length_perms(batch.lengths, n_null, seed)
    if n < 2 or all(torch.equal(p, torch.arange(n)) for p in perms):
        raise GatescopeError(
            "the interchange test needs at least 2 prompts of one token length for its null; "
            "give more prompts"
        )
    with Tracer(model, "head_out.*") as clean:
        base_clean = logit_diff(model.forward(batch.clean_ids, mask), batch)
    with Tracer(model, "head_out.*") as corrupt:
        base_corrupt = logit_diff(model.forward(batch.corrupt_ids, mask), batch)
    perms = [torch.arange(n), *perms]  # variant 0 is the matched swap
    per_pass = max(1, batch_rows // n)
    scores, pvals = [], []
    from tqdm.auto import tqdm

    bar = tqdm(
        total=model.dims.n_layers * model.dims.n_heads,
        desc="interchange test",
        unit="head",
        disable=not progress,
    )
    for layer in range(model.dims.n_layers):
        row, prow = [], []
        for head in range(model.dims.n_heads):
            bar.update(1)
            site = Site("head_out", layer, head)
            src_c = clean[Site("head_out", layer)][:, :, head]  # (n, T, d_head)
            src_x = corrupt[Site("head_out", layer)][:, :, head]
            effects = []
            for i in range(0, len(perms), per_pass):
                chunk = perms[i : i + per_pass]
                into_corrupt = _swap_effects(
                    model,
                    site,
                    [src_c[q] for q in chunk],
                    batch.corrupt_ids,
                    mask,
                    batch,
                    base_corrupt,
                )
                into_clean = _swap_effects(
                    model,
                    site,
                    [src_x[q] for q in chunk],
                    batch.clean_ids,
                    mask,
                    batch,
                    base_clean,
                )
                effects.append((into_corrupt + into_clean) / 2)
            effects = torch.cat(effects)  # (1 + n_null,)
            observed, null = float(effects[0]), effects[1:]
            row.append(observed)
            prow.append(float((1 + (null >= observed).sum()) / (1 + len(null))))
        scores.append(row)
        pvals.append(prow)
    bar.close()
    return HeadScores(
        name="interchange effect (mean |change in logit difference|)",
        scores=scores,
        p_values=pvals,
    )


__all__ = ["HeadScores", "direct_logit_attribution", "interchange_test", "last_token_logits"]
