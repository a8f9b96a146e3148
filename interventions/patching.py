"""Activation patching sweeps (METHODS.md, "Activation patching").

1. Run the source prompts (clean for denoising, corrupt for noising) once and cache every
   site involved.
2. Enumerate components: sites x positions (x heads for ``head_out`` / ``attn_gate``).
3. Batch many patches into one forward pass: the base prompts (corrupt for denoising, clean
   for noising) are repeated once per component in a chunk, and each block of rows carries a
   different patch from the cache.
4. Metric: logit difference ``logit(answer) - logit(wrong)`` averaged over prompts,
   normalised: denoising ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)``, noising
   ``(LD_patched - LD_clean) / (LD_clean - LD_corrupt)``.

``attn_gate`` is patched through its logits (``attn_gate_logit``), so a patch is exact.
Per-position sweeps need prompts of one length: the largest group of equal-length prompts
is used (and reported).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch

from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model
from probe.sites import HEADED_KINDS, Site
from probe.tasks import Task, TaskBatch, logit_diff
from probe.tracer import Tracer

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

    def top(self, n: int = 10) -> list[Component]:
        return sorted(self.components, key=lambda c: -abs(c.effect))[:n]

    def grid(self, kind: str) -> tuple[list[str], list[str], list[list[float]]]:
        """(row labels, column labels, values): layers x heads, or layers x positions."""
        comps = [c for c in self.components if c.kind == kind]
        if not comps:
            raise GatescopeError(f"no {kind} components in this result")
        by_head = any(c.head is not None for c in comps)
        layers = sorted({c.layer for c in comps})
        cols = sorted({(c.head if by_head else c.position) or 0 for c in comps})
        values = [[float("nan")] * len(cols) for _ in layers]
        for c in comps:
            col = cols.index((c.head if by_head else c.position) or 0)
            values[layers.index(c.layer)][col] = c.effect
        name = "head" if by_head else "pos"
        return [f"L{i}" for i in layers], [f"{name} {j}" for j in cols], values

    def figure(self, kind: str):
        """A Plotly heatmap of ``grid(kind)``."""
        import plotly.graph_objects as go

        rows, cols, values = self.grid(kind)
        fig = go.Figure(go.Heatmap(z=values, x=cols, y=rows, colorscale="RdBu", zmid=0))
        fig.update_layout(title=f"{self.mode} patching of {kind} on {self.task}")
        return fig

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def equal_length_rows(batch: TaskBatch) -> torch.Tensor:
    """Indices of the largest group of prompts with one token length."""
    length, _ = Counter(batch.lengths.tolist()).most_common(1)[0]
    return torch.nonzero(batch.lengths == length).flatten()


def _select(batch: TaskBatch, rows: torch.Tensor) -> TaskBatch:
    n = int(batch.lengths[rows].max())
    return TaskBatch(
        batch.clean_ids[rows, :n],
        batch.corrupt_ids[rows, :n],
        batch.attention_mask[rows, :n],
        batch.lengths[rows],
        batch.answer_ids[rows],
        batch.wrong_ids[rows],
    )


def _components(model: Model, sites, positions, length: int | None) -> list[Component]:
    comps = []
    for site in model.sites(sites):
        if not model.family.taps[site.kind].writable:
            raise GatescopeError(f"{site.kind} cannot be patched (read-only)")
        heads = [site.head] if site.head is not None else [None]
        if site.kind in HEADED_KINDS and site.head is None:
            heads = list(range(model.dims.n_heads))
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


def _hook_site(c: Component) -> Site:
    kind = "attn_gate_logit" if c.kind == "attn_gate" else c.kind
    return Site(kind, c.layer)


def _patch_fn(jobs: list[tuple[int, Component]], cache: torch.Tensor, n: int):
    def fn(value, info):
        new = value.clone()
        for j, c in jobs:
            rows = slice(j * n, (j + 1) * n)
            pos = slice(None) if c.position is None else c.position
            if c.head is None:
                new[rows, pos] = cache[:, pos]
            else:
                new[rows, pos, c.head] = cache[:, pos, c.head]
        return new

    return fn


def _patched_logit_diffs(model: Model, chunk: list[Component], cache, base, batch: TaskBatch):
    """Mean logit difference with each component of ``chunk`` patched, in one forward pass:
    the base prompts repeated once per component, block j of rows carrying patch j."""
    n, k = len(batch), len(chunk)
    jobs: dict[Site, list] = {}
    for j, c in enumerate(chunk):
        jobs.setdefault(_hook_site(c), []).append((j, c))
    entries = [(s, _patch_fn(js, cache[s], n)) for s, js in jobs.items()]
    expanded = TaskBatch(
        base.repeat(k, 1),  # (k * n, T)
        base.repeat(k, 1),
        batch.attention_mask.repeat(k, 1),
        batch.lengths.repeat(k),
        batch.answer_ids.repeat(k),
        batch.wrong_ids.repeat(k),
    )
    with hook_sites(model, entries, write=True):
        logits = model.forward(expanded.clean_ids, expanded.attention_mask)
    return logit_diff(logits, expanded).view(k, n).mean(1).tolist()


@torch.no_grad()
def activation_patching(
    model: Model,
    task: Task,
    sites,
    *,
    positions: None | str | list[int] = None,
    mode: str = "denoise",
    batch_rows: int = 256,
    progress: bool = True,
) -> PatchingResult:
    """Patch every component of ``sites`` (all positions at once, ``"each"`` position, or the
    listed positions) and measure the normalised logit difference."""
    if mode not in MODES:
        raise GatescopeError(f"mode '{mode}' is unknown; choose one of {', '.join(MODES)}")
    batch = task.tokenize(model.tokenizer)
    if positions is not None:
        rows = equal_length_rows(batch)
        if len(rows) < len(batch):
            log.warning(
                "per-position patching: using the %d of %d prompts with %d tokens",
                len(rows),
                len(batch),
                int(batch.lengths[rows[0]]),
            )
        batch = _select(batch, rows)
    n, length = len(batch), batch.clean_ids.shape[1]
    mask = batch.attention_mask
    clean_ld = float(logit_diff(model.forward(batch.clean_ids, mask), batch).mean())
    corrupt_ld = float(logit_diff(model.forward(batch.corrupt_ids, mask), batch).mean())
    if abs(clean_ld - corrupt_ld) < 1e-6:
        raise GatescopeError(
            "clean and corrupt runs give the same logit difference; "
            "nothing to patch (check the corrupt prompts)"
        )
    base, source = (
        (batch.corrupt_ids, batch.clean_ids)
        if mode == "denoise"
        else (batch.clean_ids, batch.corrupt_ids)
    )
    comps = _components(model, sites, positions, length)
    hook_sites_needed = sorted({_hook_site(c) for c in comps})
    with Tracer(model, hook_sites_needed) as cache:
        model.forward(source, mask)
    per_chunk = max(1, batch_rows // n)
    chunks = [comps[i : i + per_chunk] for i in range(0, len(comps), per_chunk)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"{mode} patching", unit="pass")
    ref = corrupt_ld if mode == "denoise" else clean_ld
    for chunk in chunks:
        for c, value in zip(
            chunk, _patched_logit_diffs(model, chunk, cache, base, batch), strict=True
        ):
            c.effect = (value - ref) / (clean_ld - corrupt_ld)
    tokens = [model.tokenizer.decode([t]) for t in batch.clean_ids[0][: int(batch.lengths[0])]]
    return PatchingResult(model.name, task.name, mode, n, clean_ld, corrupt_ld, comps, tokens)
