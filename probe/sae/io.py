"""Open a trained SAE directory (SAELens format plus ``gatescope.json``) and check it against
a model's site.

1. ``load_trained`` registers gatescope's architectures (vSAE, TopK transcoder), loads
   ``cfg.json`` + ``sae_weights.safetensors`` with SAELens's own ``SAE.load_from_disk`` and
   reads the site, model and per-token site shape from ``gatescope.json`` (else from
   SAELens's ``metadata.hook_name``); a transcoder also has an output site
   (``out_site``, SAELens's ``metadata.hook_name_out``).
2. ``site_width`` runs the model on one token and measures the site's flattened width;
   ``check_sae_site`` refuses an SAE whose ``d_in`` (a transcoder: or ``d_out``) differs
   from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.store import site_width

if TYPE_CHECKING:
    from sae_lens import SAE

META_FILE = "gatescope.json"


@dataclass
class TrainedSAE:
    """An SAELens SAE with where it reads from.

    Attributes:
        sae: the SAELens ``SAE`` (inference class), in eval mode.
        path: its directory.
        site: the site it was trained on.
        model: the model name it was trained on.
        site_shape: the per-token shape of the site (``[d]`` or ``[H, d]``).
        meta: the whole ``gatescope.json``.
        out_site: a transcoder's output site (None for an SAE).
        out_shape: the per-token shape of ``out_site`` (for an SAE: ``site_shape``).
    """

    sae: SAE[Any]
    path: Path
    site: Site
    model: str
    site_shape: list[int]
    meta: dict = field(default_factory=dict)
    out_site: Site | None = None
    out_shape: list[int] | None = None

    @property
    def is_transcoder(self) -> bool:
        return self.out_site is not None

    @property
    def decoder_site(self) -> Site:
        """Where the decoder writes: the output site of a transcoder, else the site."""
        return self.out_site or self.site

    @property
    def decoder_shape(self) -> list[int]:
        return self.out_shape or self.site_shape

    @property
    def width(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def architecture(self) -> str:
        return self.sae.cfg.architecture()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) activations to (..., d_sae) latents."""
        return self.sae.encode(x.to(self.sae.W_dec.dtype))

    def forward_with_latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction or transcoder output (..., d_out), latents (..., d_sae)) of x;
        SAELens's own forward for transcoders (a skip transcoder adds its skip term)."""
        x = x.to(self.sae.W_dec.dtype)
        forward = getattr(self.sae, "forward_with_activations", None)
        if self.is_transcoder and forward is not None:
            return forward(x)
        f = self.sae.encode(x)
        return self.sae.decode(f), f


def load_trained(path: str | Path, device: str = "cpu") -> TrainedSAE:
    """Load an SAE directory written by ``gatescope sae train``."""
    from sae_lens import SAE

    from probe.sae.transcoder import is_transcoder
    from probe.sae.transcoder import register as register_transcoder
    from probe.sae.vsae import register

    register()
    register_transcoder()
    path = Path(path)
    if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
        hint = (
            " (training was interrupted: rerun with --resume)"
            if (path / "checkpoint").is_dir()
            else ""
        )
        raise GatescopeError(
            f"{path} is not a trained SAE (needs cfg.json and sae_weights.safetensors){hint}"
        )
    meta_path = path / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    try:
        sae = SAE.load_from_disk(path, device=device)
    except Exception as exc:  # SAELens raises many kinds for broken files
        raise GatescopeError(f"{path}: SAELens could not load the SAE ({exc})") from None
    site = meta.get("site") or sae.cfg.metadata.hook_name
    model = meta.get("model") or sae.cfg.metadata.model_name
    if not site:
        raise GatescopeError(f"{path}: no site recorded (gatescope.json or metadata.hook_name)")
    shape = meta.get("site_shape") or [int(sae.cfg.d_in)]
    out_site, out_shape = None, None
    if is_transcoder(sae):
        out_name = meta.get("out_site") or sae.cfg.metadata.hook_name_out
        if not out_name:
            raise GatescopeError(
                f"{path}: a transcoder with no output site recorded (gatescope.json "
                "out_site or metadata.hook_name_out)"
            )
        out_site = Site.parse(out_name)
        out_shape = meta.get("out_site_shape") or [int(sae.cfg.d_out)]
    return TrainedSAE(
        sae.eval(), path, Site.parse(site), model or "", shape, meta, out_site, out_shape
    )


def check_sae_site(model: Model, trained: TrainedSAE, force: bool = False) -> None:
    """Refuse an SAE whose ``d_in`` does not match its site in ``model``, or (unless
    ``force``) one trained on another model: another name, or the same name with other
    weights (the model fingerprint recorded at training)."""
    from probe.store import model_fingerprint

    model.check_site(trained.site)
    width, shape = site_width(model, trained.site)
    if width != trained.sae.cfg.d_in:
        raise GatescopeError(
            f"SAE {trained.path} has d_in {trained.sae.cfg.d_in}, but {trained.site} of "
            f"{model.name} is {width} wide (shape {shape}); use the model and site it was "
            f"trained on ({trained.model}, {trained.site})"
        )
    if trained.out_site is not None:
        from probe.sae.transcoder import check_transcoder_sites

        check_transcoder_sites(trained.site, trained.out_site, model)
        out_width, out_shape = site_width(model, trained.out_site)
        if out_width != trained.sae.cfg.d_out:
            raise GatescopeError(
                f"transcoder {trained.path} has d_out {trained.sae.cfg.d_out}, but "
                f"{trained.out_site} of {model.name} is {out_width} wide (shape {out_shape}); "
                f"use the model it was trained on ({trained.model})"
            )
    if force:
        return
    recorded = trained.meta.get("model_fingerprint")
    if recorded:
        if recorded != model_fingerprint(model):
            raise GatescopeError(
                f"SAE {trained.path} was trained on {trained.model or 'a model'} with other "
                f"weights (fingerprint {recorded}; {model.name} has "
                f"{model_fingerprint(model)}); use the model it was trained on, or pass "
                "--force to use it anyway"
            )
    elif trained.model and trained.model != model.name:
        raise GatescopeError(
            f"SAE {trained.path} was trained on {trained.model}, not {model.name}; "
            "evaluate it on that model, or pass --force to use it anyway"
        )
