"""SAEs on any site: TopK (with AuxK), the variational SAE and every SAELens architecture,
and TopK transcoders (one layer's MLP input to its output), trained with SAELens's trainer
on activations from an :class:`~probe.store.ActivationStore` or straight from the model;
pretrained SAEs from SAELens's registry; evaluation (SAEBench's core metrics, the
transcoder spliced in place of the MLP) and feature browser data (top contexts, firing
rates, decoder directions and logits).

A gatescope SAE directory is an SAELens SAE (``cfg.json`` + ``sae_weights.safetensors``)
plus ``gatescope.json`` (site, site shape, source). Importing this package registers the
``vsae`` and ``topk_transcoder`` architectures with SAELens.
"""

from probe.sae.evaluate import SAEEval, evaluate_sae
from probe.sae.features import (
    FeatureReport,
    LatentContext,
    LatentCorpus,
    LatentDashboard,
    LatentDirection,
    LatentFeatures,
    corpus_dashboard,
    decoder_logits,
    encode_corpus,
    latent_dashboard,
    latent_direction,
    latent_stats,
    token_strings,
    top_contexts,
)
from probe.sae.io import TrainedSAE, check_sae_site, load_trained, site_width
from probe.sae.pretrained import PretrainedSAE, hook_to_site, load_pretrained
from probe.sae.train import (
    SAETrainSpec,
    default_spec,
    train_from_model,
    train_from_store,
    train_sae,
)
from probe.sae.transcoder import register as _register_transcoder
from probe.sae.vsae import register as _register

_register()
_register_transcoder()

__all__ = [
    "FeatureReport",
    "LatentContext",
    "LatentCorpus",
    "LatentDashboard",
    "LatentDirection",
    "LatentFeatures",
    "PretrainedSAE",
    "SAEEval",
    "SAETrainSpec",
    "TrainedSAE",
    "check_sae_site",
    "corpus_dashboard",
    "decoder_logits",
    "default_spec",
    "encode_corpus",
    "evaluate_sae",
    "hook_to_site",
    "latent_dashboard",
    "latent_direction",
    "latent_stats",
    "load_pretrained",
    "load_trained",
    "site_width",
    "token_strings",
    "top_contexts",
    "train_from_model",
    "train_from_store",
    "train_sae",
]
