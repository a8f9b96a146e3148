"""Circuit scores as the MIB circuit track reports them (Mueller et al. 2025, MIB).

Edges are those of :func:`circuits.graph.build_graph`: every upstream writer (the embedding,
each head through its slice of ``o_proj``, a mixer without heads, each MLP) into every
downstream reader (each head's q / k / v / gate input, a mixer's or an MLP's input, the
logits; :mod:`circuits.nodes`).

1. Edge patching. A circuit C is a set of edges. In the clean run, each reader v reads the
   residual stream minus, for every edge u -> v outside C, ``u(this run) - u(corrupt run)``:
   v reads u's corrupt output along edges outside the circuit, and every other writer's
   output as this run computes it (:class:`circuits.readers.ReaderEdits`; a head's query,
   key, value and gate each read their own stream). The skip stream itself is untouched.
   With every edge kept the run is the clean run; with none every reader reads corrupt
   inputs, which is the corrupt run.
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
from dataclasses import asdict, dataclass, field

import torch

from circuits.attention import attention
from circuits.graph import CircuitGraph
from circuits.methods import from_dict
from circuits.nodes import Port, graph_ports
from circuits.projections import o_proj_slices
from circuits.readers import ReaderEdits
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model
from probe.sites import Site
from probe.tasks import Task, logit_diff

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

EdgeKey = tuple[Port, Port]


class EdgePatcher:
    """The corrupt writer outputs and the clean / corrupt metric of one task, computed once;
    ``faithfulness(kept, edges)`` runs the clean prompts with every edge of ``edges`` outside
    ``kept`` patched (module docstring, step 1). Edges are (writer, reader) ports or their
    names."""

    @torch.no_grad()
    def __init__(self, model: Model, task: Task) -> None:
        self.model, self.batch = model, task.tokenize(model.tokenizer)
        self.writers, _ = graph_ports(model)
        self.slices = {i: o_proj_slices(model, i) for i in model.layers_with("head_out")}
        self._cut: dict[Port, list[Port]] = {}
        self.edits = ReaderEdits(model, self._shift)
        self.corrupt: dict[Port, torch.Tensor] = {}
        self.m_corrupt = self._run(self.batch.corrupt_ids, self.corrupt, {})
        self.m_clean = self._run(self.batch.clean_ids, {}, {})
        if abs(self.m_clean - self.m_corrupt) < 1e-6:
            raise GatescopeError("clean and corrupt runs give the same logit difference")

    def _writer_hooks(self, store: dict):
        def whole(port: Port):
            def fn(value, info):
                if not self.edits.capturing:
                    store[port] = value.detach().float()

            return fn

        def heads(layer: int):
            def fn(value, info):  # (N, T, H, d_head) -> each head's write (N, T, d_model)
                if self.edits.capturing:
                    return
                writes = torch.einsum("nthd,hmd->nthm", value.float(), self.slices[layer])
                for h in range(writes.shape[2]):
                    store[Port(Site("head_out", layer, h))] = writes[:, :, h]

            return fn

        entries = []
        for layer in self.slices:
            entries.append((Site("head_out", layer), heads(layer)))
        for w in self.writers:
            if w.writer_site.kind != "head_out":
                entries.append((w.writer_site, whole(w)))
        return entries

    def _shift(self, reader: Port, x: torch.Tensor):
        writers = self._cut.get(reader)
        if not writers:
            return None
        shift = sum(self.corrupt[u] - self._store[u] for u in writers)
        assert isinstance(shift, torch.Tensor)  # writers is not empty
        return frozenset(writers), shift

    def _run(self, ids, store: dict[Port, torch.Tensor], cut: dict[Port, list[Port]]) -> float:
        """The metric of one run recording writers into ``store``; ``cut[v]``: writers whose
        edge into reader v is patched to the corrupt output."""
        self._store, self._cut = store, cut
        with attention(self.model), hook_sites(self.model, self._writer_hooks(store), write=True):
            with self.edits.installed():
                logits = self.model.forward(ids, self.batch.attention_mask)
        self._cut = {}
        return float(logit_diff(logits, self.batch).float().mean())

    @torch.no_grad()
    def faithfulness(self, kept, edges) -> float:
        kept = {(Port.parse(u), Port.parse(v)) for u, v in kept}
        cut: dict[Port, list[Port]] = {}
        for u, v in edges:
            u, v = Port.parse(u), Port.parse(v)
            if (u, v) not in kept:
                cut.setdefault(v, []).append(u)
        m = self._run(self.batch.clean_ids, {}, cut)
        return (m - self.m_corrupt) / (self.m_clean - self.m_corrupt)


@dataclass
class MIBScore:
    """f(C) per edge fraction and the two areas (module docstring); ``method`` is the
    method's label and ``method_fields`` the method object (``method.to_dict()``)."""

    method: str
    model: str
    task: str
    n_edges: int
    fractions: list[float]
    kept: list[int]
    faithfulness: list[float]
    cpr: float
    cmd: float
    method_fields: dict = field(default_factory=dict)

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
    method = graph.meta.get("method", {"name": graph.method})
    label = from_dict(method).label
    return MIBScore(
        method=label,
        model=model.name,
        task=task.name,
        n_edges=len(edges),
        fractions=xs,
        kept=kept,
        faithfulness=values,
        cpr=cpr,
        cmd=cmd,
        method_fields=method,
    )
