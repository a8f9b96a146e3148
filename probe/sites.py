"""Sites: the one vocabulary for every place gatescope reads or writes.

A :class:`Site` is ``(kind, layer, head=None)``. Its text form is ``kind.layer`` or
``kind.layer.head``; patterns accept ``*`` and ranges (``resid_post.*``, ``mlp_gate.0-2``,
``head_out.3.*``) and expand against a model's layer and head counts.

Which module and which slice a site lives in is known only to the family file of the
architecture (``probe/families``); nothing here knows module paths.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from probe.errors import GatescopeError

#: Every site kind, with its shape per token and meaning (DESIGN.md's table).
SITE_KINDS: dict[str, str] = {
    "resid_pre": "d_model: residual stream before the layer",
    "resid_mid": "d_model: residual stream between attention and MLP",
    "resid_post": "d_model: residual stream after the layer",
    "attn_out": "d_model: what the attention block adds to the residual stream",
    "mlp_out": "d_model: what the MLP block adds to the residual stream",
    "head_out": "n_heads x d_head: per-head attention output after the output gate",
    "attn_gate_logit": "n_heads x g: attention output-gate pre-activation",
    "attn_gate": "n_heads x g: attention output-gate value, sigmoid(attn_gate_logit)",
    "attn_pattern": "n_heads x seq: attention probabilities (needs eager attention)",
    "mlp_gate_pre": "d_mlp: GLU gate branch before its activation (gate_proj output)",
    "mlp_gate": "d_mlp: activated GLU gate, act(mlp_gate_pre)",
    "mlp_up": "d_mlp: GLU linear branch (up_proj output)",
    "mlp_hidden": "d_mlp: input of down_proj (act(gate) * up for a GLU)",
    "delta_beta": "n_v_heads: Gated-DeltaNet write strength sigmoid(b)",
    "delta_decay": "n_v_heads: Gated-DeltaNet log decay g <= 0 (exp(g) = per-token retention)",
    "delta_gate_pre": "n_v_heads x d_v: Gated-DeltaNet output gate z before its activation",
    "delta_gate": "n_v_heads x d_v: Gated-DeltaNet output gate after its activation, silu(z)",
    "delta_out": "n_v_heads x d_v: Gated-DeltaNet recurrence output before the gated norm",
    "router_logit": "n_experts: MoE router logits",
    "router_prob": "n_experts: MoE router probabilities (the family's softmax or sigmoid)",
    "router_weight": "n_experts: expert weights the layer uses (top-k, 0 for experts not chosen)",
    "shared_gate": "1: sigmoid gate of the shared expert",
    "conv_gate": "d_model: input gate of a gated short convolution (B in C * conv(B * x))",
    "conv_out_gate": "d_model: output gate of a gated short convolution (C in C * conv(B * x))",
}

#: Kinds whose per-token value is split into heads (a site of these kinds may name a head,
#: or an expert for the router kinds).
HEADED_KINDS = frozenset(
    {
        "head_out",
        "attn_gate_logit",
        "attn_gate",
        "attn_pattern",
        "delta_beta",
        "delta_decay",
        "delta_gate_pre",
        "delta_gate",
        "delta_out",
        "router_logit",
        "router_prob",
        "router_weight",
    }
)

#: The gate kinds, by gate type (what ``gatescope gates`` reports on).
GATE_KINDS: dict[str, tuple[str, ...]] = {
    "attention": ("attn_gate_logit", "attn_gate"),
    "glu": ("mlp_gate_pre", "mlp_gate"),
    "deltanet": ("delta_beta", "delta_decay", "delta_gate_pre", "delta_gate"),
    "router": ("router_logit", "router_prob", "router_weight"),
    "shared_expert": ("shared_gate",),
    "conv": ("conv_gate", "conv_out_gate"),
}


@dataclass(frozen=True, order=True)
class Site:
    """One place in a model: ``kind`` at ``layer`` (and ``head`` for headed kinds).

    Attributes:
        kind: one of :data:`SITE_KINDS`.
        layer: the decoder layer index, from 0.
        head: the attention head, for kinds in :data:`HEADED_KINDS`; ``None`` means all heads.
    """

    kind: str
    layer: int
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise GatescopeError(_unknown_kind_message(self.kind, SITE_KINDS))
        if not isinstance(self.layer, int) or self.layer < 0:
            raise GatescopeError(
                f"site {self.kind}: layer must be an integer >= 0, got {self.layer!r}"
            )
        if self.head is not None:
            if self.kind not in HEADED_KINDS:
                raise GatescopeError(
                    f"site '{self.kind}.{self.layer}.{self.head}': {self.kind} has no heads; "
                    f"only {', '.join(sorted(HEADED_KINDS))} take a head index"
                )
            if not isinstance(self.head, int) or self.head < 0:
                raise GatescopeError(f"site {self.kind}.{self.layer}: bad head {self.head!r}")

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}" + ("" if self.head is None else f".{self.head}")

    @classmethod
    def parse(cls, text: str) -> Site:
        """Parse one concrete site such as ``attn_gate.3`` or ``head_out.3.5``."""
        sites = parse_sites(text)
        kind, layer, head = sites[0]
        if len(sites) != 1 or not isinstance(layer, int) or not isinstance(head, int | str):
            raise GatescopeError(
                f"'{text}' is a pattern, not one site; use expand_sites() for patterns"
            )
        return cls(kind, layer, None if head == "all" else head)

    def with_head(self, head: int | None) -> Site:
        return Site(self.kind, self.layer, head)


Part = int | tuple[int, int] | None  # int, (lo, hi) inclusive range, or None = "*"


def _parse_part(text: str, what: str, full: str) -> Part:
    if text == "*":
        return None
    if "-" in text:
        lo, _, hi = text.partition("-")
        if lo.isdigit() and hi.isdigit() and int(lo) <= int(hi):
            return (int(lo), int(hi))
    elif text.isdigit():
        return int(text)
    raise GatescopeError(
        f"site '{full}': bad {what} '{text}'; expected a number, a range like 0-2, or *"
    )


def parse_sites(text: str | Sequence[str]) -> list[tuple[str, Part, Part]]:
    """Parse site patterns (comma-separated text or a list) into (kind, layer, head) parts."""
    items = [t for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t.strip() for t in items if t and t.strip()]
    if not items:
        raise GatescopeError(
            "no sites given; write them like 'attn_gate.3', 'head_out.3.5' or 'resid_post.*'"
        )
    out = []
    for item in items:
        pieces = item.split(".")
        kind = pieces[0]
        if kind not in SITE_KINDS:
            raise GatescopeError(_unknown_kind_message(kind, SITE_KINDS, item))
        if len(pieces) not in (2, 3):
            raise GatescopeError(
                f"site '{item}': expected kind.layer or kind.layer.head, e.g. '{kind}.0'"
            )
        layer = _parse_part(pieces[1], "layer", item)
        head = _parse_part(pieces[2], "head", item) if len(pieces) == 3 else None
        if len(pieces) == 3 and kind not in HEADED_KINDS:
            raise GatescopeError(f"site '{item}': {kind} has no heads; drop the head index")
        out.append((kind, layer, head if len(pieces) == 3 else "all"))
    return out


def _expand(part: Part, n: int, what: str, item: str) -> list[int]:
    if part is None:
        return list(range(n))
    lo, hi = (part, part) if isinstance(part, int) else part
    if hi >= n:
        raise GatescopeError(
            f"site '{item}': {what} {hi} is out of range; this model has {what}s 0-{n - 1}"
        )
    return list(range(lo, hi + 1))


def expand_sites(
    text: str | Site | Iterable[str | Site],
    n_layers: int,
    n_heads: int | Callable[[str], int],
) -> list[Site]:
    """Expand patterns into concrete sites, checking layer and head ranges.

    ``head_out.3`` (no head) stays one site covering all heads; ``head_out.3.*`` expands to
    one site per head. ``n_heads`` is a count, or a function of the kind (value heads for
    ``delta_*``, experts for ``router_*``).
    """
    heads_of = n_heads if callable(n_heads) else (lambda _kind: n_heads)
    if isinstance(text, Site):
        text = [text]
    if isinstance(text, str):
        text = [text]
    sites: list[Site] = []
    for entry in text:
        if isinstance(entry, Site):
            _expand(entry.layer, n_layers, "layer", str(entry))
            if entry.head is not None:
                _expand(entry.head, heads_of(entry.kind), "head", str(entry))
            sites.append(entry)
            continue
        for kind, layer, head in parse_sites(entry):
            item = entry
            for lay in _expand(layer, n_layers, "layer", item):
                if head == "all":
                    sites.append(Site(kind, lay))
                else:
                    heads = _expand(head, heads_of(kind), "head", item)
                    sites.extend(Site(kind, lay, h) for h in heads)
    return list(dict.fromkeys(sites))


def _unknown_kind_message(kind: str, known: Iterable[str], item: str | None = None) -> str:
    known = sorted(known)
    near = difflib.get_close_matches(kind, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    where = f"site '{item}': " if item and item != kind else ""
    return f"{where}unknown site kind '{kind}'.{hint} Known kinds: {', '.join(known)}"


def unknown_kind_message(kind: str, known: Iterable[str]) -> str:
    """Message for a kind this model lacks: names the kinds it has and the nearest ones."""
    return _unknown_kind_message(kind, known)
