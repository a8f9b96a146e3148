"""The :class:`Model`: a Hugging Face (or TransformerLens) model, its tokenizer and its family.

``load_model`` accepts a bundled reference name (``reference``, ``reference-plain``), a local
directory, a hub id or an already loaded model. It checks the architecture and config against
the family registry *before* loading weights, and refuses what it does not support with the
list of what it does. The model is never modified: no weight processing, no folding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probe.errors import GatescopeError
from probe.families import Family, family_for_config
from probe.sites import Site, expand_sites, unknown_kind_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dims:
    """Sizes of a model, read from its config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    vocab: int
    n_ctx: int


@dataclass
class Batch:
    """Tokenized prompts, right-padded: ``input_ids`` and ``attention_mask`` are (B, T)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor  # (B,) real tokens per row

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.lengths)


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def _dims_from_config(cfg: Any) -> Dims:
    d_model = _get(cfg, "hidden_size", "d_model", "n_embd")
    n_heads = _get(cfg, "num_attention_heads", "n_heads", "n_head")
    return Dims(
        n_layers=_get(cfg, "num_hidden_layers", "n_layers", "n_layer"),
        n_heads=n_heads,
        n_kv_heads=_get(cfg, "num_key_value_heads", "n_key_value_heads", default=n_heads),
        d_head=_get(cfg, "head_dim", "d_head", default=d_model // n_heads),
        d_model=d_model,
        d_mlp=_get(cfg, "intermediate_size", "d_mlp", "n_inner", default=4 * d_model),
        vocab=_get(cfg, "vocab_size", "d_vocab"),
        n_ctx=_get(cfg, "max_position_embeddings", "n_ctx", "n_positions", default=2048),
    )


def resolve_path(root: nn.Module, paths: str | Sequence[str]) -> nn.Module | None:
    """The first of ``paths`` (dotted, from ``root``; "" is ``root``) that exists, or None."""
    for path in (paths,) if isinstance(paths, str) else paths:
        try:
            return root.get_submodule(path) if path else root
        except AttributeError:
            continue
    return None


@dataclass
class Model:
    """A loaded model with everything gatescope needs to address its sites.

    Attributes:
        hf: the unmodified ``transformers`` model (or ``HookedTransformer``), in eval mode.
        tokenizer: its tokenizer (``None`` only if none could be found).
        family: the declarative site map of its architecture.
        dims: layer, head and width counts.
        name: what it was loaded from.
        backend: who runs it (local PyTorch hooks by default; see ``probe.backend``).
        verified: outcomes of checks of this model's code paths against its full forward,
            by name, so they run once per model (e.g. resumed patching passes).
    """

    hf: nn.Module
    tokenizer: Any
    family: Family
    dims: Dims
    name: str = ""
    backend: Any = None  # a probe.backend.Backend; None means local hooks
    verified: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.backend is None:
            from probe.backend import HookBackend

            self.backend = HookBackend()

    @property
    def device(self) -> torch.device:
        """Where inputs go: the weights' device (the CPU for a model that nnsight built on
        the meta device and runs remotely)."""
        device = next(self.hf.parameters()).device
        return torch.device("cpu") if device.type == "meta" else device

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.family.kinds

    @property
    def is_gated(self) -> bool:
        return self.family.has_attn_gate

    def layer(self, index: int) -> nn.Module:
        layers = resolve_path(self.hf, self.family.layers)
        if layers is None:
            raise GatescopeError(f"{self.name}: no decoder layers at {self.family.layers}")
        return layers[index]

    def module(self, paths: str | Sequence[str]) -> nn.Module:
        found = resolve_path(self.hf, paths)
        if found is None:
            raise GatescopeError(f"{self.name}: none of the modules {paths} exist")
        return found

    def sites(self, pattern: str | Site | Sequence[str | Site]) -> list[Site]:
        """Expand site patterns against this model and check each site exists here."""
        sites = expand_sites(pattern, self.dims.n_layers, self.dims.n_heads)
        for site in sites:
            self.check_site(site)
        return sites

    def check_site(self, site: Site) -> None:
        """Raise a clear error if this model lacks ``site`` (kind, layer range, layer type)."""
        from probe.hooks import locate  # local: hooks imports Model's types

        if site.kind not in self.family.taps:
            raise GatescopeError(
                f"site '{site}': {unknown_kind_message(site.kind, self.kinds)} "
                f"(family {self.family.name})"
            )
        if site.layer >= self.dims.n_layers:
            raise GatescopeError(
                f"site '{site}': layer {site.layer} is out of range; this model has layers "
                f"0-{self.dims.n_layers - 1}"
            )
        if site.head is not None and site.head >= self.dims.n_heads:
            raise GatescopeError(
                f"site '{site}': head {site.head} is out of range; this model has heads "
                f"0-{self.dims.n_heads - 1}"
            )
        locate(self, site)

    def tokenize(self, prompts: str | Sequence[str]) -> Batch:
        """Tokenize prompts (right-padded), refusing empty prompts and over-long ones."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise GatescopeError("no prompts given; pass at least one non-empty prompt")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise GatescopeError(f"prompt {i} is empty; every prompt needs some text")
        if self.tokenizer is None:
            raise GatescopeError(f"{self.name} has no tokenizer; pass tokenizer= to load_model")
        ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        for i, row in enumerate(ids):
            if len(row) > self.dims.n_ctx:
                raise GatescopeError(
                    f"prompt {i} is {len(row)} tokens long; the model's context is "
                    f"{self.dims.n_ctx} tokens; shorten the prompt"
                )
            if not row:
                raise GatescopeError(f"prompt {i} tokenizes to nothing")
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        width = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return Batch(input_ids, mask, mask.sum(1))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T, vocab) of one forward pass; grad mode is the caller's."""
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        return self.backend.forward(self, input_ids, attention_mask)

    @torch.no_grad()
    def run(self, prompts: str | Sequence[str] | Batch) -> torch.Tensor:
        """Tokenize (unless given a :class:`Batch`) and run; returns logits (B, T, vocab)."""
        batch = prompts if isinstance(prompts, Batch) else self.tokenize(prompts)
        return self.forward(batch.input_ids, batch.attention_mask)

    def batches(
        self, prompts: Sequence[str], batch_size: int = 16, progress: bool = False
    ) -> Iterator[Batch]:
        """Tokenized batches of ``prompts`` in order, with an optional progress bar."""
        if not prompts:
            raise GatescopeError("the prompt set is empty; give at least one prompt")
        starts = range(0, len(prompts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="batches", unit="batch")
        for start in starts:
            yield self.tokenize(prompts[start : start + batch_size])


def _bundled(name: str) -> Path | None:
    if name not in ("reference", "reference-gated", "reference-plain", "reference-hybrid"):
        return None
    from probe.reference import reference_path

    return reference_path(name)


def _load_tokenizer(source: str | os.PathLike, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        log.warning("no tokenizer found at %s: %s", source, exc)
        return None


def _wrap_loaded(obj: nn.Module, tokenizer: Any, name: str) -> Model:
    cfg = getattr(obj, "cfg", None)
    if cfg is not None and hasattr(obj, "blocks"):  # TransformerLens HookedTransformer
        from types import SimpleNamespace

        gated = bool(getattr(cfg, "gated_mlp", False))
        mt = "hooked_transformer_gated" if gated else "hooked_transformer"
        family = family_for_config(SimpleNamespace(model_type=mt))
        return Model(obj.eval(), tokenizer or obj.tokenizer, family, _dims_from_config(cfg), name)
    config = getattr(obj, "config", None)
    if config is None:
        raise GatescopeError(
            f"{type(obj).__name__} is neither a transformers model nor a HookedTransformer"
        )
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    family = family_for_config(text_cfg)
    if tokenizer is None and getattr(config, "_name_or_path", ""):
        path = config._name_or_path
        tokenizer = _load_tokenizer(path, False) if Path(path).is_dir() else None
    name = name or getattr(config, "_name_or_path", "") or type(obj).__name__
    return Model(obj.eval(), tokenizer, family, _dims_from_config(text_cfg), name)


def load_model(
    model: str | os.PathLike | nn.Module,
    *,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    backend: str = "hooks",
    remote: bool = False,
) -> Model:
    """Load a model for gatescope: a reference name, a local directory, a hub id or a model.

    The architecture and config are checked before any weights load. ``dtype`` is a torch
    dtype or its name (``"bfloat16"``); ``device_map="auto"`` spreads a large model over the
    available GPUs through ``transformers``. ``backend="nnsight"`` runs every algorithm through
    nnsight instead of local hooks (``remote=True``: on NDIF, API key in ``NDIF_API_KEY``); a
    name or directory is then loaded by nnsight itself, on the meta device, its weights read
    only for local runs.
    """
    if backend not in ("hooks", "nnsight"):
        raise GatescopeError(f"backend '{backend}' is unknown; choose 'hooks' or 'nnsight'")
    if remote and backend != "nnsight":
        raise GatescopeError("remote=True needs backend='nnsight' (NDIF runs nnsight)")
    if remote:
        from probe.nnsight_backend import check_remote_key

        check_remote_key(remote)  # before any config is fetched
    if isinstance(model, nn.Module):
        wrapped = _place(_wrap_loaded(model, tokenizer, ""), device)
        return _with_backend(wrapped, backend, remote)
    source = _checked_source(model, trust_remote_code)
    kwargs = _load_kwargs(dtype, device_map, attn_implementation, trust_remote_code)
    name = str(model)
    if backend == "nnsight":
        return _load_through_nnsight(source, name, tokenizer, device, remote, kwargs)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    tok = tokenizer or _load_tokenizer(source, trust_remote_code)
    return _place(_wrap_loaded(hf, tok, name), None if device_map else device)


def _checked_source(model: str | os.PathLike, trust_remote_code: bool) -> str:
    """Where to load ``model`` from (a bundled name resolved), after refusing a missing
    directory and an unsupported architecture or config, before any weights load."""
    source = str(model)
    bundled = _bundled(source)
    if bundled is not None:
        source = str(bundled)
    elif not Path(source).is_dir() and (Path(source).exists() or source.startswith((".", "/"))):
        raise GatescopeError(
            f"model '{model}': not a model directory (no such directory or not a directory); "
            "give a directory saved with save_pretrained, a hub id, or 'reference'"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise GatescopeError(
            f"model '{model}': could not read its config ({exc}). Give 'reference', "
            "'reference-plain', a local model directory, or a hub id with network access"
        ) from None
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    family_for_config(text_cfg)  # refuse before loading weights
    return source


def _load_kwargs(dtype, device_map, attn_implementation, trust_remote_code: bool) -> dict:
    """Keyword arguments for ``from_pretrained`` (only those the caller set)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def _load_through_nnsight(source: str, name: str, tokenizer, device, remote: bool, kwargs):
    """A model loaded by nnsight (lazily: on the meta device, weights only when local)."""
    from probe.nnsight_backend import NNsightBackend, load_lazily

    tok = tokenizer or _load_tokenizer(source, kwargs["trust_remote_code"])
    if device is not None and not remote:
        kwargs = {**kwargs, "device_map": kwargs.get("device_map", device)}
    envoy, hf, tok = load_lazily(source, tok, remote, **kwargs)
    wrapped = _wrap_loaded(hf, tok, name)
    wrapped.backend = NNsightBackend(hf, remote=remote, envoy=envoy)
    return wrapped


def _with_backend(model: Model, backend: str, remote: bool) -> Model:
    if backend == "hooks":
        return model
    from probe.nnsight_backend import use_nnsight

    return use_nnsight(model, remote=remote)


def _place(model: Model, device: str | torch.device | None) -> Model:
    if device is not None:
        model.hf.to(device)
    return model
