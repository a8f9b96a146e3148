"""Train an SAE on one site with SAELens's ``SAETrainer`` (TopK: Gao et al., arXiv 2406.04093;
vSAE: arXiv 2509.22994; any other SAELens training architecture by name).

1. ``SAETrainSpec`` is resolved (width, k and tokens left as None are chosen from the site's
   width and the tokens available: :func:`default_spec`) and validated (the architecture must
   be registered with SAELens, else the valid names are listed).
2. The SAELens training config is built: ``d_sae = width``, ``k`` where the architecture has
   one, AuxK weight 1/32, for vSAE ``beta`` and a KL warm-up over the first 10% of steps;
   ``metadata.model_name`` / ``hook_name`` record the model and the site.
3. A data provider streams ``(batch, d_in)`` activations from a store or the model.
4. ``SAETrainer.fit`` runs; the explained variance of each batch is reported on the
   progress bar. Every ``checkpoint_every`` steps, every ``checkpoint_minutes`` of wall time
   and on Ctrl-C (deferred to the end of the running step, so the state is consistent) the
   training SAE, optimizer, schedulers, counters, the number of completed steps and every
   RNG state (torch CPU/CUDA, Python, NumPy) go to ``OUT/checkpoint`` (safetensors + JSON,
   written to a temporary folder and renamed). ``resume=True`` continues from it: the
   provider skips exactly the completed batches and the RNGs are restored, so a resumed run
   equals an uninterrupted one; it says from which step it resumed.
5. The inference SAE (SAELens format: ``cfg.json`` + ``sae_weights.safetensors``) and
   ``gatescope.json`` (site, site shape, source, model fingerprint, throughput, training
   explained variance over the last tenth of the steps, vSAE collapse diagnostics and any
   warnings) are written to ``OUT``. Explained variance below 0.5 is warned about.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
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
EV_WARN = 0.5
MIN_STEPS = 1000  # default budgets give at least this many optimizer steps
MAX_DEFAULT_TOKENS = 4_000_000
# spec fields that may change between a run and its resumption
RESUMABLE_CHANGES = {"checkpoint_every", "checkpoint_minutes", "device"}


def default_spec(d_in: int, available_tokens: int, arch: str = "topk", **overrides):
    """An :class:`SAETrainSpec` with width, k and tokens chosen from the data.

    - tokens: the tokens available, repeated in epochs up to at least ``MIN_STEPS`` steps of
      ``batch_size`` tokens, capped at ``MAX_DEFAULT_TOKENS``;
    - width: the largest power of two <= 8 * ``d_in``, kept <= tokens / 256 (each latent sees
      enough tokens) and >= 64;
    - k: ``d_in / 4`` clamped to [8, 32], below width / 4.

    ``overrides`` (non-None) replace any field, e.g. ``width=2048``.
    """
    overrides = {n: v for n, v in overrides.items() if v is not None}
    batch = overrides.get("batch_size", SAETrainSpec.batch_size)
    tokens = overrides.get("tokens")
    if tokens is None:
        tokens = min(max(int(available_tokens), MIN_STEPS * batch), MAX_DEFAULT_TOKENS)
    width = overrides.get("width")
    if width is None:
        width = 2 ** int(math.log2(max(8 * d_in, 1)))
        while width > 64 and width > tokens // 256:
            width //= 2
        width = max(width, 64)
    k = overrides.get("k")
    if k is None:
        k = max(1, min(max(8, d_in // 4), 32, width // 4))
    base = {"arch": arch, **overrides, "width": width, "k": k, "tokens": tokens}
    return SAETrainSpec(**base)


@dataclass
class SAETrainSpec:
    """What to train.

    Attributes:
        arch: SAELens training architecture: ``topk``, ``vsae``, ``batchtopk``, ``jumprelu``...
        width: number of latents (``d_sae``); None (the default): chosen from the data
            (:func:`default_spec`), as ``gatescope sae train`` and the app do.
        k: active latents per token (TopK-style architectures); None (default): from the data.
        tokens: training tokens in total; None (default): from the tokens available.
        batch_size: tokens per optimizer step.
        lr: Adam learning rate.
        beta: vSAE KL weight after warm-up.
        learn_variance: vSAE log-variance head (else sigma = 1).
        vsae_reading: ``code`` (released code: z = mu, KL over all latents, no AuxK; the
            default, it reproduces the paper's direction) or ``paper`` (the paper's text:
            reparameterised sampling, AuxK). See :mod:`probe.sae.vsae`.
        aux_coefficient: AuxK loss weight (1/32 in Gao et al.; 0 for the vSAE code reading).
        checkpoint_every: steps between checkpoints (0: by time and on interruption only).
        checkpoint_minutes: wall-time minutes between checkpoints (0: by steps only).
        seed: initialisation and shuffling seed.
        device: torch device for the SAE.
    """

    arch: str = "topk"
    width: int | None = None
    k: int | None = None
    tokens: int | None = None
    batch_size: int = 1024
    lr: float = 4e-4
    beta: float = 1.0
    learn_variance: bool = True
    vsae_reading: str = "code"
    aux_coefficient: float = 1 / 32
    checkpoint_every: int = 500
    checkpoint_minutes: float = 2.0
    seed: int = 0
    device: str = "cpu"

    def resolve(self, d_in: int, available_tokens: int) -> SAETrainSpec:
        """This spec with width, k and tokens left as None chosen from the data."""
        if None not in (self.width, self.k, self.tokens):
            return self
        fields = {n: v for n, v in asdict(self).items() if n != "arch"}
        return default_spec(d_in, available_tokens, self.arch, **fields)

    def validate(self) -> None:
        """Range checks (fields left as None are checked once resolved)."""
        from probe.sae.vsae import READINGS

        archs = sorted(SAE_TRAINING_CLASS_REGISTRY)
        if self.arch not in SAE_TRAINING_CLASS_REGISTRY:
            raise GatescopeError(f"--arch {self.arch}: unknown; valid: {', '.join(archs)}")
        if self.vsae_reading not in READINGS:
            raise GatescopeError(
                f"--vsae-reading {self.vsae_reading}: expected one of {', '.join(READINGS)}"
            )
        if self.width is not None and self.width < 1:
            raise GatescopeError(f"--width {self.width}: expected a positive number of latents")
        if self.k is not None and self.k < 1:
            raise GatescopeError(f"--k {self.k}: expected at least 1 active latent")
        if self.k is not None and self.width is not None and self.k >= self.width:
            raise GatescopeError(f"--k {self.k} must be smaller than --width {self.width}")
        if self.batch_size < 1:
            raise GatescopeError(f"--batch-size {self.batch_size}: expected at least 1 token")
        if self.tokens is not None and self.tokens < self.batch_size:
            raise GatescopeError(
                f"--tokens {self.tokens} is less than one batch ({self.batch_size} tokens)"
            )
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise GatescopeError(f"--lr {self.lr}: expected a positive learning rate")
        if self.checkpoint_every < 0 or self.checkpoint_minutes < 0:
            raise GatescopeError("--checkpoint-every / --checkpoint-minutes: expected >= 0")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size  # pyright: ignore[reportOptionalOperand]


def sae_config(spec: SAETrainSpec, d_in: int, model_name: str, site: str):
    """The SAELens training config of ``spec`` for a site of width ``d_in``."""
    from sae_lens.saes.sae import SAEMetadata

    _, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[spec.arch]
    fields = set(cfg_cls.__dataclass_fields__)
    kw: dict = {"d_in": d_in, "d_sae": spec.width, "device": spec.device}
    code_reading = spec.arch == "vsae" and spec.vsae_reading == "code"
    extra = {
        "k": spec.k,
        "aux_loss_coefficient": 0.0 if code_reading else spec.aux_coefficient,
        "beta": spec.beta,
        "learn_variance": spec.learn_variance,
        "kl_warm_up_steps": max(1, spec.steps // 10),
        "reading": spec.vsae_reading,
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


def _rng_state() -> dict:
    import numpy as np

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *map(float, np_state[2:])],  # pyright: ignore[reportArgumentType]
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"].to(torch.uint8))
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in state["cuda"]])


class _Trainer(SAETrainer):
    """SAELens's trainer with exact, atomic safetensors checkpoints (no pickle) in one rolling
    folder, by steps and by wall time; per-batch explained variance on the progress bar and
    running training diagnostics (explained variance, vSAE collapse metrics)."""

    DIAGNOSTICS = ("mean_abs_mu", "mean_sigma", "noise_fraction")

    def __init__(
        self,
        *args,
        out: Path,
        every: int,
        minutes: float = 0.0,
        spec_dict: dict | None = None,
        **kw,
    ):
        self._progress = kw.pop("progress", True)
        super().__init__(*args, **kw)
        self._out, self._every, self._minutes = out, every, minutes
        self._spec_dict = spec_dict
        self._last_save = time.monotonic()
        self._stop = False
        self._in_step = False
        self.completed = 0  # optimizer steps fully done (what a checkpoint records)
        self.sums = {"ev": 0.0, "ev_n": 0, **{n: 0.0 for n in self.DIAGNOSTICS}, "diag_n": 0}
        self.last_ev = float("nan")

    # --- state --------------------------------------------------------------------------
    def save_trainer_state(self, checkpoint_path: Path) -> None:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "counters": {
                "n_training_samples": self.completed * self.cfg.train_batch_size_samples,
                "n_training_steps": self.completed,
                "n_frac_active_samples": self.n_frac_active_samples,
                "started_fine_tuning": self.started_fine_tuning,
            },
            "act_freq_scores": self.act_freq_scores,
            "n_forward_passes_since_fired": self.n_forward_passes_since_fired,
            "schedulers": {n: s.state_dict() for n, s in self.coefficient_schedulers.items()},
            "rng": _rng_state(),
            "sums": self.sums,
            "spec": self._spec_dict,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        save_state(state, checkpoint_path / "trainer_state")

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        state = load_state(Path(checkpoint_path) / "trainer_state", self.cfg.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        for name, value in state["counters"].items():
            setattr(self, name, value)
        self.completed = self.n_training_steps
        self.act_freq_scores = state["act_freq_scores"]
        self.n_forward_passes_since_fired = state["n_forward_passes_since_fired"]
        for name, sched in state["schedulers"].items():
            self.coefficient_schedulers[name].load_state_dict(sched)
        self.sums = state.get("sums", self.sums)
        if "rng" in state:
            _set_rng_state(state["rng"])

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
        self._last_save = time.monotonic()

    # --- steps --------------------------------------------------------------------------
    def step(self, batch: torch.Tensor):
        self._in_step = True
        out = super().step(batch)
        self._in_step = False
        self.completed += 1
        self._record(out)
        return out

    @torch.no_grad()
    def _record(self, out) -> None:
        x, x_hat = out.sae_in.double(), out.sae_out.double()
        total = (x - x.mean(0)).pow(2).sum()
        ev = float(1 - (x - x_hat).pow(2).sum() / total.clamp(min=1e-12))
        self.last_ev = ev
        if self.completed > 0.9 * self._total_steps():  # the last tenth of the steps
            self.sums["ev"] += ev
            self.sums["ev_n"] += 1
        if all(n in out.metrics for n in self.DIAGNOSTICS):
            for n in self.DIAGNOSTICS:
                self.sums[n] += float(out.metrics[n])
            self.sums["diag_n"] += 1

    def _total_steps(self) -> int:
        return self.cfg.total_training_samples // self.cfg.train_batch_size_samples

    def diagnostics(self) -> dict:
        """Training averages: explained variance over the last tenth of the steps, and for a
        vSAE the collapse metrics over all steps."""
        d = {}
        if self.sums["ev_n"]:
            d["train_explained_variance"] = self.sums["ev"] / self.sums["ev_n"]
        if self.sums["diag_n"]:
            d.update({n: self.sums[n] / self.sums["diag_n"] for n in self.DIAGNOSTICS})
        return d

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
        """After each completed step: by steps, by wall time, or on a deferred Ctrl-C."""
        by_steps = self._every and self.completed % self._every == 0
        by_time = self._minutes and time.monotonic() - self._last_save >= 60 * self._minutes
        if by_steps or by_time or self._stop:
            self.checkpoint()
        if self._stop:
            raise KeyboardInterrupt

    def _update_pbar(self, step_output, pbar, update_interval: int = 100):
        if not self._progress:
            pbar.disable = True
            return
        pbar.update(self.cfg.train_batch_size_samples)
        if self.completed % 10 == 0 or self.completed == self._total_steps():
            pbar.set_postfix_str(f"step {self.completed} explained variance {self.last_ev:.3f}")

    def fit_deferring_interrupts(self):
        """``fit`` with Ctrl-C deferred to the end of the running step (main thread only):
        the step finishes, a checkpoint is written, then KeyboardInterrupt is raised."""
        if threading.current_thread() is not threading.main_thread():
            return self.fit()

        def handler(signum, frame):
            if self._in_step or self._stop:
                self._stop = True
            else:  # waiting for data: the state is consistent, stop now
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, handler)
        try:
            return self.fit()
        finally:
            signal.signal(signal.SIGINT, previous)


def _spec_key(spec_dict: dict) -> dict:
    return {n: v for n, v in spec_dict.items() if n not in RESUMABLE_CHANGES}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_sae(
    spec: SAETrainSpec,
    provider_fn,
    d_in: int,
    out: str | Path,
    source: dict,
    resume: bool = False,
    progress: bool = True,
    available_tokens: int | None = None,
) -> Path:
    """Train per ``spec`` on batches from ``provider_fn(skip)`` and save to ``out``.

    ``source`` records where the activations came from: ``model``, ``site``, ``site_shape``
    and optionally ``store`` and ``model_fingerprint``. ``available_tokens`` (the tokens of
    the store or texts) sets the defaults of fields of ``spec`` left as None.
    """
    spec.validate()
    spec = spec.resolve(d_in, available_tokens or 0)
    spec.validate()
    out = Path(out)
    ckpt = out / "checkpoint"
    if not resume and (ckpt.exists() or (out / "cfg.json").exists()):
        what = "a checkpoint" if ckpt.exists() else "a finished SAE"
        raise GatescopeError(
            f"{out} already holds {what}; pass --resume to continue it, or another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    cfg = sae_config(spec, d_in, source["model"], source["site"])
    sae = training_class(spec.arch)(cfg)  # pyright: ignore[reportArgumentType]
    trainer_cfg = SAETrainerConfig(
        total_training_samples=spec.steps * spec.batch_size,
        train_batch_size_samples=spec.batch_size,
        lr=spec.lr,
        lr_end=spec.lr,
        device=spec.device,
        dead_feature_window=max(1, min(1000, spec.steps // 10)),
        feature_sampling_window=max(1, spec.steps),
    )
    spec_dict = asdict(spec)
    done = 0
    if resume and ckpt.exists():
        state = json.loads((ckpt / "trainer_state.json").read_text())
        recorded = state.get("spec")
        if recorded and _spec_key(recorded) != _spec_key(spec_dict):
            diff = sorted(n for n, v in _spec_key(spec_dict).items() if recorded.get(n) != v)
            raise GatescopeError(
                f"{out}/checkpoint was written with other settings ({', '.join(diff)}); "
                "resume with the same options or train into another --out"
            )
        sae.load_weights_from_checkpoint(ckpt)
        done = state["counters"]["n_training_steps"]
        _say(
            f"resuming {out} from its checkpoint at step {done} of {spec.steps} "
            f"({done * spec.batch_size} of {spec.steps * spec.batch_size} tokens, "
            f"saved {state.get('saved_at', '?')})"
        )
    elif resume:
        _say(f"{out}: no checkpoint to resume from; training from the start")
    provider = provider_fn(done)
    if not done:
        first = next(provider)
        with torch.no_grad():  # b_dec starts at the data mean (Gao et al. use the median)
            sae.b_dec.copy_(first.float().mean(0).to(sae.b_dec))
        provider = itertools.chain([first], provider)
    trainer = _Trainer(
        trainer_cfg,
        sae,
        provider,
        out=out,
        every=spec.checkpoint_every,
        minutes=spec.checkpoint_minutes,
        spec_dict=spec_dict,
        progress=progress,
    )
    if done:
        trainer.load_trainer_state(ckpt)
    t0 = time.perf_counter()
    try:
        sae = trainer.fit_deferring_interrupts()
    except KeyboardInterrupt:
        if not trainer._in_step:  # interrupted between steps: the state is consistent
            trainer.checkpoint()
        _say(f"interrupted at step {trainer.completed}; rerun with --resume to continue")
        raise
    seconds = time.perf_counter() - t0
    trained = (spec.steps - done) * spec.batch_size
    diag = trainer.diagnostics()
    warnings = _warnings(spec, diag)
    for w in warnings:
        _say(f"warning: {w}")
    _save_final(sae, out, spec, source, trained / max(seconds, 1e-9), diag, warnings)
    shutil.rmtree(ckpt, ignore_errors=True)
    return out


def _warnings(spec: SAETrainSpec, diag: dict) -> list[str]:
    from probe.sae.vsae import collapse_warning

    out = []
    ev = diag.get("train_explained_variance")
    if ev is not None and ev < EV_WARN:
        out.append(
            f"training explained variance {ev:.3f} < {EV_WARN}: this SAE reconstructs its "
            "site poorly; train on more tokens, a larger width or a larger k"
        )
    if spec.arch == "vsae" and spec.vsae_reading == "paper" and "noise_fraction" in diag:
        w = collapse_warning(diag)
        if w:
            out.append(w)
    return out


def _save_final(
    sae, out: Path, spec: SAETrainSpec, source: dict, rate: float, diag: dict, warnings: list
) -> None:
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_inference_model(tmp)
    meta = {
        "format": FORMAT,
        "architecture": spec.arch,
        "spec": asdict(spec),
        **source,
        "train_tokens_per_second": round(rate, 1),
        "training": diag,
        "warnings": warnings,
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
        "model_fingerprint": m.get("model_fingerprint"),
    }

    def provider(skip: int):
        return store_provider(store, spec.batch_size, seed=spec.seed, skip=skip)

    return train_sae(spec, provider, store.width, out, source, resume, progress, store.tokens)


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
    from probe.store import model_fingerprint

    site = Site.parse(site) if isinstance(site, str) else site
    model.check_site(site)
    texts = fit_texts(texts if texts is not None else reference_texts("train"), model)
    width, shape = site_width(model, site)
    source = {
        "model": model.name,
        "site": str(site),
        "site_shape": shape,
        "model_fingerprint": model_fingerprint(model),
    }
    available = sum(len(ids) for ids in model.tokenizer(list(texts))["input_ids"])

    def provider(skip: int):
        return model_provider(model, site, texts, spec.batch_size, seed=spec.seed, skip=skip)

    return train_sae(spec, provider, width, out, source, resume, progress, available)
