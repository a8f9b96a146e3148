"""Circuit scores as the MIB circuit track reports them (Mueller et al. 2025, MIB).

Edges are those of :func:`circuits.graph.build_graph`: every upstream writer (the embedding,
each head through its slice of ``o_proj``, each MLP) into every downstream reader block
(the attention block of a later layer, the MLP of its own or a later layer, the logits).

1. Edge patching. A circuit C is a set of edges. In the clean run, the input of each reader
   block v (the input of its input norm) is the residual stream minus, for every edge
   u -> v outside C, ``u(this run) - u(corrupt run)``: v reads u's corrupt output along
   edges outside the circuit, and every other writer's output as this run computes it. The
   skip stream itself is untouched. With every edge kept the run is the clean run; with
   none every block reads corrupt inputs, which is the corrupt run.
2. ``f(C) = (m(C) - m(empty)) / (m(full) - m(empty))`` with m the mean logit difference;
   m(full) and m(empty) are the plain clean and corrupt runs (so ``f`` of the full and the
   empty circuit being 1 and 0 checks the patching).
3. Circuits: the top ``ceil(p * E)`` edges by |score| for p in ``FRACTIONS`` (0.1 % to
   100 % of the E edges). CPR: the area under f over p (trapezoid rule; higher is better);
   CMD: the area under |1 - f| (lower is better).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch

from circuits.graph import CircuitGraph
from circuits.projections import o_proj_slices
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model, resolve_path
from probe.sites import Site
from probe.tasks import Task, logit_diff

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
EMBED = Site("resid_pre", 0)


class EdgePatcher:
    """The corrupt writer outputs and the clean / corrupt metric of one task, computed once;
    ``metric(kept, edges)`` runs the clean prompts with every edge of ``edges`` outside
    ``kept`` patched (module docstring, step 1)."""

    @torch.no_grad()
    def __init__(self, model: Model, task: Task) -> None:
        self.model, self.batch = model, task.tokenize(model.tokenizer)
        n = model.dims.n_layers
        self.slices = [o_proj_slices(model, i) for i in range(n)]
        fam = model.family
        self.readers = {}
        for i in range(n):
            self.readers[f"attn.{i}"] = resolve_path(model.layer(i), (fam.attn_input,))
            self.readers[f"mlp.{i}"] = resolve_path(model.layer(i), (fam.mlp_input,))
        self.readers["logits"] = resolve_path(model.hf, fam.final_norm)
        missing = [k for k, v in self.readers.items() if v is None]
        if missing:
            raise GatescopeError(f"edge patching needs the input norms; {missing} not found")
        self.corrupt: dict[str, torch.Tensor] = {}
        self.m_corrupt = self._run(self.batch.corrupt_ids, self.corrupt, {})
        self.m_clean = self._run(self.batch.clean_ids, {}, {})
        if abs(self.m_clean - self.m_corrupt) < 1e-6:
            raise GatescopeError("clean and corrupt runs give the same logit difference")

    def _writer_hooks(self, store: dict):
        def embed(value, info):
            store["embed"] = value.detach()
            return value

        def heads(layer):
            def fn(value, info):  # (N, T, H, d_head) -> each head's write (N, T, d_model)
                writes = torch.einsum("nthd,hmd->nthm", value.float(), self.slices[layer])
                for h in range(writes.shape[2]):
                    store[f"head.{layer}.{h}"] = writes[:, :, h]
                return value

            return fn

        def mlp(layer):
            def fn(value, info):
                store[f"mlp.{layer}"] = value.detach().float()
                return value

            return fn

        entries = [(EMBED, embed)]
        for i in range(self.model.dims.n_layers):
            entries += [(Site("head_out", i), heads(i)), (Site("mlp_out", i), mlp(i))]
        return entries

    def _run(self, ids, store: dict, cut: dict[str, list[str]]) -> float:
        """The metric of one run recording writers into ``store``; ``cut[v]``: writers whose
        edge into reader v is patched to the corrupt output."""
        handles = []

        def reader(block):
            def pre(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                shift = sum(store[u].to(x.dtype) - self.corrupt[u].to(x.dtype) for u in cut[block])
                x = x - shift
                if args:
                    return (x, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": x}

            return pre

        for block, names in cut.items():
            if names:
                handles.append(
                    self.readers[block].register_forward_pre_hook(reader(block), with_kwargs=True)
                )
        try:
            with hook_sites(self.model, self._writer_hooks(store), write=True):
                logits = self.model.forward(ids, self.batch.attention_mask)
        finally:
            for h in handles:
                h.remove()
        return float(logit_diff(logits, self.batch).float().mean())

    @torch.no_grad()
    def faithfulness(self, kept: set[tuple[str, str]], edges: list[tuple[str, str]]) -> float:
        cut: dict[str, list[str]] = {}
        for u, v in edges:
            if (u, v) not in kept:
                cut.setdefault(v, []).append(u)
        m = self._run(self.batch.clean_ids, {}, cut)
        return (m - self.m_corrupt) / (self.m_clean - self.m_corrupt)


@dataclass
class MIBScore:
    """f(C) per edge fraction and the two areas (module docstring)."""

    method: str
    model: str
    task: str
    n_edges: int
    fractions: list[float]
    kept: list[int]
    faithfulness: list[float]
    cpr: float
    cmd: float

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(x=self.fractions, y=self.faithfulness, mode="lines+markers"))
        fig.update_layout(
            title=f"{self.method} on {self.task} ({self.model}): CPR {self.cpr:.3f}, "
            f"CMD {self.cmd:.3f}",
            xaxis={"title": "fraction of edges kept", "type": "log"},
            yaxis_title="faithfulness f(C)",
        )
        return fig


def _area(x: list[float], y: list[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))


def mib_score(
    model: Model,
    task: Task,
    graph: CircuitGraph,
    fractions=FRACTIONS,
    patcher: EdgePatcher | None = None,
) -> MIBScore:
    """f over circuits of the top edges of ``graph`` at each fraction, CPR and CMD."""
    patcher = patcher or EdgePatcher(model, task)
    edges = [(e.source, e.target) for e in graph.edges]
    order = sorted(range(len(edges)), key=lambda i: -abs(graph.edges[i].score))
    kept, values = [], []
    for p in fractions:
        k = min(len(edges), math.ceil(p * len(edges) - 1e-9))
        kept.append(k)
        values.append(patcher.faithfulness({edges[i] for i in order[:k]}, edges))
    xs = list(fractions)
    cpr = _area(xs, values)
    cmd = _area(xs, [abs(1 - v) for v in values])
    return MIBScore(graph.method, model.name, task.name, len(edges), xs, kept, values, cpr, cmd)
