"""Addresses of circuit-graph nodes and edge ends: a :class:`~probe.sites.Site` plus, for the
input side, a channel, and an optional token position.

A **writer** (a node, the source of edges) is one component's output into the residual
stream, named by the site of that output:

- ``resid_pre.0``: the embedding;
- ``head_out.L.H``: head H of an attention layer (after its output gate), written through
  its slice of ``o_proj``;
- ``attn_out.L``: the whole token mixer of a layer without heads (Gated-DeltaNet, a gated
  short convolution);
- ``mlp_out.L``: the MLP of layer L, dense or MoE (routed experts plus the gated shared
  expert: the gates act inside what the writer writes).

A **reader** (the target of edges) is an input that reads the residual stream:

- ``head_out.L.H.q`` / ``.k`` / ``.v``: head H's query, key and value input; ``.g`` its output
  gate's input (gated attention; the gate reads the residual stream like q / k / v);
- ``attn_out.L.in``: the whole mixer's input on a layer without heads;
- ``mlp_out.L.in``: the MLP's input;
- ``logits``: the final norm's input.

A reader belongs to the writer it feeds (:meth:`Port.owner`): ``head_out.L.H.q`` to
``head_out.L.H``, ``mlp_out.L.in`` to ``mlp_out.L``. ``str(port)`` is the readable name used in
JSON; :meth:`Port.parse` reads it back. A position, where given, is written ``@P``.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site

#: Per-head input channels of an attention head (``g``: the output gate's input).
CHANNELS = ("q", "k", "v", "g")
#: The channel of a whole block's input (a mixer without heads, an MLP).
BLOCK_INPUT = "in"
WRITER_KINDS = ("resid_pre", "head_out", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Port:
    """One node or edge end of a circuit graph (module docstring).

    Attributes:
        site: the writer's output site (for a reader: the site of the writer it feeds);
            ``None`` for the logits.
        channel: ``None`` for a writer; ``q`` / ``k`` / ``v`` / ``g`` for a head's input,
            ``in`` for a whole block's input.
        position: a token position, or ``None`` for all positions.
    """

    site: Site | None = None
    channel: str | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        s, c = self.site, self.channel
        if s is None:
            if c is not None:
                raise GatescopeError(f"the logits take no channel, got '{c}'")
        elif s.kind not in WRITER_KINDS or (s.kind == "resid_pre" and s.layer != 0):
            raise GatescopeError(
                f"'{s}' is not a circuit node; nodes are resid_pre.0 (the embedding), "
                "head_out.L.H, attn_out.L, mlp_out.L and logits"
            )
        elif s.kind == "head_out" and s.head is None:
            raise GatescopeError(f"'{s}': a head node names its head (head_out.L.H)")
        elif c in CHANNELS and s.kind != "head_out":
            raise GatescopeError(f"'{s}.{c}': only heads (head_out.L.H) read through q/k/v/g")
        elif c == BLOCK_INPUT and s.kind not in ("attn_out", "mlp_out"):
            raise GatescopeError(f"'{s}.in': only attn_out.L and mlp_out.L have a block input")
        elif c is not None and c not in (*CHANNELS, BLOCK_INPUT):
            raise GatescopeError(
                f"channel '{c}' is unknown; channels are {', '.join(CHANNELS)} (heads) and "
                f"{BLOCK_INPUT} (blocks)"
            )
        if s is not None and s.kind == "resid_pre" and c is not None:
            raise GatescopeError("the embedding (resid_pre.0) is a writer only")
        if self.position is not None and (not isinstance(self.position, int) or self.position < 0):
            raise GatescopeError(f"position {self.position!r} must be an integer >= 0")

    def __str__(self) -> str:
        text = "logits" if self.site is None else str(self.site)
        if self.channel is not None:
            text += f".{self.channel}"
        return text if self.position is None else f"{text}@{self.position}"

    @classmethod
    def parse(cls, text: str | Port | Site) -> Port:
        """``head_out.1.2``, ``head_out.1.2.q``, ``mlp_out.0.in``, ``logits``, ``...@3``."""
        if isinstance(text, Port):
            return text
        if isinstance(text, Site):
            return cls(text)
        body, _, pos = text.strip().partition("@")
        if pos and not pos.isdigit():
            raise GatescopeError(f"node '{text}': position '{pos}' is not a number")
        position = int(pos) if pos else None
        if body == "logits":
            return cls(None, None, position)
        head, _, last = body.rpartition(".")
        channel = last if last in (*CHANNELS, BLOCK_INPUT) and head else None
        return cls(Site.parse(head if channel else body), channel, position)

    @property
    def is_writer(self) -> bool:
        return self.site is not None and self.channel is None

    @property
    def writer_site(self) -> Site:
        """``site`` of a port that is not the logits: a writer's output site, or the site of
        the writer a reader feeds (the logits have none: an error)."""
        if self.site is None:
            raise GatescopeError("the logits are no writer and feed none; they have no site")
        return self.site

    @property
    def layer(self) -> int:
        """The layer (-1 for the embedding; a large number for the logits)."""
        if self.site is None:
            return 1 << 30
        return -1 if self.site.kind == "resid_pre" else self.site.layer

    @property
    def head(self) -> int | None:
        return None if self.site is None else self.site.head

    def owner(self) -> Port:
        """The writer node a reader belongs to (a writer is its own owner)."""
        return Port(self.site, None, self.position)

    def order(self) -> tuple[int, int]:
        """Place in the forward pass: (layer, 0) for a head / mixer and its inputs, (layer, 1)
        for an MLP and its input; the embedding comes first and the logits last."""
        if self.site is None:
            return (1 << 30, 0)
        if self.site.kind == "resid_pre":
            return (-1, 1)
        return (self.site.layer, 1 if self.site.kind == "mlp_out" else 0)


LOGITS = Port()
EMBED = Port(Site("resid_pre", 0))


def feeds(writer: Port, reader: Port) -> bool:
    """Whether ``writer`` writes into the residual stream before ``reader`` reads it."""
    return writer.order() < reader.order()


def _layer_nodes(model: Model, layer: int) -> tuple[list[Port], list[Port]]:
    writers, readers = [], []
    if model.has_site(Site("head_out", layer)):
        gated = model.has_site(Site("attn_gate_logit", layer))
        channels = ("q", "k", "v", "g") if gated else ("q", "k", "v")
        for h in range(model.dims.n_heads):
            port = Port(Site("head_out", layer, h))
            writers.append(port)
            readers += [Port(port.site, c) for c in channels]
    elif model.has_site(Site("attn_out", layer)):
        writers.append(Port(Site("attn_out", layer)))
        readers.append(Port(Site("attn_out", layer), BLOCK_INPUT))
    if model.has_site(Site("mlp_out", layer)):
        writers.append(Port(Site("mlp_out", layer)))
        readers.append(Port(Site("mlp_out", layer), BLOCK_INPUT))
    return writers, readers


def graph_ports(model: Model) -> tuple[list[Port], list[Port]]:
    """Every writer and every reader of ``model``'s circuit graph, in forward order."""
    writers, readers = [EMBED], []
    for layer in range(model.dims.n_layers):
        w, r = _layer_nodes(model, layer)
        writers += w
        readers += r
    return writers, [*readers, LOGITS]


def edge_pairs(model: Model) -> list[tuple[Port, Port]]:
    """Every (writer, reader) pair with the writer upstream of the reader."""
    writers, readers = graph_ports(model)
    return [(w, r) for r in readers for w in writers if feeds(w, r)]
