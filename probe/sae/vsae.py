"""Variational TopK SAE (vSAE, arXiv 2509.22994), registered as the SAELens architecture "vsae".

1. Encoder mean ``mu = ReLU(W_enc (x - b_dec) + b_enc)``, measured in units of unit-norm
   decoder rows (SAELens's ``rescale_acts_by_decoder_norm``: ``mu *= ||W_dec[i]||``).
2. Optional log-variance head ``logvar = clamp(W_lv (x - b_dec) + b_lv, -6, 2)``; without it
   ``logvar = 0`` (unit variance).
3. Training, by ``reading`` (one option, two readings of the paper):

   - ``"code"`` (default; the authors' released code for their Pythia results): no sampling,
     ``z = mu``; KL(N(mu, sigma^2) || N(0, 1)) weighted by ``beta`` (1) summed over all
     latents; no AuxK (gatescope sets the AuxK weight to 0 for this reading). Which reading
     reproduces the paper's direction (fewer live latents than TopK at similar
     reconstruction) on ``reference`` is measured by ``bench/sae_topk_vs_vsae.py``.
   - ``"paper"`` (the paper's text): reparameterised sampling ``z = mu + eps * sigma`` with
     a learned (``learn_variance``) or fixed (sigma = 1) variance, plus AuxK. With sigma
     near 1 the KL term can shrink the means far below sigma and the noise choose the latents:
     posterior collapse (see below).

   Then keep the top-k of ``|z|`` with their sign, decode ``x_hat = z_topk @ unit(W_dec) +
   b_dec``. Eval/inference: ``z = mu`` (deterministic), top-k, decode, for both readings.
4. Loss = MSE + beta * warmup * KL + AuxK weight * AuxK; the KL coefficient warms up
   linearly over ``kl_warm_up_steps`` (SAELens's coefficient scheduler; gatescope sets 10%
   of the steps).
5. Posterior-collapse diagnostics, every training step (metrics ``mean_abs_mu``,
   ``mean_sigma``, ``noise_fraction``): the mean of ``mu`` over the latents the mean alone
   would select, the mean sigma, and the fraction of the k selections that differ from the
   top-k of ``mu`` (chosen by the noise, 0 without sampling). :func:`collapse_warning` turns
   averages of them into a warning when ``mean_abs_mu < mean_sigma`` or more than a quarter
   of the selections are decided by noise: over the last 50 steps during training (the
   trainer checks every 50 steps after the KL warm-up and warns at once) and over the whole
   run at the end.

Weights: ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``, ``W_dec (d_sae, d_in)``, ``b_dec (d_in,)``,
and with the variance head ``W_logvar (d_in, d_sae)``, ``b_logvar (d_sae,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens import register_sae_class, register_sae_training_class
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes.sae import (
    SAEConfig,
    TrainCoefficientConfig,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.topk_sae import (
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    act_times_W_dec,
)
from torch import nn

ARCHITECTURE = "vsae"
LOGVAR_MIN, LOGVAR_MAX = -6.0, 2.0
READINGS = ("code", "paper")
NOISE_FRACTION_WARN = 0.25


@dataclass
class VSAEConfig(TopKSAEConfig):
    """Inference config of a vSAE.

    Attributes:
        learn_variance: the SAE has a log-variance head (kept for inspection; inference
            uses the mean only).
    """

    learn_variance: bool = True

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass
class VSAETrainingSAEConfig(TopKTrainingSAEConfig):
    """Training config of a vSAE.

    Attributes:
        beta: weight of the KL term after warm-up (the paper uses 1).
        learn_variance: learn a log-variance head; otherwise sigma = 1.
        kl_warm_up_steps: steps over which the KL weight rises linearly from 0 to ``beta``.
        reading: ``"code"`` (z = mu, no sampling) or ``"paper"`` (reparameterised sampling);
            see the module docstring.
    """

    beta: float = 1.0
    learn_variance: bool = True
    kl_warm_up_steps: int = 0
    reading: str = "code"

    def __post_init__(self):
        super().__post_init__()
        if self.reading not in READINGS:
            from probe.errors import GatescopeError

            raise GatescopeError(
                f"vSAE reading {self.reading!r}: expected one of {', '.join(READINGS)}"
            )

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        return VSAEConfig


def _add_logvar_head(sae: nn.Module) -> None:
    if sae.cfg.learn_variance:  # pyright: ignore[reportAttributeAccessIssue]
        d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae  # pyright: ignore[reportAttributeAccessIssue]
        sae.W_logvar = nn.Parameter(torch.zeros(d_in, d_sae, dtype=sae.dtype, device=sae.device))  # pyright: ignore[reportArgumentType]
        sae.b_logvar = nn.Parameter(torch.zeros(d_sae, dtype=sae.dtype, device=sae.device))  # pyright: ignore[reportArgumentType, reportCallIssue]


def _posterior(sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, mu, logvar), each (..., d_sae); ``pre`` is the scaled pre-activation."""
    sae_in = sae.process_sae_in(x)
    pre = sae.hook_sae_acts_pre(sae_in @ sae.W_enc + sae.b_enc)
    if sae.cfg.rescale_acts_by_decoder_norm:
        pre = pre * sae.W_dec.norm(dim=-1)
    mu = pre.relu()
    if sae.cfg.learn_variance:
        logvar = (sae_in @ sae.W_logvar + sae.b_logvar).clamp(LOGVAR_MIN, LOGVAR_MAX)
    else:
        logvar = torch.zeros_like(mu)
    return pre, mu, logvar


def _signed_topk(z: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest |z| (with their sign), zero the rest."""
    idx = z.abs().topk(k, dim=-1, sorted=False).indices  # (..., k)
    return torch.zeros_like(z).scatter(-1, idx, z.gather(-1, idx))


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per latent, same shape as ``mu``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class VSAE(TopKSAE):
    """Inference vSAE: deterministic top-k of the mean (loadable with ``SAE.load_from_disk``)."""

    cfg: VSAEConfig  # type: ignore[assignment]

    def initialize_weights(self) -> None:
        super().initialize_weights()
        _add_logvar_head(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, mu, _ = _posterior(self, x)
        return self.hook_sae_acts_post(_signed_topk(mu, self.cfg.k))

    @torch.no_grad()
    def log_variance(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior log-variance per latent (zeros without a variance head)."""
        return _posterior(self, x)[2]


class VSAETrainingSAE(TopKTrainingSAE):
    """Training vSAE: reparameterised sampling in train mode, KL term with warm-up, AuxK."""

    cfg: VSAETrainingSAEConfig  # type: ignore[assignment]

    def initialize_weights(self) -> None:
        super().initialize_weights()
        _add_logvar_head(self)

    @property
    def samples(self) -> bool:
        """Whether training draws ``z = mu + eps * sigma`` (the paper's reading)."""
        return self.cfg.reading == "paper"

    def _latent(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if self.training and self.samples:
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return mu

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre, mu, logvar = _posterior(self, x)
        return self.hook_sae_acts_post(_signed_topk(self._latent(mu, logvar), self.cfg.k)), pre

    def get_coefficients(self) -> dict[str, TrainCoefficientConfig | float]:
        return {"kl": TrainCoefficientConfig(self.cfg.beta, self.cfg.kl_warm_up_steps)}

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        pre, mu, logvar = _posterior(self, step_input.sae_in)
        z = self._latent(mu, logvar)  # reparameterised sample (paper) or the mean (code)
        feature_acts = self.hook_sae_acts_post(_signed_topk(z, self.cfg.k))
        sae_out = self.decode(feature_acts)
        mse = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        if self.cfg.aux_loss_coefficient > 0:
            aux = self.calculate_topk_aux_loss(
                sae_in=step_input.sae_in,
                sae_out=sae_out,
                hidden_pre=pre,
                dead_neuron_mask=step_input.dead_neuron_mask,
            )
        else:
            aux = sae_out.new_zeros(())
        kl = kl_to_standard_normal(mu, logvar).sum(dim=-1).mean()
        weighted_kl = step_input.coefficients.get("kl", self.cfg.beta) * kl
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=pre,
            loss=mse + aux + weighted_kl,
            losses={"mse_loss": mse, "auxiliary_reconstruction_loss": aux, "kl_loss": weighted_kl},
            metrics={"kl": kl.detach(), **collapse_metrics(mu, logvar, feature_acts, self.cfg.k)},
        )

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = act_times_W_dec(feature_acts, self.W_dec, self.cfg.rescale_acts_by_decoder_norm)
        out = self.hook_sae_recons(out + self.b_dec)
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(out), self.d_head)


@torch.no_grad()
def collapse_metrics(
    mu: torch.Tensor, logvar: torch.Tensor, feature_acts: torch.Tensor, k: int
) -> dict[str, torch.Tensor]:
    """Posterior-collapse diagnostics of one batch (see the module docstring, 5).

    ``mu``, ``logvar``, ``feature_acts``: (n, d_sae). Returns scalars ``mean_abs_mu`` (mean
    |mu| over the top-k latents of ``mu``), ``mean_sigma`` (over the same entries) and
    ``noise_fraction`` (selections in ``feature_acts`` outside the top-k of ``mu``).
    """
    idx = mu.abs().topk(k, dim=-1).indices  # (n, k)
    by_mean = torch.zeros_like(mu, dtype=torch.bool).scatter(-1, idx, True)
    chosen = feature_acts != 0
    n_chosen = chosen.sum().clamp(min=1)
    return {
        "mean_abs_mu": mu.gather(-1, idx).abs().mean(),
        "mean_sigma": (0.5 * logvar.gather(-1, idx)).exp().mean(),
        "noise_fraction": (chosen & ~by_mean).sum() / n_chosen,
    }


def collapse_warning(stats: dict[str, float]) -> str | None:
    """A warning when averaged :func:`collapse_metrics` show posterior collapse, else None."""
    mu, sigma, noise = stats["mean_abs_mu"], stats["mean_sigma"], stats["noise_fraction"]
    if noise <= NOISE_FRACTION_WARN and mu >= sigma:
        return None
    return (
        f"vSAE posterior collapse: mean |mu| of the selected latents {mu:.3f} vs sigma "
        f"{sigma:.3f}; {noise:.0%} of the top-k selections were decided by the sampling "
        "noise, not by the input. The latents carry little information; train with "
        "--vsae-reading code (no sampling), a smaller --beta, or a learned variance."
    )


def register() -> None:
    """Register "vsae" with SAELens (idempotent)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, VSAE, VSAEConfig)
        register_sae_training_class(ARCHITECTURE, VSAETrainingSAE, VSAETrainingSAEConfig)
