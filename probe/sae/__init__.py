"""SAEs on any site: TopK (with AuxK), the variational SAE and every SAELens architecture,
trained with SAELens's trainer on activations from an :class:`~probe.store.ActivationStore`
or straight from the model; evaluation (L0, explained variance, dead fraction, CE-loss
score) and feature browser data (top contexts, firing rates, decoder directions).

A gatescope SAE directory is an SAELens SAE (``cfg.json`` + ``sae_weights.safetensors``)
plus ``gatescope.json`` (site, site shape, source). Importing this package registers the
``vsae`` architecture with SAELens.
"""

from probe.sae.evaluate import SAEEval, evaluate_sae
from probe.sae.features import (
    FeatureReport,
    LatentContext,
    LatentDashboard,
    LatentDirection,
    LatentFeatures,
    decoder_logits,
    latent_dashboard,
    latent_direction,
    latent_stats,
    top_contexts,
)
from probe.sae.io import TrainedSAE, check_sae_site, load_trained, site_width
from probe.sae.train import (
    SAETrainSpec,
    default_spec,
    train_from_model,
    train_from_store,
    train_sae,
)
from probe.sae.vsae import register as _register

_register()

__all__ = [
    "FeatureReport",
    "LatentContext",
    "LatentDashboard",
    "LatentDirection",
    "LatentFeatures",
    "SAEEval",
    "SAETrainSpec",
    "TrainedSAE",
    "check_sae_site",
    "decoder_logits",
    "default_spec",
    "evaluate_sae",
    "latent_dashboard",
    "latent_direction",
    "latent_stats",
    "load_trained",
    "site_width",
    "top_contexts",
    "train_from_model",
    "train_from_store",
    "train_sae",
]
