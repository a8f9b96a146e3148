"""The :class:`Model`: a Hugging Face (or TransformerLens) model, its tokenizer and its family.

Plain data plus what addressing sites needs (sizes, layer map, site checks, tokenizing and
running). ``probe.load.load_model`` builds one from a name, a directory, a hub id or a
loaded model. The model is never modified: no weight processing, no folding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from probe.errors import GatescopeError
from probe.families import Family, LayerInfo
from probe.locate import resolve_path
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
    n_v_heads: int = 0  # Gated-DeltaNet value heads (0: no linear-attention layers)
    n_k_heads: int = 0
    d_v: int = 0
    d_k: int = 0
    n_experts: int = 0  # MoE experts per layer (0: dense MLPs only)
    top_k: int = 0


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


def dims_from_config(cfg: Any) -> Dims:
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
        n_v_heads=_get(cfg, "linear_num_value_heads", default=0),
        n_k_heads=_get(cfg, "linear_num_key_heads", default=0),
        d_v=_get(cfg, "linear_value_head_dim", default=0),
        d_k=_get(cfg, "linear_key_head_dim", default=0),
        n_experts=_get(cfg, "num_experts", "num_local_experts", "n_routed_experts", default=0),
        top_k=_get(cfg, "num_experts_per_tok", "moe_topk", default=0),
    )


@dataclass
class Model:
    """A loaded model with everything gatescope needs to address its sites.

    Attributes:
        hf: the unmodified ``transformers`` model (or ``HookedTransformer``), in eval mode.
        tokenizer: its tokenizer (``None`` only if none could be found).
        family: the declarative site map of its architecture.
        dims: layer, head and width counts.
        name: what it was loaded from.
        backend: who runs it (``probe.backend``: local PyTorch hooks unless loaded with
            ``backend="nnsight"``); set by ``load_model``.
    """

    hf: nn.Module
    tokenizer: Any
    family: Family
    dims: Dims
    name: str = ""
    backend: Any = None  # a probe.backend.Backend; load_model sets local hooks by default

    @property
    def device(self) -> torch.device:
        """Where inputs go: the weights' device (the CPU for a model that nnsight built on
        the meta device and runs remotely)."""
        device = next(self.hf.parameters()).device
        return torch.device("cpu") if device.type == "meta" else device

    @property
    def kinds(self) -> tuple[str, ...]:
        """The site kinds this model has on at least one layer (a subset of its family's)."""
        return tuple(k for k in self.family.kinds if self.layers_with(k))

    @property
    def is_gated(self) -> bool:
        """Whether any layer has an attention output gate."""
        return "attn_gate" in self.family.taps and bool(self.layers_with("attn_gate"))

    def layer(self, index: int) -> nn.Module:
        layers = resolve_path(self.hf, self.family.layers)
        if layers is None:
            raise GatescopeError(f"{self.name}: no decoder layers at {self.family.layers}")
        return cast(nn.ModuleList, layers)[index]

    def module(self, paths: str | Sequence[str]) -> nn.Module:
        found = resolve_path(self.hf, paths)
        if found is None:
            raise GatescopeError(f"{self.name}: none of the modules {paths} exist")
        return found

    @property
    def text_config(self) -> Any:
        """The (text) config of the model (a multimodal config's text part)."""
        cfg: Any = getattr(self.hf, "config", None) or getattr(self.hf, "cfg", None)
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def n_heads_of(self, kind: str) -> int:
        """How many heads (attention heads, value heads or experts) a site of ``kind`` has."""
        tap = self.family.taps.get(kind)
        field_ = tap.heads if tap is not None else None
        return getattr(self.dims, field_) if field_ else self.dims.n_heads

    def has_site(self, site: Site) -> bool:
        """Whether this model has ``site`` (its kind exists on that layer)."""
        tap = self.family.taps.get(site.kind)
        return tap is not None and resolve_path(self.layer(site.layer), tap.modules) is not None

    def layers_with(self, kind: str) -> list[int]:
        """The layers that have site kind ``kind`` (all of them on a homogeneous model)."""
        return [i for i in range(self.dims.n_layers) if self.has_site(Site(kind, i))]

    def layer_map(self) -> list[LayerInfo]:
        """Which token mixer and which MLP each layer has (see :class:`LayerInfo`)."""
        return [self.family.describe_layer(self.layer(i), i) for i in range(self.dims.n_layers)]

    def sites(self, pattern: str | Site | Sequence[str | Site]) -> list[Site]:
        """Expand site patterns against this model and check each site exists here.

        ``KIND.*`` means every layer that has the kind (on a hybrid model, e.g. ``attn_gate.*``
        is the full-attention layers only); an explicit layer without it is an error naming
        the layers that have it.
        """
        items = [pattern] if isinstance(pattern, str | Site) else list(pattern)
        sites: list[Site] = []
        for item in items:
            parts = [item] if isinstance(item, Site) else [t for t in item.split(",") if t.strip()]
            for part in parts:
                expanded = expand_sites(
                    part, self.dims.n_layers, lambda kind: self.n_heads_of(kind)
                )
                wildcard = isinstance(part, str) and part.strip().split(".")[1:2] == ["*"]
                if wildcard and expanded and expanded[0].kind in self.family.taps:
                    kept = [s for s in expanded if self.has_site(s)]
                    expanded = kept or expanded  # none: let check_site say where it is
                sites.extend(expanded)
        sites = list(dict.fromkeys(sites))
        for site in sites:
            self.check_site(site)
        return sites

    def check_site(self, site: Site) -> None:
        """Raise a clear error if this model lacks ``site`` (kind, layer range, layer type)."""
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
        n_heads = self.n_heads_of(site.kind)
        if site.head is not None and site.head >= n_heads:
            what = "expert" if site.kind.startswith("router") else "head"
            raise GatescopeError(
                f"site '{site}': {what} {site.head} is out of range; this model has {what}s "
                f"0-{n_heads - 1} at {site.kind}"
            )
        if not self.has_site(site):
            where = self.layers_with(site.kind)
            span = ", ".join(map(str, where)) if where else "no layer of this model"
            info = self.family.describe_layer(self.layer(site.layer), site.layer)
            raise GatescopeError(
                f"site '{site}': layer {site.layer} ({info.mixer}, {info.mlp} MLP) has no "
                f"{site.kind}. {site.kind} exists on layers: {span}"
            )

    def tokenize(self, prompts: str | Sequence[str], special_tokens: bool = True) -> Batch:
        """Tokenize prompts (right-padded), refusing empty prompts and over-long ones;
        ``special_tokens=False`` leaves out the tokens the tokenizer adds (e.g. a BOS)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise GatescopeError("no prompts given; pass at least one non-empty prompt")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise GatescopeError(f"prompt {i} is empty; every prompt needs some text")
        if self.tokenizer is None:
            raise GatescopeError(f"{self.name} has no tokenizer; pass tokenizer= to load_model")
        ids = [self.tokenizer(p, add_special_tokens=special_tokens)["input_ids"] for p in prompts]
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
