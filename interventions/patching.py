"""Activation patching sweeps (docs/METHODS.md, "Activation patching"; Zhang & Nanda, arXiv
2309.16042; Heimersheim & Nanda, arXiv 2404.15255).

1. Run the source prompts (clean for denoising, corrupt for noising) once and cache every
   site involved.
2. Enumerate components: sites x positions (x heads for ``head_out`` / ``attn_gate``).
   Positions before the first token where clean and corrupt prompts differ are equal in
   both runs (the model is causal): their effect is exactly 0 and they are not run.
3. Batch many patches into one forward pass: the base prompts (corrupt for denoising, clean
   for noising) are repeated once per component in a chunk, and each block of rows carries a
   different patch from the cache.
4. Resume (``probe.resume``): the shared prefix runs once with its cache (KV of attention
   layers, convolution and recurrent states of Gated-DeltaNet layers), and each patched
   pass starts at its components' layer from the base run's recorded layer inputs, covering
   only the positions after the prefix (one layer per pass). This is checked: once per model
   on two prompts against the full forward (kept by ``interventions.passes``), and in every
   sweep by two unpatched rows in the first pass that must reproduce the base run; where
   anything differs, or the backend cannot resume, every pass runs in full and the result's
   ``resume_reason`` says why (``interventions.passes.run_sweep`` makes that choice).
5. Metric: logit difference ``logit(answer) - logit(wrong)`` averaged over prompts,
   normalised: denoising ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)``, noising
   ``(LD_patched - LD_clean) / (LD_clean - LD_corrupt)``.
6. Patched passes stop after the last layer and compute only the answer and wrong logits at
   the last token (``unembed(final_norm(x))``), once that formula has reproduced the full
   forward's logit difference; otherwise the full forward is used (and nothing resumes).
7. Rows per pass: ``batch_rows`` at most, cut to fit ``max_memory`` (see
   ``interventions.passes``); one tiled cache is held at a time.

Layout: the expanded batch is ``(k * n, T)``, block ``j`` (rows ``j*n .. (j+1)*n``) carrying
component ``j`` of the pass; effects are ``(k, n)`` means over the prompts.

``attn_gate`` is patched through its logits (``attn_gate_logit``), so a patch is exact.
Per-position sweeps need prompts of one length: the largest group of equal-length prompts
is used (and reported).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from interventions.components import (
    Component,
    components,
    equal_length_rows,
    prepare,
    value_site,
)
from interventions.passes import run_sweep
from probe.errors import GatescopeError
from probe.model import Model
from probe.resume import shared_prefix
from probe.tasks import Task

MODES = ("denoise", "noise")


class Grid(NamedTuple):
    """A table of effects: ``values[i][j]`` belongs to row ``rows[i]`` and column ``cols[j]``
    (NaN where nothing was patched)."""

    rows: list[str]
    cols: list[str]
    values: list[list[float]]

    def to_dict(self) -> dict:
        return self._asdict()


@dataclass
class PatchingResult:
    """Normalised effect of patching each component (see the module docstring)."""

    model: str
    task: str
    mode: str
    n_prompts: int
    clean_logit_diff: float
    corrupt_logit_diff: float
    components: list[Component]
    tokens: list[str] = field(default_factory=list)
    shared_prefix: int = 0  # leading tokens the clean and corrupt prompts share
    resumed: bool = False  # passes started at their layer, after the shared prefix
    resume_reason: str = ""  # why passes ran in full ("" when they resumed)
    rows_per_pass: int = 0  # rows of the largest patched pass (from batch_rows, max_memory)
    peak_memory: int = 0  # bytes of the sweep: measured on CUDA, estimated from shapes on CPU
    memory: dict = field(default_factory=dict)  # held, per_row, budget, measured

    def top(self, n: int = 10) -> list[Component]:
        return sorted(self.components, key=lambda c: -abs(c.effect))[:n]

    def grid(self, kind: str) -> Grid:
        """The effects of ``kind`` as a table: layers x heads, layers x positions, or
        (layer, head) x positions when both were swept; ``"all"`` is a patch of every
        position at once."""
        comps = [c for c in self.components if c.kind == kind]
        if not comps:
            kinds = sorted({c.kind for c in self.components})
            raise GatescopeError(f"no {kind} components in this result; it has {kinds}")
        by_head = any(c.head is not None for c in comps)
        by_pos = any(c.position is not None for c in comps)

        def row(c: Component):
            return (c.layer, c.head) if by_head and by_pos else c.layer

        def col(c: Component):
            return c.position if by_pos else c.head

        rows = sorted({row(c) for c in comps}, key=lambda r: r if isinstance(r, tuple) else (r,))
        cols = sorted({col(c) for c in comps}, key=lambda x: -1 if x is None else x)
        values = [[float("nan")] * len(cols) for _ in rows]
        for c in comps:
            values[rows.index(row(c))][cols.index(col(c))] = c.effect
        row_labels = [f"L{r[0]}.H{r[1]}" if isinstance(r, tuple) else f"L{r}" for r in rows]
        name = "pos" if by_pos else "head"
        col_labels = ["all" if x is None else f"{name} {x}" for x in cols]
        return Grid(row_labels, col_labels, values)

    def figure(self, kind: str):
        """A Plotly heatmap of ``grid(kind)``."""
        import plotly.graph_objects as go

        rows, cols, values = self.grid(kind)
        fig = go.Figure(
            go.Heatmap(
                z=values,
                x=cols,
                y=rows,
                colorscale="RdBu",
                zmid=0,
                colorbar={"title": "effect"},
                hovertemplate="%{y} %{x}: %{z:.3f}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"{self.mode} patching of {kind} on {self.task} ({self.n_prompts} prompts)",
            yaxis={"autorange": "reversed"},
        )
        return fig

    def to_dict(self) -> dict:
        return {**asdict(self), "components": [c.to_dict() for c in self.components]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@torch.no_grad()
def activation_patching(
    model: Model,
    task: Task,
    sites,
    *,
    positions: None | str | list[int] = None,
    mode: str = "denoise",
    batch_rows: int = 256,
    resume: bool = True,
    max_memory: int | str | None = "auto",
    progress: bool = True,
) -> PatchingResult:
    """Patch every component of ``sites`` and measure the normalised logit difference.

    Args:
        sites: a site pattern (``"head_out.*"``, ``"attn_gate.1,mlp_out.0"``) or a list of
            sites; ``head_out`` / ``attn_gate`` sites without a head are swept head by head.
        positions: ``None`` patches all positions at once; ``"each"`` sweeps every position
            (on the largest group of equal-length prompts); a list sweeps those positions.
        mode: ``"denoise"`` (corrupt run, clean patch) or ``"noise"`` (clean run, corrupt
            patch).
        batch_rows: rows per forward pass; ``batch_rows // n_prompts`` patches ride in one
            pass.
        resume: start each patched pass at its layer, after the prefix the clean and corrupt
            prompts share (checked against the full forward first); ``False`` runs every
            pass in full. Why passes did not resume is ``resume_reason`` of the result.
        max_memory: a memory budget for the sweep (bytes, or ``"2GB"``): rows per pass are
            cut to fit it; ``"auto"`` is half the memory free on the model's device now
            (``interventions.budget.default_budget``), ``None`` no budget beyond
            ``batch_rows``; a budget that cannot hold one component's rows is refused.
            ``peak_memory`` of the result reports the sweep's peak (measured on CUDA,
            estimated from shapes on CPU).
    """
    if mode not in MODES:
        raise GatescopeError(f"mode '{mode}' is unknown; choose one of {', '.join(MODES)}")
    batch = prepare(model, task, positions)
    n, length = len(batch), batch.clean_ids.shape[1]
    comps = components(model, sites, positions, length)
    base, source = (
        (batch.corrupt_ids, batch.clean_ids)
        if mode == "denoise"
        else (batch.clean_ids, batch.corrupt_ids)
    )
    start = shared_prefix(base, source)
    todo = [c for c in comps if c.position is None or c.position >= start]
    for c in comps:
        if c.position is not None and c.position < start:
            c.effect = 0.0  # both runs agree before the first differing token
    out = run_sweep(
        model,
        batch,
        base,
        source,
        todo,
        start,
        mode,
        batch_rows=batch_rows,
        resume=resume,
        max_memory=max_memory,
        progress=progress,
    )
    tokens = [model.tokenizer.decode([t]) for t in batch.clean_ids[0][: int(batch.lengths[0])]]
    return PatchingResult(
        model=model.name,
        task=task.name,
        mode=mode,
        n_prompts=n,
        clean_logit_diff=out.clean_logit_diff,
        corrupt_logit_diff=out.corrupt_logit_diff,
        components=comps,
        tokens=tokens,
        shared_prefix=start,
        resumed=out.resumed,
        resume_reason=out.resume_reason,
        rows_per_pass=out.rows_per_pass,
        peak_memory=out.peak_memory,
        memory=out.memory,
    )


__all__ = ["Component", "Grid", "PatchingResult", "activation_patching", "equal_length_rows",
           "value_site"]  # fmt: skip
