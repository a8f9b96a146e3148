"""Attention corrections for AtP* and RelP* (after Kramar et al. 2024, arXiv 2403.00745).

AtP's linear estimate fails where attention saturates: a patched key (or query) can move a
softmax far from where its gradient was taken. For every residual-stream component c (its
write ``D_c`` into the residual stream, restricted to its position) and every attention
layer l that reads it directly through the skip path (l >= c's layer for ``resid_pre``,
l > it otherwise), the attention block of l is recomputed exactly on the corrupt input plus
``D_c`` (its input norm, q / k / v, every query's softmax, the output projection and gate):

- ``atp*``: ``score(c) = AtP(c) + sum_l [(o'_l - o_l) . g_l  -  D_c . (g(resid_pre.l) -
  g(resid_mid.l))]``: the exact change of block l's output replaces AtP's linear estimate
  through block l (``g(resid_pre.l) - g(resid_mid.l)`` is the gradient into block l alone).
  Exact on a model whose only nonlinearity is attention and which has one attention layer;
  a k-composition path (a head patched, the next layer's keys move) is caught where it is
  the direct effect.
- ``relp*``: RelP with attention held constant carries the value path; the change the
  patched component makes through the attention pattern is added exactly:
  ``sum_l (o'_l - o''_l) . r_l``, where ``o''_l`` is block l's output with the patched
  input but the corrupt run's attention probabilities, and ``r_l`` the RelP coefficient at
  the attention output.

``g_l`` / ``r_l``: the (LRP) gradient at ``attn_out.l``. Components of other kinds (gates,
MLP internals) keep the uncorrected score. Cost: one attention-block call (on the N prompts)
per component and downstream attention layer, plus one corrupt forward; components whose
write is zero (positions before the first differing token) are skipped. GradDrop is not
implemented.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from circuits.projections import o_proj_slices
from probe.errors import GatescopeError
from probe.model import Model, resolve_path
from probe.sites import Site
from probe.tasks import TaskBatch

PROBE_ATTENTION = "gatescope_probe"
_STATE: dict = {"record": None, "frozen": None, "qkv": None, "substitute": None}
RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out")


def correction_sites(model: Model) -> list[Site]:
    """Sites whose values and gradients the corrections read."""
    kinds = ("resid_pre", "resid_mid", "attn_out", "head_out")
    return [Site(k, i) for i in range(model.dims.n_layers) for k in kinds]


def _probe_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention that records its probabilities or uses frozen ones (per layer), and
    records or substitutes its queries, keys and values (for path patching)."""
    layer = getattr(module, "layer_idx", None)
    if _STATE["substitute"] is not None and layer in _STATE["substitute"]:
        given = _STATE["substitute"][layer]
        query = given.get("q", query).to(query.dtype)
        key = given.get("k", key).to(key.dtype)
        value = given.get("v", value).to(value.dtype)
    if _STATE["qkv"] is not None:
        _STATE["qkv"][layer] = {"q": query.detach(), "k": key.detach(), "v": value.detach()}
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if _STATE["frozen"] is not None:
        probs = _STATE["frozen"][layer].to(query.dtype)
    if _STATE["record"] is not None:
        _STATE["record"][layer] = probs.detach()
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


@contextmanager
def probe_attention(
    model: Model,
    record: dict | None = None,
    frozen: dict | None = None,
    qkv: dict | None = None,
    substitute: dict | None = None,
):
    """Run attention through :func:`_probe_attention`: probabilities recorded into
    ``record`` or taken from ``frozen``; queries / keys / values recorded into ``qkv`` or
    replaced by ``substitute[layer][name]``; restored on exit."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if PROBE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(PROBE_ATTENTION, _probe_attention)
        AttentionMaskInterface.register(PROBE_ATTENTION, eager_mask)
    configs = [m.config for m in model.hf.modules() if hasattr(m, "config")]
    configs = list({id(c): c for c in configs}.values())
    before = [c._attn_implementation for c in configs]  # pyright: ignore[reportAttributeAccessIssue]
    _STATE.update(record=record, frozen=frozen, qkv=qkv, substitute=substitute)
    try:
        for c in configs:
            c._attn_implementation = PROBE_ATTENTION  # pyright: ignore[reportArgumentType, reportAttributeAccessIssue]
        yield
    finally:
        _STATE.update(record=None, frozen=None, qkv=None, substitute=None)
        for c, b in zip(configs, before, strict=True):
            c._attn_implementation = b  # pyright: ignore[reportAttributeAccessIssue]


def _attention_module(model: Model, layer: int):
    """The attention block of ``layer`` (the parent of the ``head_out`` projection); refused
    where ``attn_out`` is not that block's output (sandwich-norm families)."""
    taps = model.family.taps
    head_path = taps["head_out"].modules[0]
    path = head_path.rsplit(".", 1)[0]
    module = resolve_path(model.layer(layer), (path,))
    if module is None or path not in taps["attn_out"].modules:
        raise GatescopeError(
            f"attention corrections need attn_out to be the attention block's output; "
            f"family {model.family.name} differs (use atp or relp)"
        )
    return module


_DROP = ("past_key_values", "past_key_value", "cache", "layer_past")


class _Blocks:
    """Per layer: the attention call's arguments and probabilities (one corrupt forward),
    and a call of the block on another residual input."""

    @torch.no_grad()
    def __init__(self, model: Model, batch: TaskBatch) -> None:
        self.model, n = model, model.dims.n_layers
        self.modules = [_attention_module(model, i) for i in range(n)]
        self.norms = [resolve_path(model.layer(i), (model.family.attn_input,)) for i in range(n)]
        self.calls: dict[int, tuple] = {}
        self.probs: dict[int, torch.Tensor] = {}
        self.qkv: dict[int, dict] = {}
        handles = []
        for i, m in enumerate(self.modules):
            handles.append(m.register_forward_pre_hook(self._keep(i), with_kwargs=True))
        try:
            with probe_attention(model, record=self.probs, qkv=self.qkv):
                model.forward(batch.corrupt_ids, batch.attention_mask)
        finally:
            for h in handles:
                h.remove()

    def _keep(self, i):
        def hook(module, args, kwargs):
            kw = {k: v for k, v in kwargs.items() if k not in (*_DROP, "hidden_states")}
            if "use_cache" in kw:
                kw["use_cache"] = False
            self.calls[i] = (args[1:], kw, "hidden_states" in kwargs and not args)

        return hook

    @torch.no_grad()
    def __call__(
        self, layer: int, x: torch.Tensor, frozen: bool = False, only: str | None = None
    ) -> torch.Tensor:
        """Block ``layer``'s output for residual input ``x`` (corrupt attention probabilities
        where ``frozen``; with ``only`` ``"q"``, ``"k"`` or ``"v"``, the other two are the
        corrupt run's)."""
        rest, kw, by_name = self.calls[layer]
        module, norm = self.modules[layer], self.norms[layer]
        param = next(module.parameters())
        h = norm(x.to(param.dtype)) if norm is not None else x.to(param.dtype)
        sub = None
        if only is not None:
            sub = {layer: {k: v for k, v in self.qkv[layer].items() if k != only}}
        with probe_attention(self.model, frozen=self.probs if frozen else None, substitute=sub):
            out = module(hidden_states=h, **kw) if by_name else module(h, *rest, **kw)
        return (out[0] if isinstance(out, tuple) else out).float()


def _writes(model: Model, c, run) -> tuple[torch.Tensor, int] | None:
    """The component's write into the residual stream and the first attention layer it
    reaches, or None for kinds that do not write there."""
    if c.kind not in RESIDUAL_KINDS:
        return None
    site = Site(c.kind, c.layer)
    delta = run.clean[site] - run.corrupt[site]
    if c.kind == "head_out":
        delta = delta[:, :, c.head] @ o_proj_slices(model, c.layer)[c.head].T
    if c.position is not None:
        keep = torch.zeros_like(delta)
        keep[:, c.position] = delta[:, c.position]
        delta = keep
    return delta, c.layer if c.kind == "resid_pre" else c.layer + 1


def attention_corrections(model: Model, batch: TaskBatch, comps, run, method) -> list[float]:
    """The correction to add to each component's (unnormalised) score (module docstring)."""
    star_relp = method.name == "relp*"
    blocks = _Blocks(model, batch)
    n = model.dims.n_layers
    x = {i: run.corrupt[Site("resid_pre", i)] for i in range(n)}
    base = {i: blocks(i, x[i]) for i in range(n)}
    out = []
    for c in comps:
        written = _writes(model, c, run)
        total = 0.0
        if written is not None and bool(written[0].abs().amax() > 0):
            delta, first = written
            for layer in range(first, n):
                g = run.grads[Site("attn_out", layer)]
                exact = blocks(layer, x[layer] + delta)
                if star_relp:
                    total += float(((exact - blocks(layer, x[layer] + delta, True)) * g).sum())
                else:
                    through = (
                        run.grads[Site("resid_pre", layer)] - run.grads[Site("resid_mid", layer)]
                    )
                    total += float(((exact - base[layer]) * g).sum())
                    total -= float((delta * through).sum())
        out.append(total)
    return out
