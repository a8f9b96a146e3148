r"""One node of a circuit graph looked at closely: its attribution score, its direct logit
attribution and the logit lens at its layer.

- **Direct logit attribution** (DLA): the node's own output at the last token, through the
  final norm with its scale frozen at the clean run (``interventions.heads.frozen_norm``),
  dotted with ``unembed[answer] - unembed[wrong]``; mean over the task's clean prompts. It is
  the part of the logit difference the node writes straight into the logits, not through
  later layers. Heads use ``direct_logit_attribution``; every other node reads its own site
  (``mlp_out.L``, ``attn_out.L``, ``resid_pre.0`` for the embedding).
- **Logit lens**: the residual stream after the node's block (``resid_post`` of its layer;
  ``resid_pre.0`` for the embedding), through the final norm and the unembedding, at the last
  token of the first clean prompt: the top tokens and the answer's and wrong token's ranks.

Nodes are ports (:class:`~circuits.nodes.Port`) or their names (``head_out.1.2``, ``mlp_out.0``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from circuits.graph import CircuitGraph
from circuits.nodes import LOGITS, Port
from interventions.heads import direct_logit_attribution, frozen_norm
from probe.errors import GatescopeError
from probe.locate import resolve_path
from probe.model import Model
from probe.sites import Site
from probe.tasks import Task
from probe.tracer import Tracer


@dataclass
class NodeReport:
    node: str
    score: float  # the graph's attribution score
    dla: float  # mean direct logit attribution on logit(answer) - logit(wrong)
    lens_site: str  # the residual site the logit lens reads
    lens_top: list[tuple[str, float]]  # (token, probability), highest first
    answer_rank: int  # 0 = the lens's top token
    wrong_rank: int
    answer: str
    wrong: str

    def to_dict(self) -> dict:
        return asdict(self)


def _output_site(port: Port) -> tuple[Site | None, Site]:
    """(the site whose value is the node's own output, the residual site after its block)."""
    site = port.writer_site
    if site.kind == "resid_pre":
        return site, site
    if site.kind == "head_out":
        return None, Site("resid_post", site.layer)  # heads: direct_logit_attribution
    return site, Site("resid_post", site.layer)


@torch.no_grad()
def inspect_node(
    model: Model, task: Task, graph: CircuitGraph, name: str | Port, top: int = 5
) -> NodeReport:
    """The score, DLA and logit lens of node ``name`` of ``graph`` (built on ``task``)."""
    nodes = {n.port: n for n in graph.nodes}
    port = Port.parse(name)
    if port not in nodes or port == LOGITS or not port.is_writer:
        shown = ", ".join(sorted(str(p) for p in nodes if p != LOGITS)[:8])
        raise GatescopeError(f"node '{name}' is not in the circuit; its nodes include {shown}")
    node = nodes[port]
    own, lens = _output_site(port)
    batch = task.tokenize(model.tokenizer)
    last_layer = model.dims.n_layers - 1
    final = Site("resid_post", last_layer)
    sites = sorted({lens, final} | ({own} if own else set()))
    with Tracer(model, sites, positions=[-1]) as tr:
        model.forward(batch.clean_ids, batch.attention_mask)
    norm = resolve_path(model.hf, model.family.final_norm)
    unembed = resolve_path(model.hf, model.family.unembed).weight  # pyright: ignore[reportOptionalMemberAccess]  # (V, d_model)
    direction = unembed[batch.answer_ids] - unembed[batch.wrong_ids]  # pyright: ignore[reportIndexIssue]  # (N, d_model)
    if own is None:
        layer, head = node.layer, node.head
        dla = direct_logit_attribution(model, task).scores[layer][head]  # pyright: ignore[reportArgumentType, reportCallIssue]
    else:
        frozen = frozen_norm(norm, tr[final][:, 0])  # pyright: ignore[reportArgumentType]
        out = tr[own][:, 0].to(direction.dtype)
        dla = float((frozen(out) * direction).sum(-1).mean())
    x = tr[lens][:1, 0].to(unembed.dtype)  # pyright: ignore[reportArgumentType, reportCallIssue]  # first prompt, last token
    probs = torch.softmax(norm(x) @ unembed.T, -1)[0]  # pyright: ignore[reportOptionalCall]
    order = probs.argsort(descending=True)
    rank = {int(t): i for i, t in enumerate(order.tolist())}
    tok = model.tokenizer
    return NodeReport(
        node=str(port),
        score=float(node.score),
        dla=float(dla),
        lens_site=str(lens),
        lens_top=[(tok.decode([int(t)]), float(probs[t])) for t in order[:top]],
        answer_rank=rank[int(batch.answer_ids[0])],
        wrong_rank=rank[int(batch.wrong_ids[0])],
        answer=tok.decode([int(batch.answer_ids[0])]),
        wrong=tok.decode([int(batch.wrong_ids[0])]),
    )
