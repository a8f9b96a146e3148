"""LRP rules as a context manager over the unmodified model (RelP, arXiv 2508.21258).

Inside ``lrp_rules(model)`` every forward value is unchanged, but the backward pass follows
the LRP rules, so ``x * x.grad`` at any site is its relevance:

1. Normalisation (the family's ``norms`` and ``final_norm``): the scale is a constant. The
   output becomes ``out.detach() + (x - x.detach()) * (out / x).detach()`` for RMSNorm-like
   modules, and centring with a frozen standard deviation for ``nn.LayerNorm``.
2. Elementwise nonlinearity (the family's ``mlp_act``): identity rule, the backward passes
   ``act(x) / x`` instead of ``act'(x)``.
3. Products of two activation streams: half rule, each factor receives half the relevance
   (``y / 2 + (y / 2).detach()`` at the product). GLU: at ``mlp_hidden``; attention output
   gate: at ``head_out`` (o_proj's input), with the identity rule on the gate's sigmoid
   (written into the gate logits). ``gate_rule="constant"`` instead treats the gate as a
   constant: all relevance stays on the attention path. ``glu_rule="gradient"`` gives the
   GLU product its plain gradient (each factor the whole relevance; not conservative), a
   variant for comparison with activation patching.
4. Attention probabilities are constant (the AH rule, ``hold_attention=True``): the
   circuits attention function (:mod:`circuits.attention`) runs with the softmax detached. With
   ``hold_attention=False`` the softmax keeps its plain gradient (the RelP repository's
   default rule set), so query/key paths get relevance.
5. Linear layers: the plain gradient (LRP-0).

Everything is restored on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from circuits.attention import attention
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.locate import resolve_path
from probe.model import Model
from probe.sites import Site

GATE_RULES = ("half", "constant")
GLU_RULES = ("half", "gradient")


def _ratio(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    safe = torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.zeros_like(x), out / safe).detach()


def _frozen_norm(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Same value as ``out``; gradient of the norm with its scale held constant."""
    delta = x - x.detach()
    if isinstance(module, nn.LayerNorm):
        std = torch.sqrt(x.detach().var(-1, keepdim=True, unbiased=False) + module.eps)
        lin = (delta - delta.mean(-1, keepdim=True)) / std
        if module.weight is not None:
            lin = lin * module.weight.detach()
        return out.detach() + lin
    return out.detach() + delta * _ratio(out, x)


def _norm_hook(module, args, kwargs, output):
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(output, torch.Tensor) or x is None or x.shape != output.shape:
        return None
    return _frozen_norm(module, x, output)


def _identity_hook(module, args, kwargs, output):
    x = args[0] if args else kwargs.get("input")
    return output.detach() + (x - x.detach()) * _ratio(output, x)


def _half(value: torch.Tensor, info) -> torch.Tensor:
    return 0.5 * value + (0.5 * value).detach()


def _gate_identity(logit: torch.Tensor, info) -> torch.Tensor:
    """Gate logits whose sigmoid keeps its value but passes relevance unchanged (sigma/g)."""
    sig = torch.sigmoid(logit.detach())
    g = logit.detach()
    g = torch.where(g.abs() < 1e-6, torch.full_like(g, 1e-6), g)
    k = 1.0 / (g * (1.0 - sig).clamp(min=1e-12))  # d logit'/d logit = (sigma/g) / sigma'
    return logit.detach() + (logit - logit.detach()) * k


def _gate_constant(logit: torch.Tensor, info) -> torch.Tensor:
    return logit.detach()


@contextmanager
def lrp_rules(
    model: Model, gate_rule: str = "half", glu_rule: str = "half", hold_attention: bool = True
) -> Iterator[None]:
    """Make the backward pass of ``model`` follow the LRP rules (module docstring)."""
    if gate_rule not in GATE_RULES:
        raise GatescopeError(
            f"gate rule '{gate_rule}' is unknown; choose {' or '.join(GATE_RULES)}"
        )
    if glu_rule not in GLU_RULES:
        raise GatescopeError(f"GLU rule '{glu_rule}' is unknown; choose {' or '.join(GLU_RULES)}")
    if not hasattr(model.hf, "config"):
        raise GatescopeError("LRP rules need a transformers model (not a HookedTransformer)")
    fam, n = model.family, model.dims.n_layers
    with ExitStack() as stack:
        handles = []
        stack.callback(lambda: [h.remove() for h in handles])
        norms = [resolve_path(model.layer(i), path) for i in range(n) for path in fam.norms]
        norms.append(resolve_path(model.hf, fam.final_norm))
        for module in filter(None, norms):
            handles.append(module.register_forward_hook(_norm_hook, with_kwargs=True))
        acts = [resolve_path(model.layer(i), fam.mlp_act) for i in range(n)] if fam.mlp_act else []
        for module in filter(None, acts):
            handles.append(module.register_forward_hook(_identity_hook, with_kwargs=True))
        entries = []
        layers = range(n)
        if "mlp_gate" in fam.kinds and glu_rule == "half":  # a GLU: half rule at the product
            entries += [
                (Site("mlp_hidden", i), _half) for i in layers if _has(model, "mlp_gate", i)
            ]
        if fam.has_attn_gate:
            gated = [i for i in layers if _has(model, "attn_gate", i)]
            if gate_rule == "half":
                entries += [(Site("head_out", i), _half) for i in gated]
                entries += [(Site("attn_gate_logit", i), _gate_identity) for i in gated]
            else:
                entries += [(Site("attn_gate_logit", i), _gate_constant) for i in gated]
        stack.enter_context(hook_sites(model, entries, write=True))
        if hold_attention:
            stack.enter_context(attention(model, hold=True))
        yield


def _has(model: Model, kind: str, layer: int) -> bool:
    try:
        model.check_site(Site(kind, layer))
    except GatescopeError:
        return False
    return True
