"""Circuit graphs: nodes, EAP-style edges, pruning and faithfulness.

Nodes are the embedding, every attention head and every MLP (each over all positions), and
the logits. Scores use one method of :mod:`circuits.methods` (``eap`` = ``atp``, ``eap-ig``,
``relp``, ``ig``, ...; see :mod:`circuits.attribution`), all from one gradient pass (two
forward passes and one backward pass for ``atp`` / ``relp``). Edge-level circuit scores
(MIB's CPR / CMD) are in :mod:`circuits.mib`; path patching in :mod:`circuits.path_patching`.

1. Node score: the attribution of the node's output (``resid_pre.0`` for the embedding,
   ``head_out`` per head, ``mlp_out`` per layer), normalised like activation patching.
2. Edge score u -> v (EAP, Syed et al. 2023, arXiv 2310.10348):
   ``sum (u_clean - u_corrupt) . dm/d(input of v)`` over prompts and positions, divided by
   ``LD_clean - LD_corrupt``. u's output is taken in the residual stream (a head's output
   through its slice of ``o_proj``); the gradient into block v alone is the difference of
   the residual-stream gradients around it: ``g(resid_pre.L) - g(resid_mid.L)`` for the
   attention of layer L, ``g(resid_mid.L) - g(resid_post.L)`` for its MLP, and
   ``g(resid_post.last)`` for the logits (the skip path carries the rest). Hence a node's
   score is the sum of its outgoing edges' scores.
3. ``prune(n)``: the top-n nodes by |score| (plus the logits) and the edges among them.
4. Faithfulness ``(m(circuit) - m(corrupt)) / (m(clean) - m(corrupt))``: the clean run with
   every node outside the circuit patched to its corrupt value (through
   :func:`interventions.edits.intervene`); 1 for the full graph, 0 for the empty one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import torch

from circuits.attribution import EMBED, gradient_pass
from circuits.methods import AtPStar, Method, RelPStar, make
from circuits.projections import o_proj_slices
from interventions.edits import Patch, intervene
from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.tasks import Task, TaskBatch, logit_diff
from probe.tracer import Tracer


@dataclass
class Node:
    name: str  # "embed", "head.L.H", "mlp.L", "logits"
    layer: int  # -1 for the embedding, n_layers for the logits
    head: int | None
    score: float


@dataclass
class Edge:
    source: str
    target: str  # "attn.L", "mlp.L" or "logits" (the block input the source feeds)
    score: float


@dataclass
class CircuitGraph:
    """Nodes and edges with scores; ``prune`` keeps the strongest, ``faithfulness`` measures."""

    method: str
    model: str
    task: str
    nodes: list[Node]
    edges: list[Edge]
    faithfulness: float | None = None
    n_layers: int = 0
    meta: dict = field(default_factory=dict)

    def prune(self, top_n: int) -> CircuitGraph:
        scored = [n for n in self.nodes if n.name != "logits"]
        if not 0 <= top_n <= len(scored):
            raise GatescopeError(f"top-n {top_n} is outside 0-{len(scored)} (the graph's nodes)")
        keep = sorted(scored, key=lambda n: -abs(n.score))[:top_n]
        names = {n.name for n in keep} | {"logits"}
        blocks = {_block_of(n) for n in keep} | {"logits"}
        edges = [e for e in self.edges if e.source in names and e.target in blocks]
        nodes = [n for n in self.nodes if n.name in names]
        return replace(self, nodes=nodes, edges=edges, faithfulness=None, meta=dict(self.meta))

    def node_names(self) -> set[str]:
        return {n.name for n in self.nodes}

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def figure(self):
        """Layers as columns: embedding, then per layer its heads and its MLP, then logits."""
        import plotly.graph_objects as go

        pos = {}
        for n in self.nodes:
            x = (
                -1
                if n.name == "embed"
                else self.n_layers
                if n.name == "logits"
                else (n.layer + (0.5 if n.name.startswith("mlp") else 0.0))
            )
            y = n.head if n.head is not None else -1
            pos[n.name] = (x, y)
        block_pos = {f"attn.{i}": (i - 0.1, 1.5) for i in range(self.n_layers)}
        block_pos.update({f"mlp.{i}": (i + 0.5, -1) for i in range(self.n_layers)})
        block_pos["logits"] = (self.n_layers, -1)
        fig = go.Figure()
        top = max((abs(e.score) for e in self.edges), default=1.0) or 1.0
        for e in self.edges:
            (x0, y0), (x1, y1) = pos[e.source], block_pos[e.target]
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
        fig.add_trace(
            go.Scatter(
                x=[pos[n.name][0] for n in self.nodes],
                y=[pos[n.name][1] for n in self.nodes],
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
        fig.update_layout(title=title, xaxis_title="layer", yaxis_title="head (-1: embedding/MLP)")
        return fig


def _block_of(node: Node) -> str:
    """The block a node belongs to (edges target blocks)."""
    if node.name.startswith("head"):
        return f"attn.{node.layer}"
    if node.name.startswith("mlp"):
        return f"mlp.{node.layer}"
    return node.name


def _node_deltas(model: Model, clean: dict, corrupt: dict):
    """Yield (node name, layer, head, clean - corrupt output in the residual stream)."""
    yield "embed", -1, None, clean[EMBED] - corrupt[EMBED]
    for layer in range(model.dims.n_layers):
        site = Site("head_out", layer)
        dz = clean[site] - corrupt[site]  # (N, T, H, d_head)
        slices = o_proj_slices(model, layer)  # (H, d_model, d_head)
        for h in range(model.dims.n_heads):
            yield f"head.{layer}.{h}", layer, h, dz[:, :, h] @ slices[h].T  # (N, T, d_model)
        mlp = Site("mlp_out", layer)
        yield f"mlp.{layer}", layer, None, clean[mlp] - corrupt[mlp]


def _block_gradients(model: Model, grads: dict) -> dict[str, tuple[int, torch.Tensor]]:
    """Block name -> (its layer, dm/d(its input) through the block alone)."""
    n = model.dims.n_layers
    out = {}
    for layer in range(n):
        pre, mid, post = (Site(k, layer) for k in ("resid_pre", "resid_mid", "resid_post"))
        out[f"attn.{layer}"] = (layer, grads[pre] - grads[mid])
        out[f"mlp.{layer}"] = (layer, grads[mid] - grads[post])
    out["logits"] = (n, grads[Site("resid_post", n - 1)])
    return out


def _feeds(name: str, layer: int, block: str, block_layer: int) -> bool:
    """Whether node ``name`` (on ``layer``) writes to the residual stream before ``block``."""
    if block_layer != layer:
        return block_layer > layer
    return block.startswith("mlp") and name.startswith("head")


#: The default method of :func:`build_graph` (and so of ``gatescope circuit``): IG with 2 steps
#: (3 forward, 2 backward passes). In the agreement study (bench/relp_rules.py, IOI, 200
#: prompts) it had the highest Pearson r of the fast methods on resid_pre and mlp_out of both
#: reference models and r >= 0.976 on head_out; it missed r >= 0.95 on reference-plain's
#: resid_pre (0.949) and attn_out (0.943, where AtP reached 0.992).
DEFAULT_METHOD, DEFAULT_STEPS = "ig", 2


def build_graph(
    model: Model, task: Task, method: str | Method | None = None, **options
) -> CircuitGraph:
    """The full graph with node and edge scores from ``method`` (a name or object of
    :mod:`circuits.methods`, ``options`` its fields; module docstring; None:
    :data:`DEFAULT_METHOD` with :data:`DEFAULT_STEPS` steps unless ``steps`` is given).
    ``eap`` / ``eap-ig`` are the edge methods by name (AtP's gradient; EAP-IG's interpolation
    k = 1 .. m); ``atp*`` / ``relp*`` add their attention corrections to the node scores only
    (edges keep the uncorrected gradient, so their sums are the uncorrected node scores)."""
    if method is None:
        method = DEFAULT_METHOD
        if options.get("steps") is None:
            options = {**options, "steps": DEFAULT_STEPS}
    method = make(method, **options)
    n = model.dims.n_layers
    sites = [EMBED]
    for layer in range(n):
        sites += [Site(k, layer) for k in ("resid_pre", "resid_mid", "resid_post")]
        sites += [Site("head_out", layer), Site("mlp_out", layer)]
    batch = task.tokenize(model.tokenizer)
    run = gradient_pass(model, sorted(set(sites)), batch, method)
    span = run.clean_logit_diff - run.corrupt_logit_diff
    if abs(span) < 1e-6:
        raise GatescopeError("clean and corrupt runs give the same logit difference")
    blocks = _block_gradients(model, run.grads)
    nodes, edges = [Node("logits", n, None, 1.0)], []
    node_grad = {"embed": run.grads[EMBED]}
    for layer in range(n):
        node_grad[f"mlp.{layer}"] = run.grads[Site("mlp_out", layer)]
    for name, layer, head, delta in _node_deltas(model, run.clean, run.corrupt):
        if head is None:
            score = float((delta * node_grad[name]).sum()) / span
        else:
            site = Site("head_out", layer)
            dz = (run.clean[site] - run.corrupt[site])[:, :, head]  # (N, T, d_head)
            score = float((dz * run.grads[site][:, :, head]).sum()) / span
        nodes.append(Node(name, layer, head, score))
        for block, (block_layer, grad) in blocks.items():
            if _feeds(name, layer, block, block_layer):
                edges.append(Edge(name, block, float((delta * grad).sum()) / span))
    if isinstance(method, AtPStar | RelPStar):
        _correct_nodes(model, task, method, nodes, span)
    meta = {
        "clean_logit_diff": run.clean_logit_diff,
        "corrupt_logit_diff": run.corrupt_logit_diff,
        "method": method.to_dict(),
    }
    return CircuitGraph(method.name, model.name, task.name, nodes, edges, None, n, meta)


def _correct_nodes(model, task, method, nodes: list[Node], span: float) -> None:
    """Node scores of the attention-corrected methods (heads and MLPs via ``attribute``)."""
    from circuits.attribution import attribute

    scores = attribute(model, task, "resid_pre.0,head_out.*,mlp_out.*", method)
    by_name = {}
    for c in scores.components:
        key = (
            "embed"
            if c.kind == "resid_pre"
            else (f"head.{c.layer}.{c.head}" if c.kind == "head_out" else f"mlp.{c.layer}")
        )
        by_name[key] = c.effect
    for node in nodes:
        if node.name in by_name:
            node.score = by_name[node.name]


class _Faithfulness:
    """The clean and corrupt metric and the corrupt node outputs of one task, computed once;
    calling it with a set of node names gives that circuit's faithfulness."""

    @torch.no_grad()
    def __init__(self, model: Model, task: Task) -> None:
        self.model, self.batch = model, task.tokenize(model.tokenizer)
        b: TaskBatch = self.batch
        with Tracer(model, ["resid_pre.0", "head_out.*", "mlp_out.*"]) as tr:
            self.m_corrupt = self._metric(b.corrupt_ids)
        self.m_clean = self._metric(b.clean_ids)
        if abs(self.m_clean - self.m_corrupt) < 1e-6:
            raise GatescopeError("clean and corrupt runs give the same logit difference")
        self.patches = {"embed": [Patch(EMBED, source=tr[EMBED])]}
        for layer in range(model.dims.n_layers):
            z = tr[Site("head_out", layer)]  # (N, T, H, d_head)
            for h in range(model.dims.n_heads):
                self.patches[f"head.{layer}.{h}"] = [
                    Patch(Site("head_out", layer, h), source=z[:, :, h])
                ]
            mlp = Site("mlp_out", layer)
            self.patches[f"mlp.{layer}"] = [Patch(mlp, source=tr[mlp])]

    def _metric(self, ids) -> float:
        logits = self.model.forward(ids, self.batch.attention_mask)
        return float(logit_diff(logits, self.batch).float().mean())

    @torch.no_grad()
    def __call__(self, keep: set[str]) -> float:
        unknown = keep - set(self.patches) - {"logits"}
        if unknown:
            raise GatescopeError(
                f"unknown circuit nodes {sorted(unknown)}; nodes are embed, head.L.H, mlp.L"
            )
        edits = [e for name, es in self.patches.items() if name not in keep for e in es]
        with intervene(self.model, edits):
            m_circuit = self._metric(self.batch.clean_ids)
        return (m_circuit - self.m_corrupt) / (self.m_clean - self.m_corrupt)


def faithfulness(model: Model, task: Task, keep: set[str]) -> float:
    """``(m(circuit) - m(corrupt)) / (m(clean) - m(corrupt))``, nodes outside ``keep``
    patched to their corrupt values in the clean run."""
    return _Faithfulness(model, task)(set(keep))


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-n circuit for each size n (``sizes[i]`` -> ``values[i]``)."""

    method: str
    task: str
    sizes: list[int]
    values: list[float]

    def smallest(self, threshold: float = 0.8) -> int | None:
        """The smallest size whose faithfulness reaches ``threshold`` (None if none does)."""
        return next(
            (n for n, f in zip(self.sizes, self.values, strict=True) if f >= threshold), None
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(x=self.sizes, y=self.values, mode="lines+markers"))
        fig.add_hline(y=0.8, line_dash="dot", line_color="gray")
        fig.update_layout(
            title=f"faithfulness vs circuit size ({self.method}, {self.task})",
            xaxis_title="nodes kept (top-n by |score|)",
            yaxis_title="faithfulness",
        )
        return fig


def faithfulness_curve(
    model: Model, task: Task, graph: CircuitGraph, sizes: list[int] | None = None
) -> FaithfulnessCurve:
    """Faithfulness of ``graph.prune(n)`` for each size n (default: every size)."""
    total = len(graph.nodes) - 1
    sizes = list(range(total + 1)) if sizes is None else list(sizes)
    measure = _Faithfulness(model, task)
    values = [measure(graph.prune(n).node_names()) for n in sizes]
    return FaithfulnessCurve(graph.method, graph.task, sizes, values)
