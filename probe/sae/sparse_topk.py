"""TopK SAE training with a sparse decoder and a sparse backward pass.

SAELens's ``TopKTrainingSAE`` computes its loss through dense ``(batch, d_sae)`` tensors: the
top-k activations are scattered into zeros and decoded with a dense matmul (twice, with the
AuxK term), and autograd differentiates every one of them. With ``k << d_sae`` nearly all of
that arithmetic multiplies zeros. This subclass computes the same loss and gradients (same
formulas, equal to float rounding; checked against SAELens's pass in the tests) touching
only what is active:

1. ``pre = sae_in @ (W_enc * n) + b_enc * n`` for every latent, without autograd (it only
   chooses latents); ``n = ||W_dec||`` per latent (SAELens's ``rescale_acts_by_decoder_norm``)
   or 1. ``(B, d_sae)``, in a buffer kept from step to step (a fresh 4 MB tensor per step
   costs page faults on a CPU).
2. ``idx = topk(pre, k)`` (:func:`topk_indices`, exact, in two stages); AuxK's
   ``k_aux = d_in / 2`` latents are the top of ``pre`` among the dead latents only. With few
   dead latents (at most ``4 * k_aux``) AuxK runs as dense products over those columns;
   with more, its latents join the sparse steps below.
3. The ``N`` chosen pre-activations ``raw = pre / n`` get autograd through
   :class:`_Chosen`, whose backward pass is one sparse ``(d_sae, B) @ (B, d_in)`` product for
   ``W_enc`` and a vector-matrix product for ``b_dec`` (``sae_in = x - b_dec``).
4. SAELens decodes ``relu(raw * n) / n * W_dec[i] = relu(raw) * W_dec[i]`` (AuxK: ``raw``), so
   the decoder norm only chooses latents; its gradient through that rescaling cancels and it
   stays out of autograd. Both reconstructions decode in one ``embedding_bag`` over ``2B``
   bags (Gao et al.'s sparse decoder; sparsify decodes the same way), whose backward pass
   is two sparse products (:class:`_BagDecode`).

``feature_acts`` (SAELens's scaled activations) is a sparse COO tensor, and the per-latent
firing counts of the step are in ``last_fired``: gatescope's trainer reads those instead of
summing a dense mask (SAELens's own trainer sums the COO tensor: slower, the same numbers).
The SAE saves as a plain SAELens ``topk`` SAE (same parameters, same config). Configurations
the fast pass does not cover (an SAE off the CPU -- its sparse kernels are tested on CPUs
only --, activation normalisation, ``hook_z`` reshaping, sparse activations, an error term,
hooks on the SAE) run SAELens's own pass.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import TopKTrainingSAE

#: With at most this many times ``k_aux`` dead latents, AuxK runs as dense products over them.
DENSE_AUX_FACTOR = 4


def _csr(crow, cols, values, shape) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


@dataclass
class _Layout:
    """Where the ``N`` chosen (row, latent) pairs of a step sit: ``flat`` (N,) latents, the
    main block (``B * k``) then AuxK's (``B * k_aux``); the pairs sorted by latent
    (``order``, CSR row pointers ``crow``) with each one's input row and decode bag (main bags
    ``0 .. B-1``, AuxK's ``B .. 2B-1``), for the backward products."""

    flat: torch.Tensor
    order: torch.Tensor
    crow: torch.Tensor
    row_sorted: torch.Tensor
    bag_sorted: torch.Tensor
    offsets: torch.Tensor
    d_sae: int
    batch: int
    bags: int

    @classmethod
    def of(cls, blocks: list[torch.Tensor], d_sae: int) -> _Layout:
        batch, dev = blocks[0].shape[0], blocks[0].device
        flat = torch.cat([b.flatten() for b in blocks])  # (N,)
        lengths = torch.cat([torch.full((batch,), b.shape[1], device=dev) for b in blocks])
        offsets = torch.cumsum(lengths, 0) - lengths  # (bags,) where each bag starts
        small = torch.int16 if d_sae <= torch.iinfo(torch.int16).max else torch.int32
        order = flat.to(small).argsort()  # small keys sort faster
        crow = torch.zeros(d_sae + 1, dtype=torch.int32, device=dev)
        crow[1:] = torch.bincount(flat, minlength=d_sae).cumsum(0)
        bags = torch.arange(len(lengths), dtype=torch.int32, device=dev)
        bag_sorted = bags.repeat_interleave(lengths)[order]  # (N,) decode bag of each pair
        row_sorted = bag_sorted % batch  # its input row
        return cls(flat, order, crow, row_sorted, bag_sorted, offsets, d_sae, batch, len(bags))

    def by_bag(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse ``(bags, d_sae)`` matrix with ``values[i]`` at ``(bag[i], flat[i])``."""
        crow = torch.cat([self.offsets, self.offsets.new_tensor([self.flat.numel()])])
        return _csr(crow, self.flat, values, (self.bags, self.d_sae))

    def by_latent(self, values: torch.Tensor, by_bag: bool) -> torch.Tensor:
        """The sparse matrix with ``values[i]`` at ``(flat[i], row[i])``: ``(d_sae, B)``, or at
        ``(flat[i], bag[i])``: ``(d_sae, bags)``."""
        cols, n = (self.bag_sorted, self.bags) if by_bag else (self.row_sorted, self.batch)
        return _csr(self.crow, cols, values[self.order], (self.d_sae, n))


class _Chosen(torch.autograd.Function):
    """``(sae_in @ W_enc + b_enc)[row[i], flat[i]]`` (N,) with ``sae_in = x - s * b_dec``,
    given those values; the backward pass multiplies the sparse gradient once."""

    @staticmethod
    def forward(ctx, values, sae_in, b_dec, w_enc, b_enc, layout: _Layout, b_dec_sign: float):
        ctx.save_for_backward(sae_in, w_enc)
        ctx.layout, ctx.b_dec_sign = layout, b_dec_sign
        return values.clone()

    @staticmethod
    def backward(ctx, grad):  # grad: (N,)
        sae_in, w_enc = ctx.saved_tensors
        lay = ctx.layout
        grad_b = grad.new_zeros(lay.d_sae).index_add_(0, lay.flat, grad)  # (d_sae,)
        grad_w = None
        if ctx.needs_input_grad[3]:
            grad_w = (lay.by_latent(grad, by_bag=False) @ sae_in).t()  # (d_in, d_sae)
        grad_b_dec = ctx.b_dec_sign * (w_enc @ grad_b) if ctx.needs_input_grad[2] else None
        return None, None, grad_b_dec, grad_w, grad_b, None, None


class _BagDecode(torch.autograd.Function):
    """``out[bag[i]] += w[i] * W_dec[flat[i]]``: ``(bags, d_in)``, by ``embedding_bag``. The
    backward pass is two sparse products: ``W_dec``'s gradient ``(d_sae, bags) @ grad`` and the
    weights' ``grad @ W_dec^T`` sampled at the ``N`` (bag, latent) pairs."""

    @staticmethod
    def forward(ctx, weights, w_dec, layout: _Layout):
        ctx.save_for_backward(weights, w_dec)
        ctx.layout = layout
        return F.embedding_bag(
            layout.flat, w_dec, layout.offsets, mode="sum", per_sample_weights=weights
        )

    @staticmethod
    def backward(ctx, grad):  # grad: (bags, d_in)
        weights, w_dec = ctx.saved_tensors
        lay = ctx.layout
        grad_weights = grad_w_dec = None
        if ctx.needs_input_grad[0]:
            pattern = lay.by_bag(weights)  # (bags, d_sae): where to sample
            grad_weights = torch.sparse.sampled_addmm(pattern, grad, w_dec.t(), beta=0.0)
            grad_weights = grad_weights.values()  # (N,) in the order of ``flat``
        if ctx.needs_input_grad[1]:
            grad_w_dec = lay.by_latent(weights, by_bag=True) @ grad  # (d_sae, d_in)
        return grad_weights, grad_w_dec, None


@dataclass
class _Aux:
    """AuxK's choice for a step: the dead latents ``dead`` (n_dead,), the loss scale
    ``min(n_dead / k_aux, 1)``, and the top ``k_aux`` dead latents of each row, either as
    latent indices ``latents`` (B, k_aux), decoded sparsely with the main ones, or (with few
    dead latents, where dense products over them cost less) as a 0/1 ``mask`` (B, n_dead)."""

    dead: torch.Tensor
    scale: float
    latents: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @property
    def sparse(self) -> bool:
        return self.latents is not None


def _aux_latents(pre, dead: torch.Tensor | None, d_in: int) -> _Aux | None:
    """AuxK's latents: the top of ``pre`` among the dead (SAELens's formula); None when no
    latent is dead."""
    if dead is None or (num_dead := int(dead.sum())) == 0:
        return None
    k_aux = d_in // 2
    scale = min(num_dead / k_aux, 1.0)
    dead_idx = torch.nonzero(dead).flatten()  # (n_dead,)
    top = pre.index_select(-1, dead_idx).topk(min(k_aux, num_dead), dim=-1, sorted=False)
    if num_dead > DENSE_AUX_FACTOR * k_aux:
        return _Aux(dead_idx, scale, latents=dead_idx[top.indices])
    mask = torch.zeros(pre.shape[0], num_dead, dtype=pre.dtype, device=pre.device)
    return _Aux(dead_idx, scale, mask=mask.scatter_(-1, top.indices, 1.0))


def topk_indices(pre: torch.Tensor, k: int, group: int = 4) -> torch.Tensor:
    """Indices (B, k) of the ``k`` largest entries of each row of ``pre`` (B, D), in two
    exact stages: the top ``k`` groups of ``group`` consecutive entries by their maxima, then
    the top ``k`` among those groups' entries. Every top-k entry lies in such a group (a
    group whose maximum is beaten by ``k`` other groups' maxima holds no top-k entry), and
    on a CPU the two small top-k's cost less than one over the whole row. Ties may pick
    another index of equal value than ``torch.topk``."""
    rows, width = pre.shape
    if width % group or width // group < 2 * k:
        return pre.topk(k, dim=-1, sorted=False).indices
    grouped = pre.view(rows, width // group, group)
    top_groups = torch.amax(grouped, -1).topk(k, dim=-1, sorted=False).indices  # (B, k)
    members = grouped.gather(1, top_groups[..., None].expand(-1, -1, group))  # (B, k, group)
    best = members.view(rows, k * group).topk(k, dim=-1, sorted=False).indices  # (B, k)
    return top_groups.gather(1, best // group) * group + best % group


class SparseTopKTrainingSAE(TopKTrainingSAE):
    """SAELens's TopK training SAE whose training pass is sparse (see the module docstring)."""

    def _fast_ok(self) -> bool:
        cfg = self.cfg
        hooks = (self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_recons)
        return (
            self.W_enc.device.type == "cpu"  # the sparse kernels are checked on CPUs only
            and cfg.normalize_activations == "none"
            and cfg.reshape_activations == "none"
            and not cfg.use_sparse_activations
            and not self.use_error_term
            and not any(h._forward_hooks or h._forward_pre_hooks for h in hooks)
        )

    def _buffer(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, d_sae)`` pre-activation tensor, kept from step to step: a fresh 4 MB
        tensor every step costs page faults on a CPU (the allocator hands freed memory back
        to the kernel). ``hidden_pre`` of a step is overwritten by the next one."""
        shape = (x.shape[0], self.cfg.d_sae)
        buf = self.__dict__.get("_pre_buffer")
        if buf is None or buf.shape != shape or buf.device != x.device or buf.dtype != x.dtype:
            buf = self.__dict__["_pre_buffer"] = x.new_empty(shape)  # pyright: ignore[reportIndexIssue]
        return buf

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if not self._fast_ok():
            out = super().training_forward_pass(step_input)
            with torch.no_grad():
                self.last_fired = (out.feature_acts != 0).sum(-2).to(out.feature_acts.dtype)
            return out
        x = step_input.sae_in.to(self.dtype)  # (B, d_in)
        sign = -1.0 if self.cfg.apply_b_dec_to_input else 0.0
        with torch.no_grad():
            sae_in = x + sign * self.b_dec
            pre, n, idx, aux, lay, raw = self._choose(x, sae_in, step_input)
        chosen = _Chosen.apply(raw, sae_in, self.b_dec, self.W_enc, self.b_enc, lay, sign)
        main = idx.numel()
        acts = chosen[:main].relu()  # (B * k,)
        weights = torch.cat([acts, chosen[main:]])  # AuxK decodes its values as they are
        out = _BagDecode.apply(weights, self.W_dec, lay)  # (B [+ B], d_in)
        sae_out = out[: len(x)] + self.b_dec
        mse = self.mse_loss_fn(sae_out, x).sum(dim=-1).mean()
        aux_loss = sae_out.new_tensor(0.0)
        if aux is not None:
            if aux.sparse:  # decoded in the bags after the main ones
                recons = out[len(x) :]
            else:
                recons = self._dense_aux(x, sign, aux)
            residual = (x - sae_out).detach()
            aux_loss = (recons - residual).pow(2).sum(-1).mean()
            aux_loss = self.cfg.aux_loss_coefficient * aux.scale * aux_loss
        return TrainStepOutput(
            sae_in=x,
            sae_out=sae_out,
            feature_acts=self._feature_acts(idx, acts.detach() * n[idx.flatten()], pre.shape),
            hidden_pre=pre,
            loss=mse + aux_loss,
            losses={"mse_loss": mse, "auxiliary_reconstruction_loss": aux_loss},
        )

    def _choose(self, x, sae_in, step_input: TrainStepInput):
        """Steps 1-2: scaled pre-activations, the chosen latents (and AuxK's), the layout of
        the sparse ones, and their unscaled values ``raw`` (N,)."""
        w_dec, b_enc = self.W_dec, self.b_enc
        if self.cfg.rescale_acts_by_decoder_norm:
            n = w_dec.norm(dim=-1)  # (d_sae,)
        else:
            n = torch.ones_like(b_enc)
        pre = torch.addmm(b_enc * n, sae_in, self.W_enc * n, out=self._buffer(x))
        idx = topk_indices(pre, self.cfg.k)  # (B, k)
        aux = _aux_latents(pre, step_input.dead_neuron_mask, x.shape[-1])
        blocks = [idx, aux.latents] if aux is not None and aux.sparse else [idx]
        lay = _Layout.of(blocks, pre.shape[1])
        raw = torch.cat([pre.gather(-1, b).flatten() for b in blocks]) / n[lay.flat]  # (N,)
        return pre, n, idx, aux, lay, raw

    def _dense_aux(self, x, sign: float, aux: _Aux) -> torch.Tensor:
        """AuxK's reconstruction over the few dead latents as dense products: their unscaled
        pre-activations, kept where chosen, times their decoder rows (B, d_in)."""
        cols = aux.dead  # (n_dead,)
        sae_in = x + sign * self.b_dec  # with autograd, for b_dec's share
        values = sae_in @ self.W_enc[:, cols] + self.b_enc[cols]  # (B, n_dead)
        return (values * aux.mask) @ self.W_dec[cols]

    def _feature_acts(self, idx, values, shape) -> torch.Tensor:
        """SAELens's scaled activations as a sparse COO ``(B, d_sae)`` tensor; the tokens on
        which each latent fired go to ``last_fired`` (d_sae,), which gatescope's trainer
        counts instead of summing a dense ``(B, d_sae)`` mask."""
        rows = torch.arange(len(idx), device=idx.device).repeat_interleave(idx.shape[1])
        flat = idx.flatten()
        self.last_fired = torch.bincount(flat[values > 0], minlength=shape[1]).to(values.dtype)
        return torch.sparse_coo_tensor(
            torch.stack([rows, flat]), values, shape, check_invariants=False
        )
