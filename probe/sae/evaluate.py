"""Evaluate an SAE on its site over evaluation texts (metrics as in arXiv 2406.04093 and
SAELens's evals).

For every batch of texts, three forward passes:

1. Spliced: the site's value ``x`` (B, T, ...) is flattened to (B, T, d_in), encoded and
   decoded; the reconstruction replaces the site (``probe.hook_sites(..., write=True)``;
   gate values are clipped to [0, 1] since they are written in logit space). At real tokens
   this accumulates L0, squared error, the sums for the variance of ``x``, and per-latent
   firing counts; the logits give ``CE_sae``.
2. Clean: ``CE_orig``. 3. Ablated (the site zeroed): ``CE_ablate``.

A transcoder (input site -> output site of one layer) is spliced in place of what it
replaces: its input site is read and the output site is overwritten by the transcoder's
output of that input, at every token (e.g. ``mlp_out`` <- T(``resid_mid``): the MLP
replaced); x / x_hat below are then the output site's value and the transcoder's output,
and ablating zeroes the output site (the MLP's contribution).

Explained variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2; dead fraction = latents
that never fire over the evaluation tokens; CE-loss score =
(CE_ablate - CE_sae) / (CE_ablate - CE_orig). CE is next-token cross-entropy over real tokens.
KL is the mean over real tokens of KL(p_clean || p_spliced) of the next-token distributions;
KL-div score = (KL_ablate - KL_sae) / KL_ablate.

:meth:`SAEEval.saebench` gives the same figures under SAEBench's core-eval names and groups
(``model_behavior_preservation.kl_div_score``, ``model_performance_preservation.
ce_loss_score``, ``reconstruction_quality.explained_variance``, ``sparsity.l0``,
``misc_metrics.frac_alive``, ...) plus the log10 feature-density histogram.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.model import Model
from probe.sae.io import TrainedSAE, check_sae_site


@dataclass
class SAEEval:
    """Evaluation of one SAE.

    Attributes:
        path, site, model, architecture, width, k: what was evaluated.
        tokens: evaluation tokens.
        l0: mean active latents per token.
        explained_variance: 1 - FVU.
        dead_fraction / live_fraction: latents that never / ever fire on these tokens.
        ce_orig, ce_sae, ce_ablate: next-token cross-entropy (nats) clean, spliced, zeroed.
        ce_loss_score: (ce_ablate - ce_sae) / (ce_ablate - ce_orig).
        kl_sae, kl_ablate: mean KL(clean || spliced / zeroed) per token (nats).
        kl_div_score: (kl_ablate - kl_sae) / kl_ablate.
        mse: mean squared error per element; cossim: mean cosine(x, x_hat) per token.
        l1: mean sum |latents| per token; l2_norm_in / l2_norm_out: mean ||x||, ||x_hat||.
        text_mode: ``lines`` (one document per line) or ``packed``.
        out_site: a transcoder's output site (then explained variance, MSE, cosine and norms
            are of that site, e.g. the MLP output; the CE / KL scores splice the
            transcoder in place of it and ablate by zeroing it); None for an SAE.
        feature_frequency: per latent, fraction of tokens on which it fires.
    """

    path: str
    site: str
    model: str
    architecture: str
    width: int
    k: int | None
    tokens: int
    l0: float
    explained_variance: float
    dead_fraction: float
    live_fraction: float
    ce_orig: float
    ce_sae: float
    ce_ablate: float
    ce_loss_score: float
    kl_sae: float = float("nan")
    kl_ablate: float = float("nan")
    kl_div_score: float = float("nan")
    mse: float = float("nan")
    cossim: float = float("nan")
    l1: float = float("nan")
    l2_norm_in: float = float("nan")
    l2_norm_out: float = float("nan")
    text_mode: str = "packed"
    out_site: str | None = None
    feature_frequency: list[float] = field(repr=False, default_factory=list)

    def density_histogram(self, bins: int = 20) -> dict:
        """Histogram of log10 feature density over the live latents (SAEBench's plot), and the
        number of dead latents apart."""
        freq = torch.tensor(self.feature_frequency, dtype=torch.float64)
        live = freq[freq > 0].log10()
        if len(live) == 0:
            return {"log10_density_edges": [], "counts": [], "dead": len(freq)}
        lo, hi = float(live.min()), float(live.max())
        counts = torch.histc(live, bins=bins, min=lo, max=max(hi, lo + 1e-9))
        edges = torch.linspace(lo, max(hi, lo + 1e-9), bins + 1)
        return {
            "log10_density_edges": edges.tolist(),
            "counts": [int(c) for c in counts],
            "dead": int((freq == 0).sum()),
        }

    def saebench(self) -> dict:
        """The metrics under SAEBench's core-eval names, grouped as SAEBench groups them."""
        freq = torch.tensor(self.feature_frequency, dtype=torch.float64)
        return {
            "model_behavior_preservation": {
                "kl_div_score": self.kl_div_score,
                "kl_div_with_ablation": self.kl_ablate,
                "kl_div_with_sae": self.kl_sae,
            },
            "model_performance_preservation": {
                "ce_loss_score": self.ce_loss_score,
                "ce_loss_with_ablation": self.ce_ablate,
                "ce_loss_with_sae": self.ce_sae,
                "ce_loss_without_sae": self.ce_orig,
            },
            "reconstruction_quality": {
                "explained_variance": self.explained_variance,
                "mse": self.mse,
                "cossim": self.cossim,
            },
            "shrinkage": {
                "l2_norm_in": self.l2_norm_in,
                "l2_norm_out": self.l2_norm_out,
                "l2_ratio": self.l2_norm_out / self.l2_norm_in if self.l2_norm_in else math.nan,
            },
            "sparsity": {"l0": self.l0, "l1": self.l1},
            "misc_metrics": {
                "frac_alive": self.live_fraction,
                "freq_over_1_percent": float((freq > 0.01).double().mean()),
                "freq_over_10_percent": float((freq > 0.1).double().mean()),
            },
            "token_stats": {"total_tokens_eval_reconstruction": self.tokens},
            "feature_density_histogram": self.density_histogram(),
        }

    def to_dict(self, frequencies: bool = True) -> dict:
        d = asdict(self)
        d["saebench"] = self.saebench()
        if not frequencies:
            d.pop("feature_frequency")
        return d

    def to_json(self, frequencies: bool = True) -> str:
        return json.dumps(self.to_dict(frequencies), indent=2)


class _Stats:
    """Running sums over real tokens."""

    def __init__(self, width: int):
        self.n, self.l0, self.err, self.sum_sq = 0, 0.0, 0.0, 0.0
        self.l1, self.cos, self.norm_in, self.norm_out = 0.0, 0.0, 0.0, 0.0
        self.d_in = 1
        self.sum = None
        self.fires = torch.zeros(width, dtype=torch.long)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        """x, x_hat: (n, d_in); f: (n, d_sae)."""
        x, x_hat = x.double(), x_hat.double()
        self.n += len(x)
        self.err += float((x - x_hat).pow(2).sum())
        self.sum_sq += float(x.pow(2).sum())
        self.sum = x.sum(0) if self.sum is None else self.sum + x.sum(0)
        self.d_in = x.shape[-1]
        self.l1 += float(f.double().abs().sum())
        self.cos += float(F.cosine_similarity(x, x_hat, dim=-1).sum())
        self.norm_in += float(x.norm(dim=-1).sum())
        self.norm_out += float(x_hat.norm(dim=-1).sum())
        active = f != 0
        self.l0 += float(active.sum())
        self.fires += active.sum(0).cpu()

    def explained_variance(self) -> float:
        total = self.sum_sq - float(self.sum.pow(2).sum()) / self.n  # pyright: ignore[reportOptionalMemberAccess]
        return 1.0 - self.err / max(total, 1e-12)


def _ce(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(summed next-token cross-entropy, count) over positions where both tokens are real."""
    keep = (mask[:, 1:] * mask[:, :-1]).bool()
    loss = F.cross_entropy(
        logits[:, :-1][keep].float(), ids[:, 1:][keep].to(logits.device), reduction="sum"
    )
    return float(loss), int(keep.sum())


def _kl(clean: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> float:
    """Summed KL(softmax(clean) || softmax(other)) over real positions."""
    keep = mask.bool().to(clean.device)
    p = clean[keep].float().log_softmax(-1)
    q = other[keep].float().log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


def _splice(trained: TrainedSAE, stats: _Stats, clip: bool, where: str):
    def fn(value: torch.Tensor, info) -> torch.Tensor:
        x = value.flatten(2)  # (B, T, d_in)
        if torch.isnan(x).any():
            raise GatescopeError(f"NaN activations at {trained.site} in {where}")
        x_hat, f = trained.forward_with_latents(x)  # (B, T, d_in), (B, T, d_sae)
        x_hat = x_hat.to(value.dtype)
        if clip:
            x_hat = x_hat.clamp(0.0, 1.0)
        real = info.attention_mask.bool().to(x.device)  # (B, T)
        stats.update(x[real], x_hat[real], f[real])
        return x_hat.view_as(value)

    return fn


def transcoder_entries(trained: TrainedSAE, on_output=None, clip: bool = False, where: str = ""):
    """Hook entries (for ``hook_sites(..., write=True)``) that splice a transcoder in place of
    what it replaces: the input site is read, the output site is replaced by the
    transcoder's output of that input. ``on_output(y, y_hat, latents, info)`` sees each
    pass's true output, the transcoder's, and its latents ((B, T, ...) each)."""
    held: dict[str, torch.Tensor] = {}

    def read_input(value: torch.Tensor, info) -> None:
        if torch.isnan(value).any():
            raise GatescopeError(f"NaN activations at {trained.site} in {where}")
        held["x"] = value.flatten(2)  # (B, T, d_in)

    def write_output(value: torch.Tensor, info) -> torch.Tensor:
        if "x" not in held:
            raise GatescopeError(
                f"{trained.out_site} ran before {trained.site}: the transcoder's input must "
                "come first in the layer"
            )
        y_hat, f = trained.forward_with_latents(held.pop("x"))  # (B, T, d_out), (B, T, d_sae)
        y_hat = y_hat.to(value.dtype)
        if clip:
            y_hat = y_hat.clamp(0.0, 1.0)
        if on_output is not None:
            on_output(value.flatten(2), y_hat, f, info)
        return y_hat.view_as(value)

    return [(trained.site, read_input), (trained.out_site, write_output)]


def _transcode(trained: TrainedSAE, stats: _Stats, clip: bool, where: str):
    def record(y, y_hat, f, info):
        real = info.attention_mask.bool().to(y.device)  # (B, T)
        stats.update(y[real], y_hat[real], f[real])

    return transcoder_entries(trained, record, clip, where)


def _ce_score(orig: float, sae: float, ablate: float) -> float:
    """(ablate - sae) / (ablate - orig); NaN when zeroing the site leaves the loss unchanged."""
    gap = ablate - orig
    return (ablate - sae) / gap if abs(gap) > 1e-9 else float("nan")


@torch.no_grad()
def evaluate_sae(
    model: Model,
    trained: TrainedSAE,
    texts: Sequence[str],
    batch_size: int = 16,
    text_mode: str = "packed",
    force: bool = False,
    progress: bool = False,
    callback=None,
) -> SAEEval:
    """Evaluate ``trained`` on ``texts`` (see the module docstring); ``text_mode`` records
    how the texts were cut (``lines`` or ``packed``); ``callback(done, total)`` after each
    batch of texts."""
    check_sae_site(model, trained, force=force)
    site = trained.decoder_site  # what is replaced: the site, or a transcoder's output
    clip = model.family.taps[site.kind].transform == "sigmoid"
    stats = _Stats(trained.width)
    ce = {"orig": [0.0, 0], "sae": [0.0, 0], "ablate": [0.0, 0]}
    zero = [(site, lambda v, info: torch.zeros_like(v))]
    kl = {"sae": 0.0, "ablate": 0.0}
    from tqdm.auto import tqdm

    what = f"{trained.site}->{site}" if trained.is_transcoder else str(site)
    bar = tqdm(total=len(texts), unit="text", desc=f"sae eval {what}", disable=not progress)
    for start in range(0, len(texts), batch_size):
        batch = model.tokenize(list(texts[start : start + batch_size]))
        ids, mask = batch.input_ids, batch.attention_mask
        where = f"texts {start}-{start + len(ids) - 1}"
        if trained.is_transcoder:
            spliced = _transcode(trained, stats, clip, where)
        else:
            spliced = [(site, _splice(trained, stats, clip, where))]
        runs = {"orig": [], "sae": spliced, "ablate": zero}
        clean = None
        for name, entries in runs.items():
            with hook_sites(model, entries, write=bool(entries)):
                logits = model.forward(ids, mask)
            total, count = _ce(logits, ids, mask.to(logits.device))
            ce[name][0] += total
            ce[name][1] += count
            if clean is None:
                clean = logits
            else:
                kl[name] += _kl(clean, logits, mask)
        bar.update(len(ids))
        if callback is not None:
            callback(min(start + batch_size, len(texts)), len(texts))
    bar.close()
    if stats.n == 0:
        raise GatescopeError("no evaluation tokens; give some evaluation text")
    c = {name: s / max(n, 1) for name, (s, n) in ce.items()}
    live = float((stats.fires > 0).float().mean())
    return SAEEval(
        path=str(trained.path),
        site=str(trained.site),
        model=model.name,
        architecture=trained.architecture,
        width=trained.width,
        k=getattr(trained.sae.cfg, "k", None),
        tokens=stats.n,
        l0=stats.l0 / stats.n,
        explained_variance=stats.explained_variance(),
        dead_fraction=1.0 - live,
        live_fraction=live,
        ce_orig=c["orig"],
        ce_sae=c["sae"],
        ce_ablate=c["ablate"],
        ce_loss_score=_ce_score(c["orig"], c["sae"], c["ablate"]),
        kl_sae=kl["sae"] / stats.n,
        kl_ablate=kl["ablate"] / stats.n,
        kl_div_score=(kl["ablate"] - kl["sae"]) / kl["ablate"] if kl["ablate"] > 0 else math.nan,
        mse=stats.err / (stats.n * stats.d_in),
        cossim=stats.cos / stats.n,
        l1=stats.l1 / stats.n,
        l2_norm_in=stats.norm_in / stats.n,
        l2_norm_out=stats.norm_out / stats.n,
        text_mode=text_mode,
        out_site=None if trained.out_site is None else str(trained.out_site),
        feature_frequency=(stats.fires.double() / stats.n).tolist(),
    )
