"""Node-level faithfulness of a circuit (a set of writer nodes, :mod:`circuits.nodes`).

``f = (m(circuit) - m(corrupt)) / (m(clean) - m(corrupt))``: the clean run with every writer
outside the circuit patched to its corrupt output (through
:func:`interventions.edits.intervene`); 1 for the full graph, 0 for the empty one.

Writers inside the circuit are not held at their clean values: they compute from what they
read. So a circuit without the embedding (``resid_pre.0``) has faithfulness exactly 0: the
embedding patched to the corrupt prompt's makes every later node read the corrupt input,
whatever else is kept (:func:`faithfulness_notes` says so wherever it is reported). Edge-level
scores (:mod:`circuits.mib`) patch along edges instead and do not have this cliff.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from circuits.nodes import EMBED, LOGITS, Port, graph_ports
from interventions.edits import Patch, intervene
from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.tasks import Task, TaskBatch, logit_diff
from probe.tracer import Tracer

log = logging.getLogger(__name__)

NO_EMBED_NOTE = (
    "the circuit leaves out the embedding (resid_pre.0): patched to the corrupt prompt's, it "
    "makes every later node read the corrupt input, so node-level faithfulness is 0 whatever "
    "else is kept; keep more nodes (the embedding) or use edge-level scores (--mib)"
)


def faithfulness_notes(keep: Iterable[Port | str]) -> list[str]:
    """What a reader of a faithfulness figure for circuit ``keep`` should know."""
    ports = {Port.parse(k) for k in keep}
    return [] if EMBED in ports else [NO_EMBED_NOTE]


class _Faithfulness:
    """The clean and corrupt metric and the corrupt writer outputs of one task, computed
    once; calling it with a set of nodes (ports or their names) gives that circuit's
    faithfulness."""

    @torch.no_grad()
    def __init__(self, model: Model, task: Task) -> None:
        self.model, self.batch = model, task.tokenize(model.tokenizer)
        b: TaskBatch = self.batch
        writers, _ = graph_ports(model)
        whole = sorted({Site(w.writer_site.kind, w.writer_site.layer) for w in writers})
        with Tracer(model, whole) as tr:
            self.m_corrupt = self._metric(b.corrupt_ids)
        self.m_clean = self._metric(b.clean_ids)
        if abs(self.m_clean - self.m_corrupt) < 1e-6:
            raise GatescopeError("clean and corrupt runs give the same logit difference")
        self.patches: dict[Port, Patch] = {}
        for w in writers:
            site = w.writer_site
            value = tr[Site(site.kind, site.layer)]
            if w.head is not None:
                value = value[:, :, w.head]  # (N, T, d_head)
            self.patches[w] = Patch(site, source=value)

    def _metric(self, ids) -> float:
        logits = self.model.forward(ids, self.batch.attention_mask)
        return float(logit_diff(logits, self.batch).float().mean())

    @torch.no_grad()
    def __call__(self, keep: Iterable[Port | str]) -> float:
        ports = {Port.parse(k) for k in keep}
        unknown = ports - set(self.patches) - {LOGITS}
        if unknown:
            raise GatescopeError(
                f"unknown circuit nodes {sorted(map(str, unknown))}; nodes are resid_pre.0, "
                "head_out.L.H, attn_out.L (mixers without heads) and mlp_out.L of this model"
            )
        edits = [p for port, p in self.patches.items() if port not in ports]
        with intervene(self.model, edits):
            m_circuit = self._metric(self.batch.clean_ids)
        return (m_circuit - self.m_corrupt) / (self.m_clean - self.m_corrupt)


def faithfulness(model: Model, task: Task, keep: Iterable[Port | str]) -> float:
    """``(m(circuit) - m(corrupt)) / (m(clean) - m(corrupt))``, writers outside ``keep``
    patched to their corrupt values in the clean run (a circuit without the embedding is 0:
    see the module docstring; a warning is logged)."""
    keep = list(keep)
    for note in faithfulness_notes(keep):
        log.warning(note)
    return _Faithfulness(model, task)(keep)


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


def faithfulness_curve(model: Model, task: Task, graph, sizes: list[int] | None = None):
    """Faithfulness of ``graph.prune(n)`` (a :class:`~circuits.graph.CircuitGraph`) for each
    size n (default: every size)."""
    total = len(graph.nodes) - 1
    sizes = list(range(total + 1)) if sizes is None else list(sizes)
    measure = _Faithfulness(model, task)
    values = [measure(graph.prune(n).ports()) for n in sizes]
    return FaithfulnessCurve(method=graph.method, task=graph.task, sizes=sizes, values=values)
