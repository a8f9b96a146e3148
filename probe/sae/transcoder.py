"""TopK transcoders (Dunefsky et al. 2024, arXiv 2406.11944; TopK as in Gao et al. 2024): a
sparse replacement of one layer's MLP, trained from the MLP's input (``resid_mid`` by
default) to its output (``mlp_out``, or a branch such as ``mlp_gate``), registered with
SAELens as the architecture ``topk_transcoder``.

1. Encoder ``pre = x @ W_enc + b_enc`` on the input site (no decoder bias is subtracted: the
   output lives in another space), scaled by the decoder row norms (SAELens's
   ``rescale_acts_by_decoder_norm``), TopK with ReLU; decoder ``y_hat = f @ W_dec + b_dec``
   into the output site. ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_out)``, ``b_dec (d_out,)``.
2. Training (SAELens's ``SAETrainer``): each batch is ``[x | y]`` (``(B, d_in + d_out)``, the
   two sites at the same tokens); the loss is ``||y - y_hat||^2`` plus AuxK (weight 1/32,
   dead latents reconstruct the residual ``y - y_hat``). ``sae_in`` of the step output is
   ``y``, so the running explained variance is that of the MLP output.
3. Saving folds the decoder norms into the encoder (as SAELens's TopK does): the inference
   class :class:`TopKTranscoder` (a subclass of SAELens's ``Transcoder``) loads with
   ``SAE.load_from_disk`` once gatescope has registered it. ``cfg.metadata.hook_name`` is
   the input site and ``hook_name_out`` the output site (SAELens's names for transcoders).
4. :func:`check_transcoder_sites` refuses an output site that is not after the input site
   in the same layer (the order of a pre-norm decoder layer, :data:`STAGE`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens import register_sae_class, register_sae_training_class
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import SAEConfig, TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import (
    TopK,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    act_times_W_dec,
)
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig
from torch import nn

from probe.errors import GatescopeError
from probe.sites import Site

ARCHITECTURE = "topk_transcoder"

#: Where each site kind sits in a decoder layer: an output site must come later than the
#: input site (attention internals, then the attention output, the residual between the
#: blocks, the MLP's branches, its hidden product, its output, the layer's output).
STAGE: dict[str, int] = {
    "resid_pre": 0,
    **dict.fromkeys(
        (
            "head_out",
            "attn_gate_logit",
            "attn_gate",
            "attn_pattern",
            "delta_beta",
            "delta_decay",
            "delta_gate_pre",
            "delta_gate",
            "delta_out",
            "conv_gate",
            "conv_out_gate",
        ),
        1,
    ),
    "attn_out": 2,
    "resid_mid": 3,
    **dict.fromkeys(
        ("router_logit", "router_prob", "router_weight", "shared_gate", "mlp_gate_pre", "mlp_up"),
        4,
    ),
    "mlp_gate": 5,
    "mlp_hidden": 6,
    "mlp_out": 7,
    "resid_post": 8,
}


def default_out_site(site: Site) -> Site:
    """The MLP output of ``site``'s layer (what a transcoder of the MLP replaces)."""
    return Site("mlp_out", site.layer)


def check_transcoder_sites(site: Site, out_site: Site, model=None) -> None:
    """Refuse an output site on another layer, or not after the input site in the layer;
    with ``model``, both sites must exist there and the output must be writable (the
    transcoder's output replaces it when it is evaluated)."""
    example = f"--site resid_mid.{site.layer} --out-site mlp_out.{site.layer}"
    if out_site.layer != site.layer:
        raise GatescopeError(
            f"--out-site {out_site} is on layer {out_site.layer}, the input {site} on layer "
            f"{site.layer}: a transcoder replaces one layer's MLP, so both sites are on one "
            f"layer, e.g. {example}"
        )
    if STAGE[out_site.kind] <= STAGE[site.kind]:
        raise GatescopeError(
            f"--out-site {out_site} does not follow --site {site} in the layer (a transcoder "
            f"maps an input to what the layer computes from it later), e.g. {example}"
        )
    if model is not None:
        model.check_site(site)
        model.check_site(out_site)
        if not model.family.taps[out_site.kind].writable:
            raise GatescopeError(
                f"--out-site {out_site}: {out_site.kind} is read-only, so the transcoder "
                "cannot replace it; choose mlp_out or a writable MLP branch"
            )


def is_transcoder(sae) -> bool:
    """Whether an SAELens SAE maps one site to another (any SAELens transcoder class)."""
    return isinstance(sae, Transcoder)


@dataclass
class TopKTranscoderConfig(TranscoderConfig):
    """Inference config of a TopK transcoder.

    Attributes:
        k: active latents per token.
        rescale_acts_by_decoder_norm: scale the pre-activations by the decoder row norms
            (they are 1 once saved: the norms are folded in).
    """

    k: int = 32
    rescale_acts_by_decoder_norm: bool = True

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class TopKTranscoder(Transcoder):
    """Inference TopK transcoder: SAELens's ``Transcoder`` with a TopK activation."""

    cfg: TopKTranscoderConfig  # type: ignore[assignment]

    def get_activation_fn(self):
        return TopK(self.cfg.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return self.hook_sae_acts_post(self.activation_fn(pre))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        rescale = self.cfg.rescale_acts_by_decoder_norm
        out = act_times_W_dec(feature_acts, self.W_dec, rescale) + self.b_dec
        return self.hook_sae_recons(out)


@dataclass
class TopKTranscoderTrainingSAEConfig(TopKTrainingSAEConfig):
    """Training config of a TopK transcoder.

    Attributes:
        d_out: width of the output site.
    """

    d_out: int = 0
    apply_b_dec_to_input: bool = False

    def __post_init__(self):
        if self.apply_b_dec_to_input:
            raise GatescopeError("a transcoder cannot subtract its decoder bias from its input")
        if self.d_out < 1:
            raise GatescopeError(f"transcoder d_out {self.d_out}: expected the output width")
        super().__post_init__()

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        return TopKTranscoderConfig


class TopKTranscoderTrainingSAE(TopKTrainingSAE):
    """Training TopK transcoder: batches are ``[x | y]``; see the module docstring."""

    cfg: TopKTranscoderTrainingSAEConfig  # type: ignore[assignment]

    def initialize_weights(self) -> None:
        d_in, d_sae, d_out = self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out
        kw = {"dtype": self.dtype, "device": self.device}
        w_dec = torch.empty(d_sae, d_out, **kw)
        nn.init.kaiming_uniform_(w_dec)
        if self.cfg.decoder_init_norm is not None:
            w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * self.cfg.decoder_init_norm
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        if d_in == d_out:  # the encoder starts as the decoder's transpose, as for SAEs
            w_enc = w_dec.T.clone().contiguous()
        else:
            w_enc = torch.empty(d_in, d_sae, **kw)
            nn.init.kaiming_uniform_(w_enc)
            if self.cfg.decoder_init_norm is not None:
                w_enc = w_enc / w_enc.norm(dim=0, keepdim=True) * self.cfg.decoder_init_norm
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        sae_in = self.hook_sae_input(sae_in.to(self.dtype))
        return self.run_time_activation_norm_fn_in(sae_in)

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[x | y]`` (B, d_in + d_out) into x (B, d_in) and y (B, d_out)."""
        d_in, d_out = self.cfg.d_in, self.cfg.d_out
        if batch.shape[-1] != d_in + d_out:
            raise GatescopeError(
                f"transcoder batch is {batch.shape[-1]} wide, expected d_in + d_out = "
                f"{d_in} + {d_out}"
            )
        return batch[..., :d_in], batch[..., d_in:]

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x, y = self.split(step_input.sae_in)
        y = y.to(self.dtype)
        feature_acts, hidden_pre = self.encode_with_hidden_pre(x)
        y_hat = self.decode(feature_acts)
        mse = self.mse_loss_fn(y_hat, y).sum(dim=-1).mean()
        aux = self.calculate_topk_aux_loss(
            sae_in=y,
            sae_out=y_hat,
            hidden_pre=hidden_pre,
            dead_neuron_mask=step_input.dead_neuron_mask,
        )
        return TrainStepOutput(
            sae_in=y,
            sae_out=y_hat,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=mse + aux,
            losses={"mse_loss": mse, "auxiliary_reconstruction_loss": aux},
        )


def register() -> None:
    """Register ``topk_transcoder`` with SAELens (idempotent)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, TopKTranscoder, TopKTranscoderConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(
            ARCHITECTURE, TopKTranscoderTrainingSAE, TopKTranscoderTrainingSAEConfig
        )
