"""Pretrained SAEs from SAELens's registry (``pretrained_saes.yaml``), saved as gatescope SAE
directories that ``gatescope sae eval`` / ``features`` and the app read.

1. The release and SAE id are looked up in SAELens's directory
   (``sae_lens.loading.pretrained_saes_directory``); an unknown one is refused with the
   closest known names. A release whose ``repo_id`` is a local directory laid out like the
   release on the hub (``<repo>/<path of the id>/cfg.json`` + ``sae_weights.safetensors``)
   is read from there (an offline mirror); otherwise SAELens downloads it.
2. SAELens's own ``SAE.from_pretrained_with_cfg_and_sparsity`` builds the SAE (its
   conversion function, config overrides and norm-scaling folding apply). Converters that
   read ``.pt`` files use ``torch.load``, whose default (torch >= 2.6) refuses anything but
   tensors.
3. Its hook name (``cfg.metadata.hook_name``, and ``hook_name_out`` for a transcoder) is
   mapped to a gatescope :class:`~probe.sites.Site` by :func:`hook_to_site`:
   TransformerLens-style ``blocks.L.hook_resid_post`` (and ``resid_pre``, ``resid_mid``,
   ``attn_out``, ``mlp_out``, ``attn.hook_z``, ``mlp.hook_pre`` / ``hook_pre_linear`` /
   ``hook_post``), Hugging Face module names ``model.layers.L`` (the layer's output, as
   SAELens's Qwen releases name it) and ``model.layers.L.mlp`` / ``self_attn`` /
   ``mlp.gate_proj`` / ``mlp.up_proj`` / ``mlp.act_fn``, and gatescope's own site names.
   Anything else (a normalised MLP input, for one) is refused with the reason.
4. ``out`` receives ``cfg.json`` + ``sae_weights.safetensors`` (SAELens's ``save_model``)
   and ``gatescope.json`` (site, model, release, id, hook names), written to a temporary
   folder and renamed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe.errors import GatescopeError
from probe.sites import Site

if TYPE_CHECKING:
    from sae_lens import SAE

FORMAT = "gatescope.sae/1"
_TL_KINDS = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "attn.hook_z": "head_out",
    "mlp.hook_pre": "mlp_gate_pre",
    "mlp.hook_pre_linear": "mlp_up",
    "mlp.hook_post": "mlp_hidden",
}
_HF_KINDS = {
    "": "resid_post",
    "mlp": "mlp_out",
    "self_attn": "attn_out",
    "mlp.gate_proj": "mlp_gate_pre",
    "mlp.up_proj": "mlp_up",
    "mlp.act_fn": "mlp_gate",
}
_NORMALISED = ("ln2.hook_normalized", "hook_mlp_in", "mlp.hook_in", "ln1.hook_normalized")
SUPPORTED = (
    "blocks.L.hook_resid_pre|resid_mid|resid_post|attn_out|mlp_out, blocks.L.attn.hook_z, "
    "blocks.L.mlp.hook_pre|hook_pre_linear|hook_post, model.layers.L[.mlp|.self_attn|"
    ".mlp.gate_proj|.mlp.up_proj|.mlp.act_fn], or a gatescope site such as resid_post.3"
)


def hook_to_site(hook_name: str | None) -> Site:
    """The gatescope site an SAELens hook name reads (see the module docstring)."""
    if not hook_name:
        raise GatescopeError("the SAE records no hook name, so its site is unknown")
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_name)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        if rest in _TL_KINDS:
            return Site(_TL_KINDS[rest], layer)
        if rest in _NORMALISED:
            raise GatescopeError(
                f"hook {hook_name} reads a normalised input (after the layer norm); gatescope "
                "has no site there (it reads resid_mid / resid_pre before the norm), so this "
                "SAE cannot be spliced into a gatescope model"
            )
    m = re.fullmatch(r"(?:model\.)?(?:language_model\.)?layers\.(\d+)((?:\.[a-z_]+)*)", hook_name)
    if m and m.group(2).lstrip(".") in _HF_KINDS:
        return Site(_HF_KINDS[m.group(2).lstrip(".")], int(m.group(1)))
    try:
        return Site.parse(hook_name)
    except GatescopeError:
        pass
    raise GatescopeError(
        f"hook {hook_name} has no gatescope site; supported hook names: {SUPPORTED}"
    )


@dataclass
class PretrainedSAE:
    """A pretrained SAE from SAELens's registry, mapped to gatescope sites.

    Attributes:
        release, sae_id: the registry's names.
        repo_id: where the release lives (a hub repository or a local directory).
        model: the model the release was trained on (the registry's name for it).
        hook_name, hook_name_out: SAELens's hook names (``hook_name_out`` for transcoders).
        site, out_site: the gatescope sites they map to.
        architecture: SAELens architecture, e.g. ``topk`` or ``jumprelu_transcoder``.
        d_in, d_sae: widths.
        sae: the SAELens SAE.
        path: the gatescope SAE directory it was saved to (None if not saved).
    """

    release: str
    sae_id: str
    repo_id: str
    model: str
    hook_name: str
    hook_name_out: str | None
    site: Site
    out_site: Site | None
    architecture: str
    d_in: int
    d_sae: int
    sae: SAE[Any]
    path: Path | None = None


def _suggest(name: str, known, what: str, flag: str) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    if close:
        hint = f"did you mean {', '.join(close)}?"
    else:
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        hint = f"known {what}s: {shown}"
    return f"{flag} {name}: not a {what} in SAELens's registry; {hint}"


def _directory():
    from sae_lens.loading import pretrained_saes_directory as psd

    return psd.get_pretrained_saes_directory()


def lookup(release: str, sae_id: str):
    """The registry entry of ``release``, checking that it has ``sae_id``."""
    directory = _directory()
    if release not in directory:
        raise GatescopeError(_suggest(release, directory, "release", "RELEASE"))
    entry = directory[release]
    if sae_id not in entry.saes_map:
        msg = _suggest(sae_id, entry.saes_map, f"SAE id of {release}", "ID")
        raise GatescopeError(msg)
    return entry


def _local_converter(root: Path):
    """An SAELens converter reading ``root/<folder>`` (SAELens's disk format) instead of the
    hub: the release laid out locally."""
    from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader
    from safetensors import safe_open

    def convert(repo_id, folder_name, device="cpu", force_download=False, cfg_overrides=None):
        folder = root / folder_name
        if not (folder / "cfg.json").is_file():
            raise GatescopeError(
                f"local release {root}: {folder} has no cfg.json (expected SAELens's layout, "
                "<repo>/<id path>/cfg.json + sae_weights.safetensors)"
            )
        cfg, state = sae_lens_disk_loader(folder, device, cfg_overrides)
        sparsity = None
        if (folder / "sparsity.safetensors").is_file():
            with safe_open(str(folder / "sparsity.safetensors"), "pt", device=device) as f:
                sparsity = f.get_tensor("sparsity")
        return cfg, state, sparsity

    return convert


def load_pretrained(
    release: str,
    sae_id: str,
    out: str | Path | None = None,
    model=None,
    device: str = "cpu",
) -> PretrainedSAE:
    """Load ``sae_id`` of ``release`` through SAELens's registry and map it to gatescope
    sites; with ``model`` (a gatescope Model) check its sites and widths there; with ``out``
    save it as a gatescope SAE directory (``load_trained(out)`` reads it)."""
    from sae_lens import SAE

    from probe.sae.io import load_trained
    from probe.sae.transcoder import check_transcoder_sites, is_transcoder
    from probe.sae.transcoder import register as register_transcoder
    from probe.sae.vsae import register

    register()
    register_transcoder()
    entry = lookup(release, sae_id)
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise GatescopeError(f"--out {out} already exists; give a new directory")
        if not out.parent.is_dir():
            raise GatescopeError(f"--out {out}: the directory {out.parent} does not exist")
    local = Path(entry.repo_id).expanduser()
    converter = _local_converter(local) if local.is_dir() else None
    try:
        sae, _, _ = SAE.from_pretrained_with_cfg_and_sparsity(
            release, sae_id, device=device, converter=converter
        )
    except GatescopeError:
        raise
    except Exception as exc:  # downloads and converters raise many kinds
        raise GatescopeError(
            f"SAELens could not load {release} / {sae_id} from {entry.repo_id} "
            f"({type(exc).__name__}: {exc}); check the network or a local copy of the release"
        ) from None
    meta = sae.cfg.metadata
    hook = meta.hook_name or meta.hf_hook_name
    try:
        site = hook_to_site(meta.hook_name)
    except GatescopeError:
        if not meta.hf_hook_name:
            raise
        site = hook_to_site(meta.hf_hook_name)
    out_site, hook_out = None, None
    if is_transcoder(sae):
        hook_out = meta.hook_name_out or meta.hf_hook_name_out
        out_site = hook_to_site(hook_out)
        check_transcoder_sites(site, out_site)
    result = PretrainedSAE(
        release=release,
        sae_id=sae_id,
        repo_id=entry.repo_id,
        model=entry.model or meta.model_name or "",
        hook_name=hook,
        hook_name_out=hook_out,
        site=site,
        out_site=out_site,
        architecture=sae.cfg.architecture(),
        d_in=int(sae.cfg.d_in),
        d_sae=int(sae.cfg.d_sae),
        sae=sae,
    )
    if out is not None:
        result.path = _save(result, out, model)
        if model is not None:
            from probe.sae.io import check_sae_site

            check_sae_site(model, load_trained(result.path, device=device))
    return result


def _save(p: PretrainedSAE, out: Path, model=None) -> Path:
    """Write ``p`` as a gatescope SAE directory (temporary folder, then rename)."""
    from probe.sae.io import site_width

    shape, out_shape = [p.d_in], None
    if p.out_site is not None:
        out_shape = [int(p.sae.cfg.d_out)]
    fingerprint = None
    model_name = p.model
    if model is not None:
        from probe.store import model_fingerprint

        model.check_site(p.site)
        width, shape = site_width(model, p.site)
        if width != p.d_in:
            raise GatescopeError(
                f"{p.release} / {p.sae_id} reads {p.d_in} values per token at {p.site}, but "
                f"{p.site} of {model.name} is {width} wide; load it for the model it was "
                f"trained on ({p.model})"
            )
        if p.out_site is not None:
            model.check_site(p.out_site)
            _, out_shape = site_width(model, p.out_site)
        model_name, fingerprint = model.name, model_fingerprint(model)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    p.sae.save_model(tmp)
    meta = {
        "format": FORMAT,
        "architecture": p.architecture,
        "model": model_name,
        "site": str(p.site),
        "site_shape": shape,
        "pretrained": {
            "release": p.release,
            "sae_id": p.sae_id,
            "repo_id": p.repo_id,
            "model": p.model,
            "hook_name": p.hook_name,
            "hook_name_out": p.hook_name_out,
        },
    }
    if fingerprint:
        meta["model_fingerprint"] = fingerprint
    if p.out_site is not None:
        meta["out_site"] = str(p.out_site)
        meta["out_site_shape"] = out_shape
    (tmp / "gatescope.json").write_text(json.dumps(meta, indent=2))
    if out.is_dir():
        out.rmdir()  # empty (checked before loading)
    os.replace(tmp, out)
    return out
