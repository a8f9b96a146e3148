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
4. Resume (``probe.resume``): the shared prefix runs once with a KV cache, and each patched
   pass starts at its components' layer from the base run's recorded layer inputs, covering
   only the positions after the prefix (one layer per pass). This is checked: once per model
   on two prompts against the full forward (kept in ``model.verified``), and in every sweep
   by two unpatched rows in the first pass that must reproduce the base run; where anything
   differs, or the backend cannot resume, every pass runs in full.
5. Metric: logit difference ``logit(answer) - logit(wrong)`` averaged over prompts,
   normalised: denoising ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)``, noising
   ``(LD_patched - LD_clean) / (LD_clean - LD_corrupt)``.
6. Patched passes stop after the last layer and compute only the answer and wrong logits at
   the last token (``unembed(final_norm(x))``), once that formula has reproduced the full
   forward's logit difference; otherwise the full forward is used (and nothing resumes).

Layout: the expanded batch is ``(k * n, T)``, block ``j`` (rows ``j*n .. (j+1)*n``) carrying
component ``j`` of the pass; effects are ``(k, n)`` means over the prompts.

``attn_gate`` is patched through its logits (``attn_gate_logit``), so a patch is exact.
Per-position sweeps need prompts of one length: the largest group of equal-length prompts
is used (and reported).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from interventions.passes import (
    RESUME_CHECK,
    ResumeMismatch,
    full_runs,
    hook_site,
    normalisers,
    resumed_runs,
    select_rows,
    sweep,
)
from probe.errors import GatescopeError
from probe.model import Model
from probe.resume import shared_prefix
from probe.sites import HEADED_KINDS
from probe.tasks import Task, TaskBatch

log = logging.getLogger(__name__)
MODES = ("denoise", "noise")


@dataclass
class Component:
    """One patched unit: a site (whole layer), optionally one position and one head."""

    kind: str
    layer: int
    position: int | None
    head: int | None
    effect: float = float("nan")

    @property
    def label(self) -> str:
        head = "" if self.head is None else f".{self.head}"
        pos = "" if self.position is None else f"@{self.position}"
        return f"{self.kind}.{self.layer}{head}{pos}"


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
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def equal_length_rows(batch: TaskBatch) -> torch.Tensor:
    """Indices of the largest group of prompts with one token length."""
    length, _ = Counter(batch.lengths.tolist()).most_common(1)[0]
    return torch.nonzero(batch.lengths == length).flatten()


def _components(model: Model, sites, positions, length: int | None) -> list[Component]:
    comps = []
    for site in model.sites(sites):
        if not model.family.taps[site.kind].writable:
            raise GatescopeError(f"{site.kind} cannot be patched (read-only)")
        heads = [site.head] if site.head is not None else [None]
        if site.kind in HEADED_KINDS and site.head is None:
            heads = list(range(model.n_heads_of(site.kind)))
        if positions is None:
            pos_list = [None]
        elif positions == "each":
            pos_list = list(range(length))
        else:
            pos_list = [p if p >= 0 else length + p for p in positions]
            if any(p < 0 or p >= length for p in pos_list):
                raise GatescopeError(f"positions {positions} out of range for {length} tokens")
        comps += [Component(site.kind, site.layer, p, h) for p in pos_list for h in heads]
    return comps


def _prepare(model: Model, task: Task, positions) -> TaskBatch:
    batch = task.tokenize(model.tokenizer)
    if positions is None:
        return batch
    rows = equal_length_rows(batch)
    if len(rows) < len(batch):
        log.warning(
            "per-position patching: using the %d of %d prompts with %d tokens",
            len(rows),
            len(batch),
            int(batch.lengths[rows[0]]),
        )
    return select_rows(batch, rows)


def _measure(model, batch, base, source, sites, todo, start, mode, batch_rows, resume, progress):
    """Set the normalised effect of every component in ``todo``; returns ``(LD_clean,
    LD_corrupt, resumed)``. Resumed passes are tried first; if one differs from the base run,
    everything reruns in full."""
    runs = resumed_runs(model, batch, base, source, sites, start) if resume else None
    log.debug("patching: %s passes", "resumed" if runs else "full")
    runs = runs or full_runs(model, batch, base, source, sites)
    base_ld, clean_ld, corrupt_ld = normalisers(runs, mode)
    try:
        sweep(todo, runs, base, batch, batch_rows, progress, mode)
    except ResumeMismatch:
        log.debug("patching: a resumed pass differs from the base run; running full passes")
        model.verified[RESUME_CHECK] = False
        runs = full_runs(model, batch, base, source, sites)
        base_ld, clean_ld, corrupt_ld = normalisers(runs, mode)
        sweep(todo, runs, base, batch, batch_rows, progress, mode)
    for c in todo:
        c.effect = (c.effect - base_ld) / (clean_ld - corrupt_ld)
    return clean_ld, corrupt_ld, runs.resumed is not None


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
            pass in full.
    """
    if mode not in MODES:
        raise GatescopeError(f"mode '{mode}' is unknown; choose one of {', '.join(MODES)}")
    batch = _prepare(model, task, positions)
    n, length = len(batch), batch.clean_ids.shape[1]
    comps = _components(model, sites, positions, length)
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
    sites = [hook_site(c) for c in comps]
    clean_ld, corrupt_ld, resumed = _measure(
        model, batch, base, source, sites, todo, start, mode, batch_rows, resume, progress
    )
    tokens = [model.tokenizer.decode([t]) for t in batch.clean_ids[0][: int(batch.lengths[0])]]
    return PatchingResult(
        model.name, task.name, mode, n, clean_ld, corrupt_ld, comps, tokens, start, resumed
    )
