"""Train an SAE on one site with SAELens's ``SAETrainer`` (TopK: Gao et al., arXiv 2406.04093;
vSAE: arXiv 2509.22994; any other SAELens training architecture by name).

1. ``SAETrainSpec`` is validated (width, k, tokens; the architecture must be registered with
   SAELens, else the valid names are listed).
2. The SAELens training config is built: ``d_sae = width``, ``k`` where the architecture has
   one, AuxK weight 1/32, for vSAE ``beta`` and a KL warm-up over the first 10% of steps;
   ``metadata.model_name`` / ``hook_name`` record the model and the site.
3. A data provider streams ``(batch, d_in)`` activations from a store or the model.
4. ``SAETrainer.fit`` runs; every ``checkpoint_every`` steps (and on Ctrl-C) the training SAE,
   optimizer, schedulers and counters go to ``OUT/checkpoint`` (safetensors + JSON, written
   to a temporary folder and renamed). ``resume=True`` continues from it, skipping the
   batches already seen.
5. The inference SAE (SAELens format: ``cfg.json`` + ``sae_weights.safetensors``) and
   ``gatescope.json`` (site, site shape, source, throughput) are written to ``OUT``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

from probe.errors import GatescopeError
from probe.sae.checkpoint import load_state, save_state

log = logging.getLogger(__name__)
META_FILE = "gatescope.json"
FORMAT = "gatescope.sae/1"


@dataclass
class SAETrainSpec:
    """What to train.

    Attributes:
        arch: SAELens training architecture: ``topk``, ``vsae``, ``batchtopk``, ``jumprelu``...
        width: number of latents (``d_sae``).
        k: active latents per token (TopK-style architectures).
        tokens: training tokens in total.
        batch_size: tokens per optimizer step.
        lr: Adam learning rate.
        beta: vSAE KL weight after warm-up.
        learn_variance: vSAE log-variance head.
        aux_coefficient: AuxK loss weight (1/32 in Gao et al.).
        checkpoint_every: steps between checkpoints (0: only on interruption).
        seed: initialisation and shuffling seed.
        device: torch device for the SAE.
    """

    arch: str = "topk"
    width: int = 1024
    k: int = 32
    tokens: int = 1_000_000
    batch_size: int = 1024
    lr: float = 4e-4
    beta: float = 1.0
    learn_variance: bool = True
    aux_coefficient: float = 1 / 32
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        archs = sorted(SAE_TRAINING_CLASS_REGISTRY)
        if self.arch not in SAE_TRAINING_CLASS_REGISTRY:
            raise GatescopeError(f"--arch {self.arch}: unknown; valid: {', '.join(archs)}")
        if self.width < 1:
            raise GatescopeError(f"--width {self.width}: expected a positive number of latents")
        if self.k < 1:
            raise GatescopeError(f"--k {self.k}: expected at least 1 active latent")
        if self.k >= self.width:
            raise GatescopeError(f"--k {self.k} must be smaller than --width {self.width}")
        if self.tokens < self.batch_size:
            raise GatescopeError(
                f"--tokens {self.tokens} is less than one batch ({self.batch_size} tokens)"
            )

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size


def sae_config(spec: SAETrainSpec, d_in: int, model_name: str, site: str):
    """The SAELens training config of ``spec`` for a site of width ``d_in``."""
    from sae_lens.saes.sae import SAEMetadata

    _, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[spec.arch]
    fields = set(cfg_cls.__dataclass_fields__)
    kw: dict = {"d_in": d_in, "d_sae": spec.width, "device": spec.device}
    extra = {
        "k": spec.k,
        "aux_loss_coefficient": spec.aux_coefficient,
        "beta": spec.beta,
        "learn_variance": spec.learn_variance,
        "kl_warm_up_steps": max(1, spec.steps // 10),
    }
    kw.update({name: v for name, v in extra.items() if name in fields})
    meta = SAEMetadata(model_name=model_name, hook_name=site)
    return cfg_cls(**kw, metadata=meta)


def training_class(arch: str):
    """The training SAE class of ``arch``: SAELens's registry, except that ``topk`` trains with
    gatescope's sparse decoder (same loss and parameters; saved as a SAELens ``topk`` SAE)."""
    if arch == "topk":
        from probe.sae.sparse_topk import SparseTopKTrainingSAE

        return SparseTopKTrainingSAE
    return SAE_TRAINING_CLASS_REGISTRY[arch][0]


class _Trainer(SAETrainer):
    """SAELens's trainer with safetensors checkpoints (no pickle) in one rolling folder."""

    def __init__(self, *args, out: Path, every: int, **kw):
        super().__init__(*args, **kw)
        self._out, self._every = out, every

    def save_trainer_state(self, checkpoint_path: Path) -> None:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "counters": {
                "n_training_samples": self.n_training_samples,
                "n_training_steps": self.n_training_steps,
                "n_frac_active_samples": self.n_frac_active_samples,
                "started_fine_tuning": self.started_fine_tuning,
            },
            "act_freq_scores": self.act_freq_scores,
            "n_forward_passes_since_fired": self.n_forward_passes_since_fired,
            "schedulers": {n: s.state_dict() for n, s in self.coefficient_schedulers.items()},
        }
        save_state(state, checkpoint_path / "trainer_state")

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        state = load_state(Path(checkpoint_path) / "trainer_state", self.cfg.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        for name, value in state["counters"].items():
            setattr(self, name, value)
        self.act_freq_scores = state["act_freq_scores"]
        self.n_forward_passes_since_fired = state["n_forward_passes_since_fired"]
        for name, sched in state["schedulers"].items():
            self.coefficient_schedulers[name].load_state_dict(sched)

    def checkpoint(self) -> None:
        """Write ``OUT/checkpoint`` atomically (temporary folder, then rename)."""
        tmp, final = self._out / ".checkpoint.tmp", self._out / "checkpoint"
        shutil.rmtree(tmp, ignore_errors=True)
        self.sae.save_model(tmp)
        self.save_trainer_state(tmp)
        old = self._out / ".checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def _train_step(self, sae, sae_in: torch.Tensor):
        """SAELens's training step; for an SAE that reports ``last_fired`` (the sparse TopK
        pass), the firing statistics come from those counts, not from a dense mask."""
        from probe.sae.sparse_topk import SparseTopKTrainingSAE

        if not isinstance(sae, SparseTopKTrainingSAE):
            return super()._train_step(sae, sae_in)
        sae.train()
        with self.autocast_if_enabled:
            out = sae.training_forward_pass(
                step_input=TrainStepInput(
                    sae_in=sae_in,
                    dead_neuron_mask=self.dead_neurons,
                    coefficients=self.get_coefficients(),
                    n_training_steps=self.n_training_steps,
                    is_logging_step=self._is_logging_step(),
                )
            )
            with torch.no_grad():
                fired = sae.last_fired  # (d_sae,) tokens each latent fired on
                self.n_forward_passes_since_fired += 1
                self.n_forward_passes_since_fired[fired > 0] = 0
                self.act_freq_scores += fired
                self.n_frac_active_samples += self.cfg.train_batch_size_samples
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        return out

    def _checkpoint_if_needed(self) -> None:
        if self._every and (self.n_training_steps + 1) % self._every == 0:
            self.checkpoint()


def train_sae(
    spec: SAETrainSpec,
    provider_fn,
    d_in: int,
    out: str | Path,
    source: dict,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train per ``spec`` on batches from ``provider_fn(skip)`` and save to ``out``.

    ``source`` records where the activations came from: ``model``, ``site``, ``site_shape``
    and optionally ``store``.
    """
    spec.validate()
    out = Path(out)
    ckpt = out / "checkpoint"
    if not resume and (ckpt.exists() or (out / "cfg.json").exists()):
        raise GatescopeError(f"{out} already holds an SAE run; pass --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    cfg = sae_config(spec, d_in, source["model"], source["site"])
    sae = training_class(spec.arch)(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=spec.steps * spec.batch_size,
        train_batch_size_samples=spec.batch_size,
        lr=spec.lr,
        lr_end=spec.lr,
        device=spec.device,
        dead_feature_window=max(1, min(1000, spec.steps // 10)),
        feature_sampling_window=max(1, spec.steps),
    )
    done = 0
    if resume and ckpt.exists():
        sae.load_weights_from_checkpoint(ckpt)
        done = json.loads((ckpt / "trainer_state.json").read_text())["counters"]["n_training_steps"]
        log.info("resuming %s at step %d of %d", out, done, spec.steps)
    provider = provider_fn(done)
    if not done:
        first = next(provider)
        with torch.no_grad():  # b_dec starts at the data mean (Gao et al. use the median)
            sae.b_dec.copy_(first.float().mean(0).to(sae.b_dec))
        provider = itertools.chain([first], provider)
    trainer = _Trainer(trainer_cfg, sae, provider, out=out, every=spec.checkpoint_every)
    if done:
        trainer.load_trainer_state(ckpt)
    t0 = time.perf_counter()
    try:
        sae = trainer.fit()
    except KeyboardInterrupt:
        trainer.checkpoint()
        raise
    seconds = time.perf_counter() - t0
    trained = (spec.steps - done) * spec.batch_size
    _save_final(sae, out, spec, source, trained / max(seconds, 1e-9))
    return out


def _save_final(sae, out: Path, spec: SAETrainSpec, source: dict, rate: float) -> None:
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_inference_model(tmp)
    meta = {
        "format": FORMAT,
        "architecture": spec.arch,
        "spec": asdict(spec),
        **source,
        "train_tokens_per_second": round(rate, 1),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    for name in ("sae_weights.safetensors", "cfg.json", META_FILE):
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)


def train_from_store(
    store, spec: SAETrainSpec, out: str | Path, resume: bool = False, progress: bool = True
) -> Path:
    """Train on an :class:`~probe.store.ActivationStore` (or its directory)."""
    from probe.sae.data import store_provider
    from probe.store import ActivationStore

    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    m = store.manifest
    source = {
        "model": m["model"],
        "site": m["site"],
        "site_shape": m.get("site_shape") or [m["width"]],
        "store": str(store.path),
    }

    def provider(skip: int):
        return store_provider(store, spec.batch_size, seed=spec.seed, skip=skip)

    return train_sae(spec, provider, store.width, out, source, resume, progress)


def train_from_model(
    model,
    site,
    spec: SAETrainSpec,
    out: str | Path,
    texts=None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train on activations harvested on the fly from ``model`` at ``site`` over ``texts``
    (default: the reference corpus)."""
    from probe.sae.data import fit_texts, model_provider, reference_texts
    from probe.sae.io import site_width
    from probe.sites import Site

    site = Site.parse(site) if isinstance(site, str) else site
    model.check_site(site)
    texts = fit_texts(texts if texts is not None else reference_texts("train"), model)
    width, shape = site_width(model, site)
    source = {"model": model.name, "site": str(site), "site_shape": shape}

    def provider(skip: int):
        return model_provider(model, site, texts, spec.batch_size, seed=spec.seed, skip=skip)

    return train_sae(spec, provider, width, out, source, resume, progress)
