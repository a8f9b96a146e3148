"""Train an SAE on one site with SAELens's ``SAETrainer`` (TopK: Gao et al., arXiv 2406.04093;
vSAE: arXiv 2509.22994; any other SAELens training architecture by name), or a transcoder
from one site to a later one of the same layer (``transcoder``: :mod:`probe.sae.transcoder`).

1. ``SAETrainSpec`` is resolved (width, k and tokens left as None are chosen from the site's
   width and the tokens available: :func:`default_spec`) and validated (the architecture must
   be registered with SAELens, else the valid names are listed).
2. The SAELens training config is built: ``d_sae = width``, ``k`` where the architecture has
   one, AuxK weight 1/32, for vSAE ``beta`` and a KL warm-up over the first 10% of steps;
   ``metadata.model_name`` / ``hook_name`` record the model and the site.
3. A data provider streams ``(batch, d_in)`` activations from a store or the model (for a
   transcoder ``(batch, d_in + d_out)``: input and output site at the same tokens).
4. ``SAETrainer.fit`` runs; the explained variance of each batch is reported on the
   progress bar (and to ``callback``, for the app), with a vSAE's collapse diagnostics over
   the last :data:`WINDOW` steps (mean |mu| of the selected latents, mean sigma, fraction
   of selections decided by the noise); in the paper reading, once the KL has warmed up,
   those are checked every :data:`WINDOW` steps and posterior collapse is warned about as
   soon as it shows (the step is recorded). Every ``checkpoint_every`` steps, every
   ``checkpoint_minutes`` of wall time and on Ctrl-C (deferred to the end of the running
   step, so the state is consistent) the training SAE, optimizer, schedulers, counters,
   the number of completed steps and every RNG state (torch CPU/CUDA, Python, NumPy) go
   to ``OUT/checkpoint`` (safetensors + JSON, written to a temporary folder and renamed).
   ``resume=True`` continues from it: the provider skips exactly the completed batches and
   the RNGs are restored, so a resumed run equals an uninterrupted one; it says from which
   step it resumed.
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
WINDOW = 50  # steps over which running diagnostics are averaged and collapse is checked
#: Other names accepted for an architecture (``--arch transcoder``).
ARCH_ALIASES = {"transcoder": "topk_transcoder"}
TRANSCODER_ARCHS = ("topk_transcoder",)
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
        arch: SAELens training architecture: ``topk``, ``vsae``, ``batchtopk``, ``jumprelu``...,
            or ``transcoder`` (stored as ``topk_transcoder``).
        width: number of latents (``d_sae``); None (the default): chosen from the data
            (:func:`default_spec`), as ``gatescope sae train`` and the app do.
        k: active latents per token (TopK-style architectures); None (default): from the data.
        tokens: training tokens in total; None (default): from the tokens available.
        batch_size: tokens per optimizer step.
        lr: Adam learning rate.
        beta: vSAE KL weight after warm-up.
        learn_variance: vSAE log-variance head (else sigma = 1).
        vsae_reading: ``code`` (the authors' released code: z = mu, KL over all latents, no
            AuxK; the default) or ``paper`` (the paper's text: reparameterised sampling,
            AuxK). See :mod:`probe.sae.vsae`; ``bench/sae_topk_vs_vsae.py`` measures which
            reproduces the paper's direction.
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

    def __post_init__(self) -> None:
        self.arch = ARCH_ALIASES.get(self.arch, self.arch)

    @property
    def is_transcoder(self) -> bool:
        return self.arch in TRANSCODER_ARCHS

    def resolve(self, d_in: int, available_tokens: int) -> SAETrainSpec:
        """This spec with width, k and tokens left as None chosen from the data."""
        if None not in (self.width, self.k, self.tokens):
            return self
        fields = {n: v for n, v in asdict(self).items() if n != "arch"}
        return default_spec(d_in, available_tokens, self.arch, **fields)

    def validate(self) -> None:
        """Range checks (fields left as None are checked once resolved)."""
        from probe.sae.vsae import READINGS

        archs = sorted({*SAE_TRAINING_CLASS_REGISTRY, *ARCH_ALIASES})
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


def sae_config(
    spec: SAETrainSpec,
    d_in: int,
    model_name: str,
    site: str,
    d_out: int | None = None,
    out_site: str | None = None,
):
    """The SAELens training config of ``spec`` for a site of width ``d_in`` (a transcoder:
    to ``out_site`` of width ``d_out``)."""
    from sae_lens.saes.sae import SAEMetadata

    _, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[spec.arch]
    fields = set(cfg_cls.__dataclass_fields__)
    kw: dict = {"d_in": d_in, "d_sae": spec.width, "device": spec.device}
    if spec.is_transcoder:
        if not d_out or not out_site:
            raise GatescopeError(f"--arch {spec.arch} needs an output site (--out-site)")
        kw["d_out"] = d_out
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
    if out_site:
        meta.hook_name_out = out_site  # SAELens's name for a transcoder's output hook
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
    running training diagnostics (explained variance, vSAE collapse metrics over the last
    :data:`WINDOW` steps, on the progress bar, in the log and to ``callback``), with an early
    posterior-collapse warning when ``collapse_check``."""

    DIAGNOSTICS = ("mean_abs_mu", "mean_sigma", "noise_fraction")

    def __init__(
        self,
        *args,
        out: Path,
        every: int,
        minutes: float = 0.0,
        spec_dict: dict | None = None,
        collapse_check: bool = False,
        callback=None,
        **kw,
    ):
        from collections import deque

        self._progress = kw.pop("progress", True)
        super().__init__(*args, **kw)
        self._collapse_check = collapse_check
        self._callback = callback
        self._window: deque = deque(maxlen=WINDOW)  # recent steps' diagnostics
        self._report_every = max(1, self._total_steps() // 100)
        self._out, self._every, self._minutes = out, every, minutes
        self._spec_dict = spec_dict
        self._last_save = time.monotonic()
        self._stop = False
        self._in_step = False
        self.completed = 0  # optimizer steps fully done (what a checkpoint records)
        self.sums = {
            "ev": 0.0,
            "ev_n": 0,
            **{n: 0.0 for n in self.DIAGNOSTICS},
            "diag_n": 0,
            "collapse_step": 0,  # first step at which collapse was detected (0: never)
        }
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
            values = {n: float(out.metrics[n]) for n in self.DIAGNOSTICS}
            for n, v in values.items():
                self.sums[n] += v
            self.sums["diag_n"] += 1
            self._window.append(values)
            self._check_collapse()
        if self.completed % self._report_every == 0 or self.completed == self._total_steps():
            self._report()

    def running(self) -> dict:
        """The last step's explained variance and the vSAE diagnostics averaged over the last
        :data:`WINDOW` steps (empty for other architectures)."""
        d = {
            "step": self.completed,
            "steps": self._total_steps(),
            "explained_variance": self.last_ev,
        }
        if self._window:
            d.update(
                {n: sum(w[n] for w in self._window) / len(self._window) for n in self.DIAGNOSTICS}
            )
        return d

    def _check_collapse(self) -> None:
        """Every WINDOW steps after the KL warm-up: warn once when the recent diagnostics show
        posterior collapse (:func:`probe.sae.vsae.collapse_warning`)."""
        from probe.sae.vsae import collapse_warning

        warm = getattr(self.sae.cfg, "kl_warm_up_steps", 0)
        if (
            not self._collapse_check
            or self.sums.get("collapse_step")
            or self.completed < warm
            or len(self._window) < WINDOW
            or self.completed % WINDOW
        ):
            return
        w = collapse_warning(self.running())
        if w:
            self.sums["collapse_step"] = self.completed
            _say(f"warning at step {self.completed} of {self._total_steps()}: {w}")

    def _report(self) -> None:
        info = self.running()
        if self._callback is not None:
            self._callback(info)
        if not self._progress:
            log.info("step %d of %d: %s", info["step"], info["steps"], _describe(info))

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
        if self.sums.get("collapse_step"):
            d["collapse_detected_at_step"] = int(self.sums["collapse_step"])
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
            pbar.set_postfix_str(f"step {self.completed} {_describe(self.running())}")

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


def _describe(info: dict) -> str:
    """``explained variance 0.812`` and, for a vSAE, ``|mu| 0.09 sigma 1.00 noise 71%``."""
    text = f"explained variance {info['explained_variance']:.3f}"
    if "mean_abs_mu" in info:
        text += (
            f" |mu| {info['mean_abs_mu']:.3g} sigma {info['mean_sigma']:.3g}"
            f" noise {info['noise_fraction']:.0%}"
        )
    return text


def train_sae(
    spec: SAETrainSpec,
    provider_fn,
    d_in: int,
    out: str | Path,
    source: dict,
    resume: bool = False,
    progress: bool = True,
    available_tokens: int | None = None,
    d_out: int | None = None,
    callback=None,
) -> Path:
    """Train per ``spec`` on batches from ``provider_fn(skip)`` and save to ``out``.

    ``source`` records where the activations came from: ``model``, ``site``, ``site_shape``
    and optionally ``store``, ``model_fingerprint``, ``text_mode`` and ``windows`` (how
    many forward-pass windows the texts made); for a transcoder also ``out_site`` and
    ``out_site_shape``, with batches ``[x | y]`` of width ``d_in + d_out``.
    ``available_tokens`` (the tokens of the store or texts) sets the defaults of fields of
    ``spec`` left as None. ``callback(info)``, if given, gets :meth:`_Trainer.running`
    (step, steps, explained variance, vSAE diagnostics) about a hundred times per run.
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
    cfg = sae_config(spec, d_in, source["model"], source["site"], d_out, source.get("out_site"))
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
        target = first[:, d_in:] if spec.is_transcoder else first  # what b_dec reconstructs
        with torch.no_grad():  # b_dec starts at the data mean (Gao et al. use the median)
            sae.b_dec.copy_(target.float().mean(0).to(sae.b_dec))
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
        collapse_check=spec.arch == "vsae" and spec.vsae_reading == "paper",
        callback=callback,
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


def _transcoder_sites(spec: SAETrainSpec, site, out_site, model=None):
    """(site, out_site) as Sites, the output defaulting to the layer's ``mlp_out`` for a
    transcoder; an output site for any other architecture is refused."""
    from probe.sae.transcoder import check_transcoder_sites, default_out_site
    from probe.sites import Site

    site = Site.parse(site) if isinstance(site, str) else site
    if out_site is not None and not spec.is_transcoder:
        raise GatescopeError(
            f"--out-site {out_site} is for --arch transcoder; --arch {spec.arch} reconstructs "
            "its own site (drop --out-site)"
        )
    if not spec.is_transcoder:
        return site, None
    if out_site is None:
        out_site = default_out_site(site)
    out_site = Site.parse(out_site) if isinstance(out_site, str) else out_site
    check_transcoder_sites(site, out_site, model)
    return site, out_site


def train_from_store(
    store,
    spec: SAETrainSpec,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    out_store=None,
    callback=None,
) -> Path:
    """Train on an :class:`~probe.store.ActivationStore` (or its directory); a transcoder
    reads its input from ``store`` and its output from ``out_store`` (two stores harvested
    from one model over the same texts, :func:`probe.sae.data.check_paired_stores`)."""
    from probe.sae.data import check_paired_stores, paired_store_provider, store_provider
    from probe.store import ActivationStore

    def opened(s):
        return s if isinstance(s, ActivationStore) else ActivationStore(s)

    store = opened(store)
    m = store.manifest
    if out_store is not None and not spec.is_transcoder:
        raise GatescopeError(
            f"--out-store is for --arch transcoder; --arch {spec.arch} reconstructs its own "
            "site (drop --out-store)"
        )
    if spec.is_transcoder and out_store is None:
        raise GatescopeError(
            f"--arch {spec.arch} from stores needs --out-store: a store of the output site "
            "harvested over the same texts (or train from MODEL --site --out-site)"
        )
    out_store = None if out_store is None else opened(out_store)
    o = None if out_store is None else out_store.manifest
    _transcoder_sites(spec, m["site"], None if o is None else o["site"])
    source = {
        "model": m["model"],
        "site": m["site"],
        "site_shape": m.get("site_shape") or [m["width"]],
        "store": str(store.path),
        "model_fingerprint": m.get("model_fingerprint"),
    }
    if out_store is not None:
        assert o is not None  # out_store's manifest
        check_paired_stores(store, out_store)
        source.update(
            out_site=o["site"],
            out_site_shape=o.get("site_shape") or [o["width"]],
            out_store=str(out_store.path),
        )

    def provider(skip: int):
        if out_store is not None:
            return paired_store_provider(
                store, out_store, spec.batch_size, seed=spec.seed, skip=skip
            )
        return store_provider(store, spec.batch_size, seed=spec.seed, skip=skip)

    d_out = None if out_store is None else out_store.width
    return train_sae(
        spec, provider, store.width, out, source, resume, progress, store.tokens, d_out, callback
    )


def train_from_model(
    model,
    site,
    spec: SAETrainSpec,
    out: str | Path,
    texts=None,
    resume: bool = False,
    progress: bool = True,
    text_mode: str = "packed",
    out_site=None,
    callback=None,
) -> Path:
    """Train on activations harvested on the fly from ``model`` at ``site`` over ``texts``
    (default: the reference corpus). ``text_mode``: ``packed`` (consecutive short texts
    joined into context-sized windows) or ``lines`` (each text its own forward pass, cut
    only where it exceeds the context). A transcoder (``spec.arch`` ``transcoder``) maps
    ``site`` to ``out_site`` (default: ``mlp_out`` of the same layer). Texts whose
    activations fit in :data:`probe.sae.data.CACHE_BYTES` are run through the model once
    (the first time a batch is needed) and reshuffled every epoch; larger ones stream
    through the model with a shuffling buffer."""
    from probe.sae.data import (
        CACHE_BYTES,
        TEXT_MODES,
        capture_all,
        fit_texts,
        memory_provider,
        model_provider,
        reference_texts,
    )
    from probe.sae.io import site_width
    from probe.store import model_fingerprint

    if text_mode not in TEXT_MODES:
        raise GatescopeError(f"--text-mode {text_mode}: expected one of {', '.join(TEXT_MODES)}")
    spec.validate()
    site, out_site = _transcoder_sites(spec, site, out_site, model)
    model.check_site(site)
    raw = texts if texts is not None else reference_texts("train")
    texts = fit_texts(raw, model, pack=text_mode == "packed")
    if not texts:
        raise GatescopeError("no training text: every text is empty")
    width, shape = site_width(model, site)
    source = {
        "model": model.name,
        "site": str(site),
        "site_shape": shape,
        "model_fingerprint": model_fingerprint(model),
        "text_mode": text_mode,
        "windows": len(texts),
    }
    d_out = None
    if out_site is not None:
        d_out, out_shape = site_width(model, out_site)
        source.update(out_site=str(out_site), out_site_shape=out_shape)
    available = sum(len(ids) for ids in model.tokenizer(list(texts))["input_ids"])
    cache = available * (width + (d_out or 0)) * 4 <= CACHE_BYTES
    source["activations"] = "cached" if cache else "streamed"

    def provider(skip: int):
        if cache:
            acts = capture_all(model, site, texts, out_site)
            return memory_provider(acts, spec.batch_size, seed=spec.seed, skip=skip)
        return model_provider(
            model, site, texts, spec.batch_size, seed=spec.seed, skip=skip, out_site=out_site
        )

    return train_sae(
        spec, provider, width, out, source, resume, progress, available, d_out, callback
    )
