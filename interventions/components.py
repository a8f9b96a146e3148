"""What a patching or attribution sweep addresses: :class:`Component` and its helpers.

A component is one patched unit: a site of a whole layer, optionally one position and one
head. :func:`components` enumerates them for a site pattern, :func:`value_site` names the
site whose value a sweep reads or replaces for one (``attn_gate`` through its logits, so a
patch of the gate is exact), and :func:`prepare` tokenizes a task for a sweep (per-position
sweeps use the largest group of prompts of one token length). Activation patching
(``interventions.patching``) and attribution (``circuits.attribution``) share them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch

from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import HEADED_KINDS, Site
from probe.tasks import Task, TaskBatch

log = logging.getLogger(__name__)


@dataclass
class Component:
    """One patched unit: a whole-layer site (with its head, for headed kinds), optionally one
    position; ``effect`` is filled in by the sweep.

    Attributes:
        site: the site (``head_out.1.2``, ``mlp_out.0``): kind, layer and head.
        position: a token position, or ``None`` for all positions at once.
        effect: the sweep's normalised effect (NaN until scored).
    """

    site: Site
    position: int | None = None
    effect: float = float("nan")

    @property
    def kind(self) -> str:
        return self.site.kind

    @property
    def layer(self) -> int:
        return self.site.layer

    @property
    def head(self) -> int | None:
        return self.site.head

    @property
    def label(self) -> str:
        pos = "" if self.position is None else f"@{self.position}"
        return f"{self.site}{pos}"

    def to_dict(self) -> dict:
        """Readable JSON: the site's text and its parts, the position and the effect."""
        return {
            "site": str(self.site),
            "kind": self.kind,
            "layer": self.layer,
            "head": self.head,
            "position": self.position,
            "effect": self.effect,
        }


def value_site(c: Component) -> Site:
    """The whole-layer site a sweep reads and writes for ``c`` (``attn_gate`` is handled
    through ``attn_gate_logit``)."""
    return Site("attn_gate_logit" if c.kind == "attn_gate" else c.kind, c.layer)


def _positions(positions, length: int | None) -> list[int | None]:
    if positions is None:
        return [None]
    if length is None:
        raise GatescopeError("per-position components need the prompts' token length")
    if positions == "each":
        return list(range(length))
    if isinstance(positions, str):
        raise GatescopeError(
            f"positions {positions!r} is not understood; give None, 'each' or a list of ints"
        )
    out = [p if p >= 0 else length + p for p in positions]
    if any(p < 0 or p >= length for p in out):
        raise GatescopeError(f"positions {positions} out of range for {length} tokens")
    return out


def components(model: Model, sites, positions=None, length: int | None = None) -> list[Component]:
    """Every component of ``sites`` (a pattern or a list): headed sites without a head are
    swept head by head; ``positions`` is ``None`` (all at once), ``"each"`` or a list."""
    pos_list = _positions(positions, length)
    comps = []
    for site in model.sites(sites):
        if not model.family.taps[site.kind].writable:
            raise GatescopeError(f"{site.kind} cannot be patched (read-only)")
        heads = [site.head] if site.head is not None else [None]
        if site.kind in HEADED_KINDS and site.head is None:
            heads = list(range(model.n_heads_of(site.kind)))
        comps += [Component(site.with_head(h), p) for p in pos_list for h in heads]
    return comps


def equal_length_rows(batch: TaskBatch) -> torch.Tensor:
    """Indices of the largest group of prompts with one token length."""
    length, _ = Counter(batch.lengths.tolist()).most_common(1)[0]
    return torch.nonzero(batch.lengths == length).flatten()


def prepare(model: Model, task: Task, positions) -> TaskBatch:
    """``task`` tokenized for a sweep; per-position sweeps keep the largest group of prompts
    of one token length (and say so)."""
    batch = task.tokenize(model.tokenizer)
    if positions is None:
        return batch
    rows = equal_length_rows(batch)
    if len(rows) < len(batch):
        log.warning(
            "per-position patching: using the %d of %d prompts with %d tokens",
            len(rows),
            len(batch),
            int(batch.lengths[rows[0]]),
        )
    return batch.select(rows)


__all__ = ["Component", "components", "equal_length_rows", "prepare", "value_site"]
