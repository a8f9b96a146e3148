"""Circuit graphs: nodes, EAP-style edges to every reader, pruning.

Nodes and edge ends are ports (:class:`~circuits.nodes.Port`) (a site plus a channel): writers are
the embedding (``resid_pre.0``), every attention head (``head_out.L.H``), the whole token
mixer of a layer without heads (``attn_out.L``: Gated-DeltaNet), every MLP, dense or MoE
(``mlp_out.L``); readers are each head's query, key, value and (gated attention) output-gate
input (``head_out.L.H.q`` / ``.k`` / ``.v`` / ``.g``), a mixer's or an MLP's input
(``attn_out.L.in``, ``mlp_out.L.in``) and the logits. Scores use one method of
:mod:`circuits.methods` (``eap`` = AtP's gradient, ``eap-ig``, ``relp``, ``ig``, ...), all
from one gradient pass. Edge-level circuit scores (MIB's CPR / CMD) are in :mod:`circuits.mib`,
node-level faithfulness in :mod:`circuits.faithfulness`, path patching in
:mod:`circuits.path_patching`.

1. Node score: the attribution of the writer's output (``resid_pre.0``, ``head_out`` per
   head, ``attn_out``, ``mlp_out``), normalised like activation patching.
2. Edge score u -> v (EAP, Syed et al. 2023, arXiv 2310.10348):
   ``sum (u_clean - u_corrupt) . dm/d(input of v)`` over prompts and positions, divided by
   ``LD_clean - LD_corrupt``. u's output is taken in the residual stream (a head's output
   through its slice of ``o_proj``); the gradient into reader v alone is, for a head's
   channel, the gradient of the metric with respect to that head's query (key, value, gate
   logits) pulled back to the layer's input through that channel only
   (:func:`circuits.attribution.gradient_pass` with ``readers``); for a whole block the
   difference of the residual-stream gradients around it (``g(resid_pre.L) -
   g(resid_mid.L)`` for a mixer, ``g(resid_mid.L) - g(resid_post.L)`` for an MLP), and
   ``g(resid_post.last)`` for the logits. Every path from the stream into an attention block
   runs through one head's q, k, v or gate, so the heads' reader gradients add up to the
   block's, and a node's score is the sum of its outgoing edges' scores.
3. ``prune(n)``: the top-n writers by |score| (plus the logits) and the edges among them
   (a reader belongs to the writer it feeds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import torch

from circuits.attribution import gradient_pass
from circuits.faithfulness import (
    FaithfulnessCurve,
    _Faithfulness,
    faithfulness,
    faithfulness_curve,
    faithfulness_notes,
)
from circuits.methods import CIRCUIT_DEFAULT, AtPStar, Method, RelPStar, make
from circuits.nodes import LOGITS, Port, feeds, graph_ports
from circuits.projections import o_proj_slices
from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.tasks import Task

__all__ = [
    "CircuitGraph",
    "Edge",
    "FaithfulnessCurve",
    "Node",
    "_Faithfulness",
    "build_graph",
    "faithfulness",
    "faithfulness_curve",
]


@dataclass
class Node:
    """A writer (or the logits) with its score (``port`` names it; ``name`` is its text)."""

    port: Port
    score: float

    @property
    def name(self) -> str:
        return str(self.port)

    @property
    def layer(self) -> int:
        return self.port.layer

    @property
    def head(self) -> int | None:
        return self.port.head

    def to_dict(self) -> dict:
        return {"name": self.name, "layer": self.layer, "head": self.head, "score": self.score}


@dataclass
class Edge:
    """Writer ``source`` into reader ``target`` with its score."""

    source: Port
    target: Port
    score: float

    def to_dict(self) -> dict:
        return {"source": str(self.source), "target": str(self.target), "score": self.score}


@dataclass
class CircuitGraph:
    """Nodes and edges with scores; ``prune`` keeps the strongest.

    Attributes:
        method / model / task: names (the method's fields are in ``meta["method"]``).
        nodes: every writer and the logits; edges: every writer into every later reader.
        faithfulness: node-level faithfulness, once measured (see ``notes``).
        n_layers: the model's layers (for the figure).
        meta: the metric's end points and the method object.
        notes: what a reader of the figures should know (e.g. why faithfulness is 0).
    """

    method: str
    model: str
    task: str
    nodes: list[Node]
    edges: list[Edge]
    faithfulness: float | None = None
    n_layers: int = 0
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def prune(self, top_n: int) -> CircuitGraph:
        scored = [n for n in self.nodes if n.port != LOGITS]
        if not 0 <= top_n <= len(scored):
            raise GatescopeError(f"top-n {top_n} is outside 0-{len(scored)} (the graph's nodes)")
        keep = {n.port for n in sorted(scored, key=lambda n: -abs(n.score))[:top_n]} | {LOGITS}
        edges = [e for e in self.edges if e.source in keep and e.target.owner() in keep]
        nodes = [n for n in self.nodes if n.port in keep]
        return replace(
            self,
            nodes=nodes,
            edges=edges,
            faithfulness=None,
            meta=dict(self.meta),
            notes=faithfulness_notes(keep),
        )

    def ports(self) -> set[Port]:
        return {n.port for n in self.nodes}

    def node_names(self) -> set[str]:
        return {n.name for n in self.nodes}

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "model": self.model,
            "task": self.task,
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            "faithfulness": self.faithfulness,
            "n_layers": self.n_layers,
            "meta": self.meta,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _xy(self, port: Port) -> tuple[float, float]:
        if port == LOGITS:
            return float(self.n_layers), -1.0
        owner = port.owner()
        kind = owner.writer_site.kind
        x = -1.0 if kind == "resid_pre" else float(owner.layer)
        x += 0.5 if kind == "mlp_out" else 0.0
        y = float(owner.head) if owner.head is not None else -1.0
        if port.channel in ("q", "k", "v", "g"):  # a head's inputs: just left of the head
            x, y = x - 0.2, y + 0.3 - 0.2 * "qkvg".index(port.channel)
        elif port.channel == "in":
            x -= 0.2
        return x, y

    def figure(self):
        """Layers as columns: embedding, then per layer its heads (or mixer) and its MLP, then
        logits; edges end at the reader (a head's q / k / v / g just left of it)."""
        import plotly.graph_objects as go

        fig = go.Figure()
        top = max((abs(e.score) for e in self.edges), default=1.0) or 1.0
        for e in self.edges:
            (x0, y0), (x1, y1) = self._xy(e.source), self._xy(e.target)
            fig.add_trace(
                go.Scatter(
                    x=[x0, x1],
                    y=[y0, y1],
                    mode="lines",
                    hoverinfo="text",
                    text=f"{e.source} -> {e.target}: {e.score:+.3f}",
                    line={
                        "width": 0.5 + 5 * abs(e.score) / top,
                        "color": "crimson" if e.score > 0 else "steelblue",
                    },
                    showlegend=False,
                )
            )
        xy = [self._xy(n.port) for n in self.nodes]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in xy],
                y=[p[1] for p in xy],
                mode="markers+text",
                text=[n.name for n in self.nodes],
                textposition="top center",
                marker={
                    "size": [10 + 30 * min(1.0, abs(n.score)) for n in self.nodes],
                    "color": [n.score for n in self.nodes],
                    "colorscale": "RdBu",
                    "cmid": 0,
                },
                showlegend=False,
            )
        )
        title = f"{self.method} circuit on {self.task}"
        if self.faithfulness is not None:
            title += f" (faithfulness {self.faithfulness:.2f})"
        fig.update_layout(
            title=title, xaxis_title="layer", yaxis_title="head (-1: embedding/mixer/MLP)"
        )
        return fig


def writer_delta(model: Model, port: Port, clean: dict, corrupt: dict) -> torch.Tensor:
    """(N, T, d_model): the writer's clean - corrupt output in the residual stream (a head's
    through its slice of ``o_proj``)."""
    site = port.writer_site
    if site.kind == "head_out":
        whole = Site("head_out", site.layer)
        dz = (clean[whole] - corrupt[whole])[:, :, site.head]  # (N, T, d_head)
        return dz @ o_proj_slices(model, site.layer)[site.head].T
    return clean[site] - corrupt[site]


def graph_sites(model: Model) -> list[Site]:
    """The sites a graph's gradient pass reads: the stream around every block and every
    writer's output."""
    writers, _ = graph_ports(model)
    sites = {Site(k, i) for i in range(model.dims.n_layers) for k in ("resid_pre", "resid_mid")}
    sites |= {Site("resid_post", i) for i in range(model.dims.n_layers)}
    sites |= {Site(w.writer_site.kind, w.writer_site.layer) for w in writers}
    return sorted(sites)


def reader_gradients(model: Model, run) -> dict[Port, torch.Tensor]:
    """Reader -> dm/d(its input) through that reader alone (module docstring, step 2)."""
    _, readers = graph_ports(model)
    g, n = run.grads, model.dims.n_layers
    out = {}
    for r in readers:
        if r == LOGITS:
            out[r] = g[Site("resid_post", n - 1)]
            continue
        site = r.writer_site
        layer = site.layer
        pre, mid, post = (Site(k, layer) for k in ("resid_pre", "resid_mid", "resid_post"))
        if r.channel == "in":
            out[r] = g[mid] - g[post] if site.kind == "mlp_out" else g[pre] - g[mid]
        elif (layer, site.head, r.channel) in run.readers:
            out[r] = run.readers[(layer, site.head, r.channel)]
        else:
            raise GatescopeError(
                f"layer {layer}'s attention does not run through transformers' attention "
                "interface, so its heads' q / k / v inputs cannot be told apart"
            )
    return out


def _default_method(options: dict) -> Method:
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return CIRCUIT_DEFAULT
    fields = {k: v for k, v in CIRCUIT_DEFAULT.to_dict().items() if k != "name"}
    return make(CIRCUIT_DEFAULT.name, **{**fields, **given})


def build_graph(
    model: Model, task: Task, method: str | Method | None = None, **options
) -> CircuitGraph:
    """The full graph with node and edge scores from ``method`` (a name or object of
    :mod:`circuits.methods`, ``options`` its fields; module docstring; None:
    :data:`circuits.methods.CIRCUIT_DEFAULT`, with ``options`` over its fields).
    ``eap`` / ``eap-ig`` are the edge methods by name (AtP's gradient; EAP-IG's interpolation
    k = 1 .. m); ``atp*`` / ``relp*`` add their attention corrections to the node scores only
    (edges keep the uncorrected gradient, so their sums are the uncorrected node scores)."""
    method = _default_method(options) if method is None else make(method, **options)
    batch = task.tokenize(model.tokenizer)
    run = gradient_pass(model, graph_sites(model), batch, method, readers=True)
    span = run.clean_logit_diff - run.corrupt_logit_diff
    if abs(span) < 1e-6:
        raise GatescopeError("clean and corrupt runs give the same logit difference")
    writers, _ = graph_ports(model)
    reads = reader_gradients(model, run)
    nodes, edges = [], []
    for w in writers:
        delta = writer_delta(model, w, run.clean, run.corrupt)  # (N, T, d_model)
        site = w.writer_site
        if site.kind == "head_out":
            whole = Site("head_out", site.layer)
            dz = (run.clean[whole] - run.corrupt[whole])[:, :, w.head]
            score = float((dz * run.grads[whole][:, :, w.head]).sum()) / span
        else:
            score = float((delta * run.grads[site]).sum()) / span
        nodes.append(Node(w, score))
        for r, grad in reads.items():
            if feeds(w, r):
                edges.append(Edge(w, r, float((delta * grad).sum()) / span))
    nodes.append(Node(LOGITS, 1.0))
    if isinstance(method, AtPStar | RelPStar):
        _correct_nodes(model, task, method, nodes)
    meta = {
        "clean_logit_diff": run.clean_logit_diff,
        "corrupt_logit_diff": run.corrupt_logit_diff,
        "method": method.to_dict(),
    }
    return CircuitGraph(
        method=method.name,
        model=model.name,
        task=task.name,
        nodes=nodes,
        edges=edges,
        n_layers=model.dims.n_layers,
        meta=meta,
    )


def _correct_nodes(model, task, method, nodes: list[Node]) -> None:
    """Node scores of the attention-corrected methods (through ``attribute``)."""
    from circuits.attribution import attribute

    writers = [n.port for n in nodes if n.port != LOGITS]
    scores = attribute(model, task, [w.writer_site for w in writers], method)
    by_site = {c.site: c.effect for c in scores.components}
    for node in nodes:
        if node.port != LOGITS:
            node.score = by_site[node.port.writer_site]
