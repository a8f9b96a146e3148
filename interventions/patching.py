"""Activation patching sweeps (METHODS.md, "Activation patching"; Zhang & Nanda, arXiv
2309.16042; Heimersheim & Nanda, arXiv 2404.15255).

1. Run the source prompts (clean for denoising, corrupt for noising) once and cache every
   site involved and the last layer's output.
2. Enumerate components: sites x positions (x heads for ``head_out`` / ``attn_gate``).
3. Batch many patches into one forward pass: the base prompts (corrupt for denoising, clean
   for noising) are repeated once per component in a chunk, and each block of rows carries a
   different patch from the cache.
4. Metric: logit difference ``logit(answer) - logit(wrong)`` averaged over prompts,
   normalised: denoising ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)``, noising
   ``(LD_patched - LD_clean) / (LD_clean - LD_corrupt)``.
5. Patched passes stop after the last layer and compute only the answer and wrong logits at
   the last token (``unembed(final_norm(x))``), once that formula has reproduced the full
   forward's logit difference on the source run; otherwise the full forward is used.

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

from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model, resolve_path
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


class _Stop(Exception):
    """Raised by a read hook after the last layer, carrying the residual stream."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__("stop")
        self.value = value


class _Scorer:
    """Per-row logit difference of forward passes with some hooks installed.

    The fast path stops each pass after the last layer and computes only the two logits the
    metric needs: ``unembed(final_norm(x_last))`` at the answer and wrong tokens. It is used
    only if that formula reproduced the full forward's logit difference (within 1e-4) on the
    source run, so a model whose logits are more than that (softcapping, a non-linear head)
    keeps the full forward; so does a backend on which a pass cannot be stopped.
    """

    def __init__(self, model: Model, batch: TaskBatch, hidden: torch.Tensor, full_ld) -> None:
        self.model, self.fast = model, False
        try:
            got = self._from_hidden(hidden, batch)
            self.fast = bool(torch.allclose(got, full_ld, rtol=1e-4, atol=1e-4))
        except Exception as exc:  # noqa: BLE001 -- any failure means: use the full forward
            log.debug("patching: no fast logit path (%s)", exc)

    def _from_hidden(self, hidden: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        model = self.model
        rows = torch.arange(len(batch.lengths), device=hidden.device)
        x = hidden[rows, batch.lengths.to(hidden.device) - 1]  # (B, d_model)
        unembed = resolve_path(model.hf, model.family.unembed)
        w_u = unembed.weight  # (V, d_model)
        h = resolve_path(model.hf, model.family.final_norm)(x.to(w_u.device))  # (B, d_model)
        ans, wrong = batch.answer_ids.to(w_u.device), batch.wrong_ids.to(w_u.device)
        ld = (h * (w_u[ans] - w_u[wrong])).sum(-1)  # (B,)
        if getattr(unembed, "bias", None) is not None:
            ld = ld + unembed.bias[ans] - unembed.bias[wrong]
        return ld.float().cpu()

    def _fast(self, ids, mask, entries, batch: TaskBatch) -> torch.Tensor:
        last = Site("resid_post", self.model.dims.n_layers - 1)

        def stop(value, info):
            raise _Stop(value)

        try:
            with hook_sites(self.model, [*entries, (last, stop)], write=True):
                self.model.forward(ids, mask)
        except _Stop as caught:
            return self._from_hidden(caught.value, batch)
        raise RuntimeError("the forward pass never reached the last layer")

    def __call__(self, ids, mask, entries, batch: TaskBatch) -> torch.Tensor:
        if self.fast:
            try:
                return self._fast(ids, mask, entries, batch)
            except Exception as exc:  # noqa: BLE001 -- a real error recurs on the full path
                log.debug("patching: fast path failed (%s); using the full forward", exc)
                self.fast = False
        with hook_sites(self.model, entries, write=True):
            return logit_diff(self.model.forward(ids, mask), batch).float().cpu()


def _patched_logit_diffs(chunk: list[Component], cache, base, batch: TaskBatch, score):
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
    ld = score(expanded.clean_ids, expanded.attention_mask, entries, expanded)
    return ld.view(k, n).mean(1).tolist()  # (k,)


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
    return _select(batch, rows)


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
    """
    if mode not in MODES:
        raise GatescopeError(f"mode '{mode}' is unknown; choose one of {', '.join(MODES)}")
    batch = _prepare(model, task, positions)
    n, length, mask = len(batch), batch.clean_ids.shape[1], batch.attention_mask
    comps = _components(model, sites, positions, length)
    base, source = (
        (batch.corrupt_ids, batch.clean_ids)
        if mode == "denoise"
        else (batch.clean_ids, batch.corrupt_ids)
    )
    last = Site("resid_post", model.dims.n_layers - 1)
    with Tracer(model, sorted({_hook_site(c) for c in comps} | {last})) as cache:
        source_ld = logit_diff(model.forward(source, mask), batch).float().cpu()
    score = _Scorer(model, batch, cache[last], source_ld)
    base_ld = float(score(base, mask, [], batch).mean())
    clean_ld, corrupt_ld = (
        (float(source_ld.mean()), base_ld)
        if mode == "denoise"
        else (base_ld, float(source_ld.mean()))
    )
    if abs(clean_ld - corrupt_ld) < 1e-6:
        raise GatescopeError(
            "clean and corrupt runs give the same logit difference; "
            "nothing to patch (check the corrupt prompts)"
        )
    per_chunk = max(1, batch_rows // n)
    chunks = [comps[i : i + per_chunk] for i in range(0, len(comps), per_chunk)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"{mode} patching", unit="pass")
    for chunk in chunks:
        values = _patched_logit_diffs(chunk, cache, base, batch, score)
        for c, value in zip(chunk, values, strict=True):
            c.effect = (value - base_ld) / (clean_ld - corrupt_ld)
    tokens = [model.tokenizer.decode([t]) for t in batch.clean_ids[0][: int(batch.lengths[0])]]
    return PatchingResult(model.name, task.name, mode, n, clean_ld, corrupt_ld, comps, tokens)
