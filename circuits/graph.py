"""Circuit graphs: nodes, EAP-style edges, pruning and faithfulness.

Nodes are the embedding, every attention head and every MLP (each over all positions), and
the logits. Scores use one attribution method's coefficients (``atp``, ``relp``, ``ig``):

1. Node score: the attribution of the node's output (``resid_pre.0`` for the embedding,
   ``head_out`` per head, ``mlp_out`` per layer), normalised like activation patching.
2. Edge score u -> v (EAP, Syed et al. 2023): ``sum (u_clean - u_corrupt) . dm/d(input of v)``
   over prompts and positions, where u's output is taken in the residual stream (a head's
   output through its slice of ``o_proj``) and v's input is the input of the norm in front of
   v (the family's ``attn_input`` / ``mlp_input`` / final norm), so the gradient runs through v
   alone. Divided by ``LD_clean - LD_corrupt``.
3. ``prune(n)``: the top-n nodes by |score| (plus the logits) and the edges among them.
4. Faithfulness ``(m(circuit) - m(corrupt)) / (m(clean) - m(corrupt))``: the clean run with
   every node outside the circuit patched to its corrupt value (1 for the full graph, 0 for
   the empty one).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from circuits.attribution import _embedding_mix, attribute
from circuits.lrp import lrp_rules
from interventions.edits import Patch, intervene
from probe.errors import GatescopeError
from probe.hooks import locate
from probe.model import Model, resolve_path
from probe.sites import Site
from probe.tasks import Task, logit_diff
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
        return CircuitGraph(self.method, self.model, self.task, nodes, edges, None, self.n_layers)

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


def _o_proj_slices(model: Model, layer: int) -> torch.Tensor:
    """(H, d_model, d_head) the per-head slices of the output projection."""
    o_proj = locate(model, Site("head_out", layer))
    h, d = model.dims.n_heads, model.dims.d_head
    weight = o_proj.weight if o_proj.weight.shape[1] == h * d else o_proj.weight.T
    return weight.view(weight.shape[0], h, d).permute(1, 0, 2)


@torch.no_grad()
def _outputs(model: Model, ids, mask) -> dict[str, torch.Tensor]:
    """Every node's output in the residual stream, (N, T, d_model)."""
    n = model.dims.n_layers
    with Tracer(model, ["resid_pre.0", "head_out.*", "mlp_out.*"]) as tr:
        model.forward(ids, mask)
    out = {"embed": tr[Site("resid_pre", 0)].float()}
    for layer in range(n):
        z = tr[Site("head_out", layer)].float()  # (N, T, H, d)
        slices = _o_proj_slices(model, layer).float()  # (H, d_model, d)
        for h in range(model.dims.n_heads):
            out[f"head.{layer}.{h}"] = z[:, :, h] @ slices[h].T
        out[f"mlp.{layer}"] = tr[Site("mlp_out", layer)].float()
    return out


def _input_gradients(model: Model, batch, method: str, gate_rule: str, steps: int):
    """dm/d(input of each block) at the corrupt point, keyed "attn.L", "mlp.L", "logits"."""
    fam, n = model.family, model.dims.n_layers
    modules = {f"attn.{i}": resolve_path(model.layer(i), fam.attn_input) for i in range(n)}
    modules.update({f"mlp.{i}": resolve_path(model.layer(i), fam.mlp_input) for i in range(n)})
    modules["logits"] = resolve_path(model.hf, fam.final_norm)
    runs = steps if method == "ig" else 1
    total: dict[str, torch.Tensor] = {}
    for k in range(runs):
        zeros, handles = {}, []

        def adder(name, zeros=zeros):
            def pre(module, args):
                z = torch.zeros_like(args[0], requires_grad=True)
                zeros[name] = z
                return (args[0] + z, *args[1:])

            return pre

        try:
            handles = [m.register_forward_pre_hook(adder(k_)) for k_, m in modules.items()]
            if method == "ig":
                handles.append(_embedding_mix(model, batch.clean_ids, batch.corrupt_ids, k / runs))
            rules = lrp_rules(model, gate_rule) if method == "relp" else nullcontext()
            with torch.enable_grad(), rules:
                logits = model.forward(batch.corrupt_ids, batch.attention_mask)
                logit_diff(logits, batch).mean().backward()
        finally:
            for h in handles:
                h.remove()
        for name, z in zeros.items():
            total[name] = total.get(name, 0) + z.grad.detach().float() / runs
    return total


def build_graph(
    model: Model, task: Task, method: str = "relp", gate_rule: str = "half", steps: int = 5
) -> CircuitGraph:
    """The full graph with node and edge scores from ``method``."""
    n = model.dims.n_layers
    nodes_attr = attribute(
        model, task, "resid_pre.0,head_out.*,mlp_out.*", method, gate_rule=gate_rule, steps=steps
    )
    nodes = [Node("logits", n, None, 1.0)]
    for c in nodes_attr.components:
        if c.kind == "resid_pre":
            nodes.append(Node("embed", -1, None, c.effect))
        elif c.kind == "head_out":
            nodes.append(Node(f"head.{c.layer}.{c.head}", c.layer, c.head, c.effect))
        else:
            nodes.append(Node(f"mlp.{c.layer}", c.layer, None, c.effect))
    batch = task.tokenize(model.tokenizer)
    clean = _outputs(model, batch.clean_ids, batch.attention_mask)
    corrupt = _outputs(model, batch.corrupt_ids, batch.attention_mask)
    grads = _input_gradients(model, batch, method, gate_rule, steps)
    span = nodes_attr.clean_logit_diff - nodes_attr.corrupt_logit_diff
    edges = []
    for node in nodes:
        if node.name == "logits":
            continue
        delta = clean[node.name] - corrupt[node.name]
        for target, grad in grads.items():
            t_layer = n if target == "logits" else int(target.split(".")[1])
            after = t_layer > node.layer or (
                t_layer == node.layer and target.startswith("mlp") and node.name.startswith("head")
            )
            if after:
                edges.append(Edge(node.name, target, float((delta * grad).sum()) / span))
    graph = CircuitGraph(method, model.name, task.name, nodes, edges, None, n)
    graph.meta = {
        "clean_logit_diff": nodes_attr.clean_logit_diff,
        "corrupt_logit_diff": nodes_attr.corrupt_logit_diff,
    }
    return graph


@torch.no_grad()
def faithfulness(model: Model, task: Task, keep: set[str]) -> float:
    """``(m(circuit) - m(corrupt)) / (m(clean) - m(corrupt))``, nodes outside ``keep``
    patched to their corrupt values in the clean run."""
    batch = task.tokenize(model.tokenizer)
    mask = batch.attention_mask
    with Tracer(model, ["resid_pre.0", "head_out.*", "mlp_out.*"]) as corrupt:
        m_corrupt = float(logit_diff(model.forward(batch.corrupt_ids, mask), batch).mean())
    m_clean = float(logit_diff(model.forward(batch.clean_ids, mask), batch).mean())
    edits = []
    if "embed" not in keep:
        edits.append(Patch("resid_pre.0", source=corrupt["resid_pre.0"]))
    for layer in range(model.dims.n_layers):
        z = corrupt[Site("head_out", layer)]
        for h in range(model.dims.n_heads):
            if f"head.{layer}.{h}" not in keep:
                edits.append(Patch(Site("head_out", layer, h), source=z[:, :, h]))
        if f"mlp.{layer}" not in keep:
            edits.append(Patch(Site("mlp_out", layer), source=corrupt[Site("mlp_out", layer)]))
    with intervene(model, edits):
        m_circuit = float(logit_diff(model.forward(batch.clean_ids, mask), batch).mean())
    return (m_circuit - m_corrupt) / (m_clean - m_corrupt)


def faithfulness_curve(
    model: Model, task: Task, graph: CircuitGraph, sizes: list[int] | None = None
) -> list[tuple[int, float]]:
    """Faithfulness of ``graph.prune(n)`` for each size n (default: every size)."""
    total = len(graph.nodes) - 1
    sizes = list(range(total + 1)) if sizes is None else sizes
    return [(n, faithfulness(model, task, graph.prune(n).node_names())) for n in sizes]
