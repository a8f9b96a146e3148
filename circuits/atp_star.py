"""Attention corrections for AtP* and RelP*, and GradDrop (Kramar et al. 2024, arXiv
2403.00745).

**QK fix.** AtP's linear estimate fails where attention saturates: a patched key (or query)
can move a softmax far from where its gradient was taken. For every component c with an
exact write ``D_c`` into the residual stream (restricted to its position) and every
full-attention layer l that reads it directly through the skip path (l >= c's layer for
``resid_pre``, l > it otherwise), the attention block of l is recomputed exactly on the
corrupt input plus ``D_c`` (its input norm, q / k / v, every query's softmax, the output
projection and gate; :mod:`circuits.attention`):

- ``atp*``: ``score(c) = AtP(c) + sum_l [(o'_l - o_l) . g_l  -  D_c . (g(resid_pre.l) -
  g(resid_mid.l))]``: the exact change of block l's output replaces AtP's linear estimate
  through block l (``g(resid_pre.l) - g(resid_mid.l)`` is the gradient into block l alone).
  Exact on a model whose only nonlinearity is attention and which has one attention layer.
- ``relp*``: RelP with attention held constant carries the value path; the change the
  patched component makes through the attention pattern is added exactly:
  ``sum_l (o'_l - o''_l) . r_l``, where ``o''_l`` is block l's output with the patched
  input but the corrupt run's attention probabilities, and ``r_l`` the RelP coefficient at
  the attention output.

``g_l`` / ``r_l``: the (LRP) gradient at ``attn_out.l``.

**Which components** (:func:`component_write`). Residual-stream kinds (``resid_*``,
``attn_out``, ``mlp_out``, ``head_out`` through its ``o_proj`` slice) write ``D`` directly.
Gate sites whose write is a cheap, exact function of the two runs' traced values are
corrected too, an extension of the paper's fix to gates:

- attention output gate (``attn_gate``, ``attn_gate_logit``): the head's new output is
  ``z_corrupt * sigmoid(l_clean) / sigmoid(l_corrupt)``, so ``D`` is that change through the
  head's ``o_proj`` slice; for ``atp*`` the gate's own sigmoid is evaluated exactly too (the
  AtP part becomes ``dz . g(head_out)``: a saturated gate is the same failure as a
  saturated softmax);
- GLU sites of a dense MLP (``mlp_hidden``, ``mlp_gate``, ``mlp_up``, ``mlp_gate_pre``): the
  hidden change with the other factor at its corrupt value (``mlp_gate_pre`` through the
  activation, evaluated exactly for ``atp*`` like the attention gate), through ``down_proj``.

Not corrected, and why: Gated-DeltaNet sites (``delta_*``) act through the recurrence on
every later position, so their write is the whole layer rerun per component (activation
patching itself); router sites change a discrete top-k choice of experts (again the whole
MoE block per component); the shared-expert gate scales an output no site exposes; gated
short convolutions likewise mix positions. Gated-DeltaNet layers are not recomputed as
readers either: their nonlinearity is not a softmax over keys.

**GradDrop** (``AtPStar(grad_drop=True)``): cancellation between a component's direct and
indirect effects can leave AtP near 0 where patching is not. For each layer l the backward
pass is rerun with the gradient through layer l's writes into the residual stream
(``attn_out.l`` and ``mlp_out.l``) set to zero, giving ``score_l(c)`` (AtP* above, from that
pass's gradients); GradDrop is ``1 / (L - 1) * sum_l |score_l(c)|``, a magnitude (>= 0: it
ranks components, it has no sign). A component in layer k gets 0 from l = k (its own write
is dropped) and its plain score from l < k, so with no effect through later layers the
figure is ``|AtP*(c)|``. Cost: L more backward passes of the one corrupt forward.

Cost of the QK fix: one attention-block call (on the N prompts) per component and
downstream attention layer, plus one corrupt forward; components whose write is zero
(positions before the first differing token) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.attention import attention, attention_module
from circuits.projections import o_proj_slices
from probe.locate import locate, resolve_path
from probe.model import Model
from probe.sites import Site
from probe.tasks import TaskBatch

RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out")
ATTN_GATE_KINDS = ("attn_gate", "attn_gate_logit")
GLU_KINDS = ("mlp_hidden", "mlp_gate", "mlp_up", "mlp_gate_pre")


def attention_layers(model: Model) -> list[int]:
    """The layers whose token mixer is softmax attention with per-head outputs."""
    return model.layers_with("head_out")


def correction_sites(model: Model, comps=()) -> list[Site]:
    """Sites whose values and gradients the corrections read (for ``comps``)."""
    kinds = ("resid_pre", "resid_mid", "attn_out", "head_out")
    sites = [Site(k, i) for i in range(model.dims.n_layers) for k in kinds]
    for c in comps:
        if c.kind in GLU_KINDS:
            sites += [Site(k, c.layer) for k in ("mlp_hidden", "mlp_gate", "mlp_up")]
        if c.kind in ATTN_GATE_KINDS:
            sites.append(Site("attn_gate_logit", c.layer))
    return sorted({s for s in sites if model.has_site(s)})


_DROP = ("past_key_values", "past_key_value", "cache", "layer_past")


class _Blocks:
    """Per attention layer: the attention call's arguments and probabilities (one corrupt
    forward), and a call of the block on another residual input."""

    @torch.no_grad()
    def __init__(self, model: Model, batch: TaskBatch) -> None:
        self.model = model
        self.layers = attention_layers(model)
        self.modules = {i: attention_module(model, i) for i in self.layers}
        self.norms = {
            i: resolve_path(model.layer(i), (model.family.attn_input,)) for i in self.layers
        }
        self.calls: dict[int, tuple] = {}
        self.probs: dict[int, torch.Tensor] = {}
        self.qkv: dict[int, dict] = {}
        handles = [
            m.register_forward_pre_hook(self._keep(i), with_kwargs=True)
            for i, m in self.modules.items()
        ]
        try:
            with attention(model, record_probs=self.probs, record_qkv=self.qkv):
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
            sub = {layer: {k: (v, None) for k, v in self.qkv[layer].items() if k != only}}
        with attention(self.model, frozen=self.probs if frozen else None, substitute=sub):
            out = module(hidden_states=h, **kw) if by_name else module(h, *rest, **kw)
        return (out[0] if isinstance(out, tuple) else out).float()


@dataclass
class Write:
    """A component's exact write into the residual stream.

    Attributes:
        delta: (N, T, d_model) the change of the stream (zero outside the component's
            position).
        first: the first layer whose attention reads it.
        own: for gates whose own nonlinearity is evaluated exactly (``atp*``), the
            (unnormalised) AtP part per gradient set; ``None`` keeps the linear AtP part.
    """

    delta: torch.Tensor
    first: int
    own: list[float] | None = None


def _at(t: torch.Tensor, position: int | None) -> torch.Tensor:
    """``t`` with every position except ``position`` zeroed (``None``: unchanged)."""
    if position is None:
        return t
    keep = torch.zeros_like(t)
    keep[:, position] = t[:, position]
    return keep


def _module_write(module, change: torch.Tensor) -> torch.Tensor:
    """``module(change) - module(0)``: a linear layer's output change, without its bias."""
    param = next(module.parameters())
    with torch.no_grad():
        x = change.to(param.dtype)
        return (module(x) - module(torch.zeros_like(x[:1, :1]))).float()


def _gate_change(model: Model, c, run) -> torch.Tensor | None:
    """The head's output change (N, T, d_head) when its gate logits take the clean values."""
    logit = Site("attn_gate_logit", c.layer)
    lc, lx = run.clean[logit][:, :, c.head], run.corrupt[logit][:, :, c.head]  # (N, T, g)
    zx = run.corrupt[Site("head_out", c.layer)][:, :, c.head]  # (N, T, d_head)
    if lc.shape[-1] not in (1, zx.shape[-1]):
        return None  # gate rows per KV group: no per-head elementwise product
    ratio = torch.exp(torch.nn.functional.logsigmoid(lc) - torch.nn.functional.logsigmoid(lx))
    return zx * (ratio - 1.0)


def _hidden_change(model: Model, c, run) -> torch.Tensor | None:
    """The GLU product's change (N, T, d_mlp), the other factor at its corrupt value."""
    site = lambda k: Site(k, c.layer)  # noqa: E731
    clean, corrupt = run.clean, run.corrupt
    if c.kind == "mlp_hidden":
        return clean[site("mlp_hidden")] - corrupt[site("mlp_hidden")]
    if c.kind == "mlp_gate":
        return (clean[site("mlp_gate")] - corrupt[site("mlp_gate")]) * corrupt[site("mlp_up")]
    if c.kind == "mlp_up":
        return corrupt[site("mlp_gate")] * (clean[site("mlp_up")] - corrupt[site("mlp_up")])
    act = (
        resolve_path(model.layer(c.layer), (model.family.mlp_act,))
        if model.family.mlp_act
        else None
    )
    if act is None:
        return None
    pre = site("mlp_gate_pre")
    param = next(locate(model, site("mlp_hidden")).parameters())
    with torch.no_grad():
        gate = act(clean[pre].to(param.dtype)).float() - act(corrupt[pre].to(param.dtype)).float()
    return gate * corrupt[site("mlp_up")]


def component_write(model: Model, c, run, grad_sets: list[dict]) -> Write | None:
    """The exact write of component ``c`` (module docstring), or None for kinds not
    corrected."""
    if c.kind in RESIDUAL_KINDS:
        site = Site(c.kind, c.layer)
        delta = run.clean[site] - run.corrupt[site]
        if c.kind == "head_out":
            delta = delta[:, :, c.head] @ o_proj_slices(model, c.layer)[c.head].T
        first = c.layer if c.kind == "resid_pre" else c.layer + 1
        return Write(_at(delta, c.position), first)
    if c.kind in ATTN_GATE_KINDS:
        dz = _gate_change(model, c, run)
        if dz is None:
            return None
        dz = _at(dz, c.position)
        grad_site = Site("head_out", c.layer)
        own = [float((dz * g[grad_site][:, :, c.head]).sum()) for g in grad_sets]
        delta = dz @ o_proj_slices(model, c.layer)[c.head].T
        return Write(delta, c.layer + 1, own)
    if c.kind in GLU_KINDS:
        dh = _hidden_change(model, c, run)
        if dh is None:
            return None
        dh = _at(dh, c.position)
        hidden = Site("mlp_hidden", c.layer)
        own = None
        if c.kind == "mlp_gate_pre":
            own = [float((dh * g[hidden]).sum()) for g in grad_sets]
        return Write(_module_write(locate(model, hidden), dh), c.layer + 1, own)
    return None


def attention_corrections(
    model: Model, batch: TaskBatch, comps, run, method, grad_sets: list[dict]
) -> list[list[tuple[float | None, float]] | None]:
    """Per component, per gradient set in ``grad_sets``: the (unnormalised) score replacing
    the plain ``(clean - corrupt) . gradient`` product's correction, as
    ``(own or None, correction)`` pairs; ``None`` for components not corrected (module
    docstring). ``grad_sets[k]`` maps sites to gradients (the plain pass, then GradDrop's)."""
    star_relp = method.name == "relp*"
    layers = attention_layers(model)
    blocks = _Blocks(model, batch) if layers else None
    x = {i: run.corrupt[Site("resid_pre", i)] for i in layers}
    base = {i: blocks(i, x[i]) for i in layers} if blocks else {}
    out: list[list[tuple[float | None, float]] | None] = []
    for c in comps:
        written = component_write(model, c, run, grad_sets)
        if written is None:
            out.append(None)
            continue
        totals = [0.0] * len(grad_sets)
        if bool(written.delta.abs().amax() > 0):
            for layer in (i for i in layers if i >= written.first):
                assert blocks is not None  # layers is not empty
                moved = x[layer] + written.delta
                exact = blocks(layer, moved)
                diff = exact - (blocks(layer, moved, True) if star_relp else base[layer])
                for k, g in enumerate(grad_sets):
                    totals[k] += float((diff * g[Site("attn_out", layer)]).sum())
                    if not star_relp:
                        through = g[Site("resid_pre", layer)] - g[Site("resid_mid", layer)]
                        totals[k] -= float((written.delta * through).sum())
        own = written.own if not star_relp else None
        out.append([(None if own is None else own[k], totals[k]) for k in range(len(grad_sets))])
    return out
