"""Edits: the one mechanism that changes activations, for patching, steering and circuits.

1. An :class:`Edit` says where (a :class:`~probe.sites.Site`), at which token positions, and
   what: ``Patch`` (a value from another run or any tensor), ``Add`` (coef * vector),
   ``Ablate`` (zero or mean), ``ClampGate`` / ``ScaleGate`` (attention output gates, per head
   when the site names one; arXiv 2505.06708), ``ProjectOut`` (``x - (x.r) r``), ``Rotate``
   (norm-preserving, in the plane of two directions), ``Apply`` (any function).
2. On each forward pass the edit receives the site's value ``(B, T, ...)``, computes the new
   value, and keeps the old one outside its positions (``torch.where`` over T).
3. :func:`intervene` hands all edits to ``probe.hook_sites(..., write=True)`` in order (several
   may share a site, each sees the previous one's result) and removes them on exit.

An :class:`Edit` names a site, the positions it touches and what it does to the site's value;
:func:`intervene` applies any combination of edits for the forward passes run inside it
(through ``probe.hook_sites(..., write=True)``) and removes them on exit, also on error.

Positions are ``None`` (all), ``"prompt"`` / ``"generated"`` (tokens before / after the
prompt: the prompt length is ``prompt_len`` if given, else the length of the latest pass that
starts at position 0, which under a KV cache is the prompt pass), or a list of absolute token
indices (negative ones count from the end of the sequence so far). Absolute positions come
from ``info.offset``, so they stay right under a KV cache. Gate edits write the gate logits,
so gate values 0 and 1 are exact.

Example::

    with intervene(model, [Add("resid_post.2", vector=v, coef=4.0, positions="generated"),
                           ClampGate("attn_gate.1.3", value=0.0)]):
        model.hf.generate(...)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from probe.errors import GatescopeError
from probe.hooks import ForwardInfo, hook_sites
from probe.model import Model
from probe.sites import Site

Positions = None | str | Sequence[int]


def _parse_site(site: Site | str) -> Site:
    return Site.parse(site) if isinstance(site, str) else site


@dataclass
class Edit:
    """Base class: ``site``, ``positions``, and ``transform(value) -> new value`` on the
    selected positions. Subclasses define ``transform``.

    Attributes:
        site: where (a :class:`Site` or its text form, e.g. ``"head_out.2.1"``).
        positions: ``None`` (all), ``"prompt"``, ``"generated"`` or a list of token indices.
        prompt_len: the prompt length for ``"prompt"`` / ``"generated"`` (default: taken from
            the pass that starts at position 0; give it when generating without a KV cache).
    """

    site: Site | str
    positions: Positions = None
    prompt_len: int | None = None
    _seen_len: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.site = _parse_site(self.site)
        if isinstance(self.positions, str) and self.positions not in ("prompt", "generated"):
            raise GatescopeError(
                f"positions '{self.positions}': expected None (all), 'prompt', 'generated' or "
                "a list of token indices"
            )

    def transform(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask(self, value: torch.Tensor, info: ForwardInfo) -> torch.Tensor | None:
        """(T,) bool of the positions this pass should edit, or None for all."""
        length = value.shape[1]
        if self.positions is None:
            return None
        absolute = torch.arange(info.offset, info.offset + length, device=value.device)
        if isinstance(self.positions, str):
            if info.offset == 0:
                self._seen_len = length
            prompt_len = self.prompt_len if self.prompt_len is not None else self._seen_len or 0
            prompt = absolute < prompt_len
            return prompt if self.positions == "prompt" else ~prompt
        total = info.offset + length
        wanted = torch.tensor([p if p >= 0 else total + p for p in self.positions])
        if (wanted < 0).any() or (wanted >= total).any():
            raise GatescopeError(
                f"edit at {self.site}: positions {list(self.positions)} are out of range for "
                f"a sequence of {total} tokens"
            )
        return torch.isin(absolute, wanted.to(value.device))

    def __call__(self, value: torch.Tensor, info: ForwardInfo) -> torch.Tensor | None:
        mask = self.mask(value, info)
        if mask is not None and not bool(mask.any()):
            return None
        new = self.transform(value)
        if mask is None:
            return new
        shape = (1, -1) + (1,) * (value.dim() - 2)
        return torch.where(mask.view(shape), new, value)


def _check_vector(vec: torch.Tensor, value: torch.Tensor, site: Site) -> torch.Tensor:
    if tuple(vec.shape) != tuple(value.shape[2:]):
        raise GatescopeError(
            f"edit at {site}: the vector has shape {tuple(vec.shape)} but the site's value per "
            f"token has shape {tuple(value.shape[2:])}; use a vector of that width"
        )
    return vec.to(device=value.device, dtype=value.dtype)


def _check_finite(number, what: str) -> None:
    try:
        ok = math.isfinite(float(number))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GatescopeError(f"{what} {number!r} is not a finite number; give a real number")


def _check_direction(vec: torch.Tensor | None, site: Site, what: str, nonzero=False) -> None:
    if not isinstance(vec, torch.Tensor):
        raise GatescopeError(f"{what} at {site}: expected a vector (torch.Tensor), got {vec!r}")
    if not bool(torch.isfinite(vec).all()):
        raise GatescopeError(f"{what} at {site}: the vector has NaN or infinite entries")
    if nonzero and float(vec.norm()) == 0.0:
        raise GatescopeError(f"{what} at {site}: the direction is the zero vector")


@dataclass
class Patch(Edit):
    """Replace the value by ``source`` (a tensor shaped like the value, e.g. from another run
    captured with a Tracer)."""

    source: torch.Tensor | None = None

    def transform(self, value):
        if self.source is None or self.source.shape != value.shape:
            got = None if self.source is None else tuple(self.source.shape)
            raise GatescopeError(
                f"patch at {self.site}: source shape {got} does not match the run's "
                f"{tuple(value.shape)}; capture the source from prompts of the same length"
            )
        return self.source.to(device=value.device, dtype=value.dtype)


@dataclass
class Add(Edit):
    """Add ``coef * vector`` (the steering edit)."""

    vector: torch.Tensor | None = None
    coef: float = 1.0
    _delta: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_finite(self.coef, "coefficient")
        _check_direction(self.vector, self.site, "add")

    def transform(self, value):
        delta = self._delta
        if delta is None or delta.device != value.device or delta.dtype != value.dtype:
            delta = self._delta = self.coef * _check_vector(self.vector, value, self.site)
        return value + delta


@dataclass
class Ablate(Edit):
    """Zero-ablate (``mean=None``) or mean-ablate (replace by ``mean``, per-token shape)."""

    mean: torch.Tensor | None = None

    def transform(self, value):
        if self.mean is None:
            return torch.zeros_like(value)
        return _check_vector(self.mean, value, self.site).expand_as(value)


def _gate_site(site: Site) -> None:
    if site.kind != "attn_gate":
        raise GatescopeError(f"gate edits need an attn_gate site, got {site}")


@dataclass
class ClampGate(Edit):
    """Set an attention output gate (a head's, if the site names one) to ``value`` in [0, 1]:
    0 removes the head, 1 removes the gating. Written as gate logits (exact at 0 and 1)."""

    value: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _gate_site(self.site)
        _check_finite(self.value, "gate value")
        if not 0.0 <= self.value <= 1.0:
            raise GatescopeError(f"gate value {self.value} is outside [0, 1]; 0 closes the gate")

    def transform(self, value):
        return torch.full_like(value, self.value)


@dataclass
class ScaleGate(Edit):
    """Multiply an attention output gate by ``factor`` (clipped to [0, 1])."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _gate_site(self.site)
        _check_finite(self.factor, "gate scale factor")
        if self.factor < 0:
            raise GatescopeError(f"gate scale factor {self.factor} is negative; use >= 0")

    def transform(self, value):
        return (value * self.factor).clamp(0.0, 1.0)


@dataclass
class ProjectOut(Edit):
    """Remove the component along ``direction``: ``x - (x . r) r`` with r normalised."""

    direction: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_direction(self.direction, self.site, "project-out", nonzero=True)

    def transform(self, value):
        r = _check_vector(self.direction, value, self.site)
        r = r / r.norm()
        return value - (value * r).sum(-1, keepdim=True) * r


@dataclass
class Rotate(Edit):
    """Rotate by ``angle`` (radians) in the plane of ``u`` and ``v``, keeping the norm."""

    u: torch.Tensor | None = None
    v: torch.Tensor | None = None
    angle: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_direction(self.u, self.site, "rotation", nonzero=True)
        _check_direction(self.v, self.site, "rotation", nonzero=True)
        _check_finite(self.angle, "rotation angle")

    def transform(self, value):
        e1 = _check_vector(self.u, value, self.site)
        e1 = e1 / e1.norm()
        e2 = _check_vector(self.v, value, self.site)
        e2 = e2 - (e2 * e1).sum() * e1
        if float(e2.norm()) < 1e-8:
            raise GatescopeError(f"rotation at {self.site}: u and v are parallel")
        e2 = e2 / e2.norm()
        a = (value * e1).sum(-1, keepdim=True)
        b = (value * e2).sum(-1, keepdim=True)
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return value + (a * cos - b * sin - a) * e1 + (a * sin + b * cos - b) * e2


@dataclass
class Apply(Edit):
    """Any function of the value (for edits not covered above)."""

    fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def transform(self, value):
        return self.fn(value)


@contextmanager
def intervene(model: Model, edits: Edit | Sequence[Edit]) -> Iterator[ForwardInfo]:
    """Apply ``edits`` (in order; several may share a site) to every forward pass inside."""
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    with hook_sites(model, [(e.site, e) for e in edits], write=True) as info:
        yield info
