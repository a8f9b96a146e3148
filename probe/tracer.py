"""The :class:`Tracer`: capture any set of sites from the unmodified model.

    with Tracer(model, "attn_gate.*,resid_post.3", positions=[-1]) as tr:
        model.run(prompts)
    tr["attn_gate.2"]  # (B, 1, H, d_head)

Captured values are detached; with ``device``/``dtype`` they are moved as they stream (off a
GPU at once). ``positions`` keeps only those positions, negative ones counted from each row's
last real token. Streaming ``reducers`` see every batch and let statistics over thousands of
prompts run with nothing stored (``keep=False``). Hooks are removed on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

import torch

from probe.errors import GatescopeError
from probe.hooks import ForwardInfo, hook_sites
from probe.model import Model
from probe.sites import Site


class Reducer(Protocol):
    """A streaming statistic: ``update`` is called once per site per forward pass."""

    def update(self, site: Site, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        """``value`` is (B, T, ...) on the model's device; ``mask`` (B, T) bool or None."""


def _pass_mask(info: ForwardInfo, batch: int, length: int, device) -> torch.Tensor | None:
    mask = info.attention_mask
    if mask is None or mask.dim() != 2:
        return None
    mask = mask[:, -length:] if mask.shape[1] >= length else mask
    return mask.to(device=device, dtype=torch.bool) if mask.shape == (batch, length) else None


def _select(value: torch.Tensor, mask: torch.Tensor | None, positions: Sequence[int]):
    """Keep ``positions`` of each row; negative positions count back from the row's end."""
    batch, length = value.shape[:2]
    lengths = mask.sum(1) if mask is not None else torch.full((batch,), length, device=value.device)
    pos = torch.tensor(list(positions), device=value.device)  # (P,)
    idx = torch.where(pos < 0, lengths[:, None] + pos[None, :], pos[None, :])  # (B, P)
    if (idx < 0).any() or (idx >= length).any():
        bad = int(idx[(idx < 0) | (idx >= length)][0])
        raise GatescopeError(
            f"position {bad} is out of range for a prompt of {int(lengths.min())} tokens; "
            "choose positions within every prompt (negative ones count from the end)"
        )
    rows = torch.arange(batch, device=value.device)[:, None]
    picked_mask = mask[rows, idx] if mask is not None else None
    return value[rows, idx], picked_mask  # (B, P, ...)


@contextmanager
def eager_attention(model: Model):
    """Switch a HF model to eager attention (needed for patterns) for the scope's duration."""
    hf: Any = model.hf  # a transformers model here (it has a config)
    cfg = getattr(hf, "config", None)
    before = getattr(cfg, "_attn_implementation", None)
    switch = cfg is not None and before not in (None, "eager")
    if switch:
        hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            hf.set_attn_implementation(before)


class Tracer:
    """Capture sites of ``model`` during the forward passes run inside the ``with`` block.

    Args:
        model: a loaded :class:`~probe.model.Model`.
        sites: site patterns (``"attn_gate.*,resid_post.3"``), a list of them, or Sites.
        positions: positions to keep per row (``None`` keeps all).
        device: move captured values there as they stream (e.g. ``"cpu"``).
        dtype: cast captured values (statistics in reducers see the original dtype).
        reducers: streaming statistics fed every captured batch.
        keep: store the captured tensors (turn off when only reducers are wanted).
    """

    def __init__(
        self,
        model: Model,
        sites,
        *,
        positions: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        reducers: Sequence[Reducer] = (),
        keep: bool = True,
    ) -> None:
        self.model = model
        self.sites = model.sites(sites)
        self.positions = list(positions) if positions is not None else None
        self.device, self.dtype = device, dtype
        self.reducers, self.keep = list(reducers), keep
        self._store: dict[Site, list[torch.Tensor]] = {s: [] for s in self.sites}
        self._stack: ExitStack | None = None

    def _capture(self, site: Site):
        def fn(value: torch.Tensor, info: ForwardInfo) -> None:
            value = value.detach()
            mask = _pass_mask(info, value.shape[0], value.shape[1], value.device)
            if self.positions is not None:
                value, mask = _select(value, mask, self.positions)
            for reducer in self.reducers:
                reducer.update(site, value, mask)
            if self.keep:
                if self.device is not None or self.dtype is not None:
                    value = value.to(device=self.device, dtype=self.dtype)
                self._store[site].append(value)

        return fn

    def __enter__(self) -> Tracer:
        stack = ExitStack()
        try:
            if any(s.kind == "attn_pattern" for s in self.sites):
                stack.enter_context(eager_attention(self.model))
            entries = [(s, self._capture(s)) for s in self.sites]
            stack.enter_context(hook_sites(self.model, entries))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __getitem__(self, site: Site | str) -> torch.Tensor:
        site = Site.parse(site) if isinstance(site, str) else site
        if site not in self._store:
            raise GatescopeError(
                f"site '{site}' was not traced; traced: {', '.join(map(str, self.sites))}"
            )
        parts = self._store[site]
        if not parts:
            raise GatescopeError(f"site '{site}' saw no forward pass inside the tracer")
        if len(parts) == 1:
            return parts[0]
        if len({p.shape[1:] for p in parts}) > 1:
            raise GatescopeError(
                f"site '{site}' was captured over passes of different lengths; "
                "use positions=[-1], one pass, or a reducer"
            )
        return torch.cat(parts, dim=0)

    @property
    def activations(self) -> dict[Site, torch.Tensor]:
        """Every traced site's value, concatenated over the passes run inside the block."""
        return {site: self[site] for site in self.sites if self._store[site]}

    def passes(self, site: Site | str) -> list[torch.Tensor]:
        """The captured values of ``site``, one tensor per forward pass."""
        site = Site.parse(site) if isinstance(site, str) else site
        return list(self._store[site])
