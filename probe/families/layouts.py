"""Layouts, transforms and routing rules: the small read/write objects a family file declares.

A :class:`Tap` says which module tensor a site lives in; its *layout* says how the site's
value sits inside that tensor, and its *transform* how the value is derived from what the
layout reads (``sigmoid(b)``, ``-exp(A_log) * softplus(a + dt_bias)``, ...). Each layout
reads a site-shaped value ``(B, T, ...)`` out of the raw tensor and writes an edited one back;
each transform has an inverse, so edits are written into the model's own tensors and the
model's own code computes everything downstream. Nothing here re-implements a forward pass.

A new architecture with a new layout adds a class here (or in its family file); the shared
hook code in ``probe.hooks`` only calls ``read`` / ``write``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probe.errors import GatescopeError


@dataclass
class Ctx:
    """What a layout or transform may need besides the raw tensor.

    Attributes:
        dims: the model's sizes (``probe.model.Dims``).
        config: the model's text config.
        layer: the decoder layer the site is on.
        module: the module whose input or output is read.
        tokens: ``(B, T)`` of the layer's current input (for tensors the model flattened to
            ``(B*T, ...)``), ``None`` if unknown.
    """

    dims: Any
    config: Any
    layer: nn.Module
    module: nn.Module
    tokens: tuple[int, int] | None = None


def _cfg(ctx: Ctx, *names: str) -> int:
    for name in names:
        value = getattr(ctx.config, name, None)
        if value is not None:
            return int(value)
    raise GatescopeError(f"config has none of {names}")


class Layout:
    """How a site's value sits in a module tensor. Subclasses override ``read``/``write``.

    ``heads`` names the size of the site's third axis when the site is split into heads (or
    experts): a ``Dims`` field such as ``n_heads``, ``n_v_heads`` or ``n_experts``.
    ``needs_tokens``: the raw tensor is flattened over tokens, so ``ctx.tokens`` is needed.
    """

    heads: str | None = None
    needs_tokens: bool = False
    whole_output: bool = False  # reads the module's whole output (a tuple), not one element

    def read(self, raw: Any, ctx: Ctx) -> torch.Tensor:
        raise NotImplementedError

    def write(self, raw: Any, ctx: Ctx, new: torch.Tensor) -> Any:
        raise NotImplementedError


class Full(Layout):
    """The tensor as it is: ``(B, T, d)``."""

    def read(self, raw, ctx):
        return raw

    def write(self, raw, ctx, new):
        return new


class PerHead(Full):
    """A ``(B, T, H)`` tensor with one value per head (or expert): indexable by head."""

    def __init__(self, heads: str) -> None:
        self.heads = heads


class ViewLayout(Layout):
    """A layout whose value is a (possibly reshaped) view of the raw tensor: ``view`` returns
    a tensor sharing storage with ``raw``; ``to_site`` / ``from_site`` reshape between that
    view's shape and the site's shape."""

    def view(self, raw: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        raise NotImplementedError

    def to_site(self, v: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        return v

    def read(self, raw, ctx):
        return self.to_site(self.view(raw, ctx), ctx)

    def write(self, raw, ctx, new):
        out = raw.clone()
        target = self.view(out, ctx)
        target.copy_(new.reshape(target.shape).to(dtype=raw.dtype))
        return out


class Heads(ViewLayout):
    """Last dim split into ``heads`` x d: ``(B, T, H, d)``."""

    def __init__(self, heads: str = "n_heads") -> None:
        self.heads = heads

    def view(self, raw, ctx):
        if raw.dim() == 4:
            return raw
        return raw.view(*raw.shape[:2], getattr(ctx.dims, self.heads), -1)  # pyright: ignore[reportArgumentType]


class PerHeadGate(ViewLayout):
    """Qwen3-Next / Qwen3.5 ``q_proj``: per head ``[query | gate]`` (2 x d_head)."""

    heads = "n_heads"

    def view(self, raw, ctx):
        per_head = raw.view(*raw.shape[:2], ctx.dims.n_heads, 2, ctx.dims.d_head)
        return per_head[..., 1, :]


class GroupedSlice(ViewLayout):
    """A slice of every group of a projection laid out per group.

    The raw tensor ``(B, T, G * P)`` is viewed as ``(B, T, G, P)``; the site is the slice
    ``[start, start + r * d)`` of each group, i.e. ``r`` heads of width ``d`` per group, read as
    ``(B, T, G * r, d)`` (``d == 0``: one value per head, read as ``(B, T, G * r)``).
    Subclasses give ``spec(ctx) -> (G, P, start, r, d)``.
    """

    def spec(self, ctx: Ctx) -> tuple[int, int, int, int, int]:
        raise NotImplementedError

    def view(self, raw, ctx):
        g, p, start, r, d = self.spec(ctx)
        if raw.shape[-1] != g * p:
            raise GatescopeError(
                f"{type(ctx.module).__name__} emits {raw.shape[-1]} values per token, but the "
                f"config's layout needs {g} groups x {p} = {g * p}: the config's gate flags or "
                "head counts contradict the projection's width"
            )
        grouped = raw.view(*raw.shape[:-1], g, p)[..., start : start + r * max(d, 1)]
        return grouped.view(*raw.shape[:-1], g, r, d) if d else grouped

    def to_site(self, v, ctx):
        _, _, _, r, d = self.spec(ctx)
        g = v.shape[-3] if d else v.shape[-2]
        return v.reshape(*v.shape[:2], g * r, d) if d else v.reshape(*v.shape[:2], g * r)


class Tokens(ViewLayout):
    """A tensor the model flattened over tokens, ``(B*T, ...)`` or ``(B*T*H, d)``: viewed back
    as ``(B, T, *shape)`` (``shape`` from ``ctx.dims`` names, e.g. ``("n_v_heads", "d_v")``)."""

    needs_tokens = True

    def __init__(self, *shape: str, heads: str | None = None) -> None:
        self.shape, self.heads = shape, heads

    def view(self, raw, ctx):
        if ctx.tokens is None:
            raise GatescopeError(
                "the batch shape of this pass is unknown (site read outside a layer)"
            )
        b, t = ctx.tokens
        rest = [getattr(ctx.dims, s) for s in self.shape]
        return raw.view(b, t, *rest) if rest else raw.view(b, t, -1)


class Pattern(Layout):
    """Attention weights ``(B, H, Tq, Tk)`` viewed as ``(B, Tq, H, Tk)`` (read only)."""

    heads = "n_heads"

    def read(self, raw, ctx):
        return raw.transpose(1, 2)

    def write(self, raw, ctx, new):
        raise GatescopeError("attention patterns are read-only")


LAYOUTS: dict[str, Layout] = {
    "full": Full(),
    "heads": Heads(),
    "gate": PerHeadGate(),
    "pattern": Pattern(),
}


# ---------------------------------------------------------------- transforms


class Transform:
    """``forward(x) -> value`` and its inverse, applied elementwise to what a layout reads.

    ``range(config)`` is the closed interval of values the transform takes on a model with that
    config (its inverse refuses anything outside; gate edits clamp and check against it).
    """

    name = ""

    def range(self, config) -> tuple[float, float]:
        return (-math.inf, math.inf)

    def forward(self, x: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        raise NotImplementedError

    def inverse(self, v: torch.Tensor, ctx: Ctx, site: str) -> torch.Tensor:
        raise NotImplementedError


class Sigmoid(Transform):
    """``sigmoid(x)``; written as ``logit(v)`` (0 and 1 become -inf / +inf: exact)."""

    name = "sigmoid"

    def range(self, config):
        return (0.0, 1.0)

    def forward(self, x, ctx):
        return torch.sigmoid(x)

    def inverse(self, v, ctx, site):
        if bool(((v < 0) | (v > 1)).any()):
            raise GatescopeError(f"site '{site}': a sigmoid gate takes values in [0, 1]")
        return torch.logit(v)


class Silu(Transform):
    """``silu(x)`` (the Gated-DeltaNet output gate); written on the branch ``x >= -1.2785``
    where silu is invertible (values >= -0.2785), by Newton's method in float64."""

    name = "silu"
    X_MIN = -1.278464542761074  # argmin of silu
    V_MIN = X_MIN * (1 / (1 + math.exp(-X_MIN)))

    def range(self, config):
        return (self.V_MIN, math.inf)

    def forward(self, x, ctx):
        return F.silu(x.float()).to(x.dtype)

    def inverse(self, v, ctx, site):
        if bool((v < self.V_MIN).any()):
            raise GatescopeError(
                f"site '{site}': silu takes no value below {self.V_MIN:.4f}; write values >= that"
            )
        y = v.double()
        x = torch.where(y > 0, y + 0.5, torch.zeros_like(y))  # start right of the minimum
        for _ in range(60):
            s = torch.sigmoid(x)
            f = x * s - y
            df = s * (1 + x * (1 - s))
            x = torch.where(df.abs() > 1e-12, x - f / df, x).clamp(min=self.X_MIN)
        return x.to(v.dtype)


class DeltaDecay(Transform):
    """Gated-DeltaNet log decay ``g = -exp(A_log) * softplus(a + dt_bias)`` per value head,
    from the token mixer's own parameters; written back as ``a = softplus^-1(-g / exp(A_log))
    - dt_bias`` (``g = 0``, "never forget", becomes ``a = -inf``)."""

    name = "delta_decay"

    def __init__(self, mixer: str = "linear_attn") -> None:
        self.mixer = mixer

    def range(self, config):
        return (-math.inf, 0.0)

    def _params(self, ctx):
        mixer = ctx.layer.get_submodule(self.mixer)
        return mixer.A_log.float(), mixer.dt_bias

    def forward(self, x, ctx):
        a_log, dt_bias = self._params(ctx)
        return -a_log.exp() * F.softplus(x.float() + dt_bias)  # pyright: ignore[reportCallIssue, reportOperatorIssue]

    def inverse(self, v, ctx, site):
        if bool((v > 0).any()):
            raise GatescopeError(
                f"site '{site}': a log decay must be <= 0 (retention exp(g) <= 1); "
                "write 0 for 'never forget' and large negative values for 'forget at once'"
            )
        a_log, dt_bias = self._params(ctx)
        y = (-v.float() / a_log.exp()).double()  # pyright: ignore[reportCallIssue]  # softplus(a + dt_bias)
        pre = torch.where(y > 20, y, torch.log(torch.expm1(y)))
        return (pre - dt_bias.double()).float()  # pyright: ignore[reportOperatorIssue]


TRANSFORMS: dict[str, Transform] = {"sigmoid": Sigmoid(), "silu": Silu()}


# ---------------------------------------------------------------- MoE routing


class RoutingRule:
    """A family's declared routing: router logits -> (probabilities, top-k weights, indices),
    written to reproduce the family's router output bit for bit.

    ``route(logits, top_k)`` is the router's own choice; ``force(logits, forced, top_k)`` the
    same rule with the experts in the boolean mask ``forced`` (``(N, E)``) chosen first: their
    selection score is ``+inf``, the other slots are filled by the rule as usual, and every
    chosen expert's weight is computed from the (unedited) logits with the family's own
    normalisation. A logit of ``-inf`` (a banned expert) is never chosen.
    """

    prob_name = "softmax"

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def route(
        self, logits: torch.Tensor, top_k: int, forced: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def force(
        self, logits: torch.Tensor, forced: torch.Tensor, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rule's weights and indices with the experts in ``forced`` always chosen."""
        return self.route(logits, top_k, forced)

    def prob_to_logits(self, p: torch.Tensor) -> torch.Tensor:
        return torch.log(p)


def _select(key: torch.Tensor, top_k: int, forced: torch.Tensor | None) -> torch.Tensor:
    """Indices of the top-k of ``key`` with the ``forced`` experts first (score +inf)."""
    if forced is not None:
        key = key.masked_fill(forced, math.inf)
    return torch.topk(key, top_k, dim=-1).indices


class SoftmaxTopK(RoutingRule):
    """Qwen / OLMoE / Mixtral: softmax over all experts, top-k of the probabilities, optionally
    renormalised to sum 1 (``norm_topk_prob``); ``cast``: the weights are cast back to the
    logits' dtype (Mixtral keeps them in float32)."""

    def __init__(self, norm: bool, cast: bool = True) -> None:
        self.norm, self.cast = norm, cast

    def probs(self, logits):
        return torch.softmax(logits, dtype=torch.float, dim=-1)

    def route(self, logits, top_k, forced=None):
        probs = self.probs(logits)
        if forced is None:
            top, idx = torch.topk(probs, top_k, dim=-1)
        else:
            idx = _select(probs, top_k, forced)
            top = probs.gather(-1, idx)
        if self.norm:
            top /= top.sum(dim=-1, keepdim=True)
        return (top.to(logits.dtype) if self.cast else top), idx


class TopKSoftmax(RoutingRule):
    """GPT-OSS: top-k of the logits, softmax over the chosen ones."""

    def probs(self, logits):
        return torch.softmax(logits, dtype=torch.float, dim=-1)

    def route(self, logits, top_k, forced=None):
        if forced is None:
            top, idx = torch.topk(logits, top_k, dim=-1)
        else:
            idx = _select(logits, top_k, forced)
            top = logits.gather(-1, idx)
        return torch.softmax(top, dim=1, dtype=top.dtype), idx


class SigmoidTopK(RoutingRule):
    """AFMoE / LFM2-MoE: sigmoid scores per expert, experts chosen by top-k of ``scores + bias``
    (the bias steers the selection only; none: top-k of the scores), weights the chosen scores,
    over their sum plus ``eps`` when ``norm``, times ``scale``.

    A sigmoid saturates, so raising a logit cannot outbid a larger bias: forcing sets the
    selection score itself to ``+inf``. The scores do not sum to 1 over the experts.
    """

    prob_name = "sigmoid"

    def __init__(
        self, bias: torch.Tensor | None, scale: float, eps: float = 1e-20, norm: bool = True
    ) -> None:
        self.bias, self.scale, self.eps, self.norm = bias, scale, eps, norm

    def probs(self, logits):
        return torch.sigmoid(logits.float())

    def route(self, logits, top_k, forced=None):
        scores = torch.sigmoid(logits)
        choose = scores if self.bias is None else scores + self.bias
        choose = torch.where(torch.isneginf(logits), float("-inf"), choose)
        idx = _select(choose, top_k, forced)
        top = scores.gather(dim=-1, index=idx)
        if self.norm:
            top = top / (top.sum(dim=-1, keepdim=True) + self.eps)
        return top * self.scale, idx

    def prob_to_logits(self, p):
        return torch.logit(p)


class Router(Layout):
    """A router module's whole output ``(logits, top-k weights, indices)``, flattened over
    tokens. ``part`` is ``logit``, ``prob`` or ``weight`` (dense: 0 for experts not chosen).

    Writes recompute the selection from the edited logits with the family's routing rule, so
    the experts module receives exactly what the router would have produced from them. In a
    written ``logit`` value, ``-inf`` bans an expert and ``+inf`` forces it: the rule's
    ``force`` chooses it whatever the other experts' scores (at most ``top_k`` per token), and
    its weight follows from its own logit as the router left it.
    """

    heads = "n_experts"
    needs_tokens = True
    whole_output = True

    def __init__(self, part: str, rule_for) -> None:
        self.part, self.rule_for = part, rule_for

    def rule(self, ctx) -> RoutingRule:
        return self.rule_for(ctx.config)

    def _tokens(self, x, ctx):
        b, t = ctx.tokens
        return x.reshape(b, t, x.shape[-1])

    def read(self, raw, ctx):
        logits, scores, idx = raw[0], raw[1], raw[2]
        if self.part == "logit":
            return self._tokens(logits, ctx)
        if self.part == "prob":
            return self._tokens(self.rule(ctx).probs(logits), ctx)
        dense = torch.zeros(logits.shape, dtype=scores.dtype, device=scores.device)
        dense.scatter_(-1, idx, scores)
        return self._tokens(dense, ctx)

    def write(self, raw, ctx, new):
        logits, scores, idx = raw[0], raw[1], raw[2]
        flat = new.reshape(-1, new.shape[-1])
        top_k = idx.shape[-1]
        if self.part == "weight":
            top, new_idx = torch.topk(flat, top_k, dim=-1)
            return (logits, top.to(scores.dtype), new_idx, *raw[3:])
        if self.part == "prob":
            flat = self.rule(ctx).prob_to_logits(flat.float()).to(logits.dtype)
        if bool(torch.isneginf(flat).all(-1).any()):
            raise GatescopeError(
                "every expert of a token is banned: a router needs at least one expert it may "
                "choose; leave at least one expert open per layer and token"
            )
        forced = torch.isposinf(flat)
        if not bool(forced.any()):
            top, new_idx = self.rule(ctx).route(flat, top_k)
            return (flat, top.to(scores.dtype), new_idx, *raw[3:])
        most = int(forced.sum(-1).max())
        if most > top_k:
            raise GatescopeError(
                f"{most} experts are forced on one token, but this layer chooses {top_k} per "
                f"token: force at most {top_k}"
            )
        flat = torch.where(forced, logits.reshape(flat.shape), flat)
        top, new_idx = self.rule(ctx).force(flat, forced, top_k)
        return (flat, top.to(scores.dtype), new_idx, *raw[3:])
