"""Edits: the one mechanism that changes activations, for patching, steering and circuits.

1. An :class:`Edit` says where (a :class:`~probe.sites.Site`), at which token positions, and
   what: ``Patch`` (a value from another run or any tensor), ``Add`` (coef * vector),
   ``Ablate`` (zero or mean), ``ClampGate`` / ``ScaleGate`` (attention output gates, per head
   when the site names one, arXiv 2505.06708; DeltaNet write strength, decay and output gate;
   the shared-expert gate), ``BanExperts`` / ``ForceExperts`` (MoE routing), ``ProjectOut``
   (``x - (x.r) r``), ``Rotate`` (norm-preserving, in the plane of two directions), ``Apply``
   (any function).
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
from probe.hooks import ForwardInfo, headwise_hint, hook_sites
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

    @property
    def at(self) -> Site:
        """``site`` as a :class:`Site` (``__post_init__`` parses its text form)."""
        assert isinstance(self.site, Site)
        return self.site

    def transform(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, model: Model) -> None:
        """Check the edit against ``model`` before any pass runs (called by :func:`intervene`):
        e.g. a gate value against the range the site takes on this model."""

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


def _check_vector(vec: torch.Tensor | None, value: torch.Tensor, site: Site) -> torch.Tensor:
    if vec is None:
        raise GatescopeError(f"edit at {site}: expected a vector (torch.Tensor), got None")
    if tuple(vec.shape) != tuple(value.shape[2:]):
        raise GatescopeError(
            f"edit at {site}: the vector has shape {tuple(vec.shape)} but the site's value per "
            f"token has shape {tuple(value.shape[2:])}; use a vector of that width"
            + headwise_hint(site, tuple(value.shape[2:]), tuple(vec.shape))
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
        _check_direction(self.vector, self.at, "add")

    def transform(self, value):
        delta = self._delta
        if delta is None or delta.device != value.device or delta.dtype != value.dtype:
            delta = self._delta = self.coef * _check_vector(self.vector, value, self.at)
        return value + delta


@dataclass
class Ablate(Edit):
    """Zero-ablate (``mean=None``) or mean-ablate (replace by ``mean``, per-token shape)."""

    mean: torch.Tensor | None = None

    def transform(self, value):
        if self.mean is None:
            return torch.zeros_like(value)
        return _check_vector(self.mean, value, self.at).expand_as(value)


#: Gate kinds an edit may clamp or scale, each with the widest range it takes in any family
#: (inclusive bounds), checked when the edit is made. The model's own range comes from the
#: site's transform (``Tap.value_range``: ``delta_beta`` is [0, 1] on Qwen3-Next and [0, 2] on
#: OLMo Hybrid with negative eigenvalues) and is checked when the edit meets the model
#: (:func:`intervene`) and again when it writes.
GATE_RANGES: dict[str, tuple[float, float]] = {
    "attn_gate": (0.0, 1.0),
    "delta_beta": (0.0, 2.0),  # 0: "never write" (the state is not updated)
    "shared_gate": (0.0, 1.0),
    "conv_gate": (-math.inf, math.inf),
    "conv_out_gate": (-math.inf, math.inf),
    "delta_gate": (-0.2784645427610738, math.inf),  # silu's range
    "delta_decay": (-math.inf, 0.0),  # 0: "never forget" (retention exp(g) = 1)
}


def _gate_site(site: Site) -> tuple[float, float]:
    if site.kind not in GATE_RANGES:
        raise GatescopeError(
            f"gate edits need a gate site ({', '.join(GATE_RANGES)}), got '{site}'"
        )
    return GATE_RANGES[site.kind]


def site_range(model: Model, site: Site) -> tuple[float, float]:
    """The values ``site`` takes on ``model`` (from its tap's transform)."""
    return model.family.taps[site.kind].value_range(model.text_config)


def _check_gate_value(value: float, lo: float, hi: float, site: Site, where: str) -> None:
    if not lo <= value <= hi:
        raise GatescopeError(
            f"gate value {value} is outside [{lo:g}, {hi:g}] for {site.kind}{where}"
            + ("; 0 means 'never forget'" if site.kind == "delta_decay" else "")
        )


@dataclass
class ClampGate(Edit):
    """Set a gate (a head's, if the site names one) to ``value``.

    Attention output gates and the shared expert's gate take values in [0, 1] (0 removes the
    head / drops the shared expert; 1 removes the gating), the Gated-DeltaNet write strength
    ``delta_beta`` in [0, 1] ([0, 2] on OLMo Hybrid with negative eigenvalues; 0: "never
    write"); ``delta_decay`` takes values <= 0 (0: "never forget"); ``delta_gate`` values >=
    silu's minimum. The model's own range is checked by :func:`intervene`. Written through the
    model's own pre-activations (gate logits, ``a``, ``z``), so 0 and 1 are exact.
    """

    value: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, hi = _gate_site(self.at)
        _check_finite(self.value, "gate value")
        _check_gate_value(self.value, lo, hi, self.at, "")

    def bind(self, model: Model) -> None:
        lo, hi = site_range(model, self.at)
        _check_gate_value(self.value, lo, hi, self.at, f" on this model ({model.family.name})")

    def transform(self, value):
        return torch.full_like(value, self.value)


@dataclass
class ScaleGate(Edit):
    """Multiply a gate by ``factor``, kept inside the gate's range on the model (e.g. [0, 1]
    for sigmoid gates, [0, 2] for OLMo Hybrid's write strength; scaling ``delta_decay`` by
    ``f`` raises every retention to the power ``f``). ``factor`` 1 changes nothing."""

    factor: float = 1.0
    _range: tuple[float, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _gate_site(self.at)
        _check_finite(self.factor, "gate scale factor")
        if self.factor < 0:
            raise GatescopeError(f"gate scale factor {self.factor} is negative; use >= 0")

    def bind(self, model: Model) -> None:
        self._range = site_range(model, self.at)

    def transform(self, value):
        lo, hi = self._range or GATE_RANGES[self.at.kind]
        return (value * self.factor).clamp(lo, hi)


def _router_site(site: Site, what: str) -> None:
    if site.kind != "router_logit" or site.head is not None:
        raise GatescopeError(
            f"{what} edits a router's logits: give a site 'router_logit.LAYER' (no expert "
            f"index), got '{site}'"
        )


@dataclass
class BanExperts(Edit):
    """Ban MoE experts at a layer (and positions): their router logits become -inf and the
    layer's own routing rule chooses again from the rest (their probability and weight are
    exactly 0). Banning every expert is refused."""

    experts: Sequence[int] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _router_site(self.at, "BanExperts")
        self.experts = _expert_list(self.experts, self.at)

    def transform(self, value):
        _check_experts(self.experts, value, self.at)
        if len(set(self.experts)) >= value.shape[-1]:
            raise GatescopeError(
                f"BanExperts at {self.site}: banning all {value.shape[-1]} experts leaves the "
                "router nothing to choose; ban fewer"
            )
        new = value.clone()
        new[..., list(self.experts)] = -math.inf
        return new


@dataclass
class ForceExperts(Edit):
    """Force MoE experts to be chosen at a layer (and positions), at most ``top_k`` of them.

    The forced experts' router logits are written as ``+inf``, which the router site turns into
    the layer's own rule with those experts chosen first (``RoutingRule.force``: their
    selection score is ``+inf``, so a sigmoid router's expert bias cannot outbid them); the
    remaining slots are filled by the rule as usual, and every chosen expert's weight follows
    the family's own normalisation from the unedited logits (softmax of all experts, renormalised
    over the chosen ones where the family does; softmax over the chosen logits on GPT-OSS;
    chosen sigmoid scores over their sum, times the route scale, on AFMoE)."""

    experts: Sequence[int] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _router_site(self.at, "ForceExperts")
        self.experts = _expert_list(self.experts, self.at)

    def transform(self, value):
        _check_experts(self.experts, value, self.at)
        new = value.clone()
        new[..., list(self.experts)] = math.inf
        return new


def _expert_list(experts, site: Site) -> list[int]:
    experts = [experts] if isinstance(experts, int) else list(experts)
    if not experts or not all(isinstance(e, int) and e >= 0 for e in experts):
        raise GatescopeError(
            f"experts at {site}: expected one or more expert indices >= 0, got {experts!r}"
        )
    return experts


def _check_experts(experts, value: torch.Tensor, site: Site) -> None:
    n = value.shape[-1]
    bad = [e for e in experts if e >= n]
    if bad:
        raise GatescopeError(
            f"experts {bad} at {site} are out of range: this layer has experts 0-{n - 1}"
        )


@dataclass
class ProjectOut(Edit):
    """Remove the component along ``direction``: ``x - (x . r) r`` with r normalised."""

    direction: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_direction(self.direction, self.at, "project-out", nonzero=True)

    def transform(self, value):
        r = _check_vector(self.direction, value, self.at)
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
        _check_direction(self.u, self.at, "rotation", nonzero=True)
        _check_direction(self.v, self.at, "rotation", nonzero=True)
        _check_finite(self.angle, "rotation angle")

    def transform(self, value):
        e1 = _check_vector(self.u, value, self.at)
        e1 = e1 / e1.norm()
        e2 = _check_vector(self.v, value, self.at)
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
        if self.fn is None:
            raise GatescopeError(f"Apply at {self.site}: give fn, a function of the value")
        return self.fn(value)


@contextmanager
def intervene(model: Model, edits: Edit | Sequence[Edit]) -> Iterator[ForwardInfo]:
    """Apply ``edits`` (in order; several may share a site) to every forward pass inside."""
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    for edit in edits:
        model.check_site(edit.at)
        edit.bind(model)
    with hook_sites(model, [(e.at, e) for e in edits], write=True) as info:
        yield info
