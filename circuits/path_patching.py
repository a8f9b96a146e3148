"""Path patching: the effect of a sender along one path into one receiver (Wang et al. 2022,
arXiv 2211.00593; Goldowsky-Dill et al. 2023, arXiv 2304.05969).

Senders are writers into the residual stream and receivers are readers of it
(:mod:`circuits.nodes`): ``resid_pre.0`` (the embedding), ``head_out.L.H``, ``attn_out.L``
(a mixer without heads) or ``mlp_out.L`` send; one head's query, key, value or gate input
(``head_out.L.H.q`` / ``.k`` / ``.v`` / ``.g``), a block's input (``mlp_out.L.in``,
``attn_out.L.in``) or the logits (``logits``) receive. Denoising, like activation patching:

1. The corrupt run is the base; the sender's write changes by ``D = write_clean -
   write_corrupt`` (a head's write through its slice of ``o_proj``).
2. The path sender -> receiver is the direct one through the skip stream: the receiver
   reads its input plus ``D`` (a head: on that channel only, its other inputs and every
   other head read the stream as is), through :class:`circuits.readers.ReaderEdits`, the
   mechanism edge patching uses. Everything downstream of the receiver runs freely.
3. Effect: ``(LD - LD_corrupt) / (LD_clean - LD_corrupt)``.

A head's q / k / v input is not a site, so this edit cannot be an
:class:`interventions.edits.Edit` (see :mod:`circuits.readers`). On a model whose layers
after the sender are linear apart from attention, where each receiving head takes the
sender's write through one channel only, a sender's path effects into every receiver sum
to its activation-patching effect (tested, with q / k / v paths non-zero).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from circuits.attention import attention
from circuits.graph import writer_delta
from circuits.nodes import Port, feeds, graph_ports
from circuits.readers import ReaderEdits
from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.tasks import Task, logit_diff
from probe.tracer import Tracer

CHANNELS = ("q", "k", "v", "g")


@dataclass
class PathPatchingResult:
    """``effects[sender][receiver]``: the normalised effect of each path (names as in
    :mod:`circuits.nodes`)."""

    model: str
    task: str
    clean_logit_diff: float
    corrupt_logit_diff: float
    effects: dict[str, dict[str, float]]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def top(self, sender: str, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` receivers of ``sender`` with the largest |effect|."""
        row = self.effects[str(Port.parse(sender))]
        return sorted(row.items(), key=lambda kv: -abs(kv[1]))[:n]


def _ports(model: Model, names, writers: bool) -> list[Port]:
    w, r = graph_ports(model)
    valid = w if writers else r
    what = "sender" if writers else "receiver"
    out = []
    for name in names:
        try:
            port = Port.parse(name)
        except GatescopeError as err:
            raise GatescopeError(f"{what} '{name}': {err}") from None
        if port not in valid:
            shown = ", ".join(str(p) for p in valid[:6])
            raise GatescopeError(
                f"{what} '{name}' is not a {'writer' if writers else 'reader'} of this model "
                f"({model.dims.n_layers} layers, {model.dims.n_heads} heads); e.g. {shown}"
            )
        out.append(port)
    return out


@torch.no_grad()
def path_patching(model: Model, task: Task, senders, receivers=None) -> PathPatchingResult:
    """The effect of every sender along its direct path into every receiver downstream of
    it (module docstring); pairs where the receiver is not downstream are left out.
    ``receivers`` default: every reader of the model."""
    batch = task.tokenize(model.tokenizer)
    send = _ports(model, senders, True)
    take = graph_ports(model)[1] if receivers is None else _ports(model, receivers, False)
    sites = sorted({Site(p.writer_site.kind, p.writer_site.layer) for p in send})
    with attention(model):
        runs = {}
        for name, ids in (("clean", batch.clean_ids), ("corrupt", batch.corrupt_ids)):
            with Tracer(model, sites) as tr:
                ld = float(logit_diff(model.forward(ids, batch.attention_mask), batch).mean())
            runs[name] = (ld, {s: tr[s].float() for s in sites})
    (clean_ld, clean), (corrupt_ld, corrupt) = runs["clean"], runs["corrupt"]
    span = clean_ld - corrupt_ld
    if abs(span) < 1e-6:
        raise GatescopeError("clean and corrupt runs give the same logit difference")
    current: dict = {}

    def shift(reader: Port, x: torch.Tensor):
        return ("sender", current["delta"]) if reader == current.get("receiver") else None

    edits = ReaderEdits(model, shift)
    effects: dict[str, dict[str, float]] = {}
    for s in send:
        current["delta"] = writer_delta(model, s, clean, corrupt)
        effects[str(s)] = {}
        for r in take:
            if not feeds(s, r):
                continue
            current["receiver"] = r
            with attention(model), edits.installed():
                logits = model.forward(batch.corrupt_ids, batch.attention_mask)
            ld = float(logit_diff(logits, batch).mean())
            effects[str(s)][str(r)] = (ld - corrupt_ld) / span
    return PathPatchingResult(
        model=model.name,
        task=task.name,
        clean_logit_diff=clean_ld,
        corrupt_logit_diff=corrupt_ld,
        effects=effects,
    )
