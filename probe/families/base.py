"""The declarative description of one architecture family.

A :class:`Family` maps each site kind to a :class:`Tap`: which module (relative to a decoder
layer), its input or output, which element of a tuple, and how to view the tensor as the
site's value (whole, split into heads, the gate half of ``q_proj``'s ``[query | gate]``
layout). Families hold no code that runs a model; ``probe.hooks`` reads these tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from probe.families.layouts import LAYOUTS, TRANSFORMS, Layout, Router, Transform


@dataclass(frozen=True)
class Tap:
    """Where a site kind lives inside one decoder layer.

    Attributes:
        module: path relative to the decoder layer ("" is the layer itself); a tuple lists
            alternatives, the first that exists on the layer is used (e.g. the token mixer of
            a hybrid model is ``self_attn`` on some layers and ``linear_attn`` on others).
        side: read the module's ``input`` (first positional argument, or ``arg`` by name)
            or its ``output``.
        index: element of a tuple output (0 for the hidden states, 1 for attention weights).
        arg: keyword name of the input when it is passed by keyword.
        position: which positional argument is the input (0: the first).
        layout: a :class:`~probe.families.layouts.Layout` (how the value sits in the tensor),
            or the name of a built-in one: ``full`` (the tensor as is), ``heads`` (last dim
            split into heads x d_head), ``gate`` (the gate half of a per-head
            ``[query | gate]`` projection), ``pattern`` (attention weights ``(B, H, Tq, Tk)``
            viewed as ``(B, Tq, H, Tk)``).
        transform: a :class:`~probe.families.layouts.Transform` or ``sigmoid`` / ``silu``:
            the value read is ``transform(x)``, a write is turned back into ``x``.
        writable: whether edits may write this site.
        write_via: for a sum in the residual stream that has no module of its own
            (``resid_mid``), the tap of the addend to adjust on write, with
            ``write_base`` the tap of the other addend: ``addend' = new - base``.
        needs: a note on what the site requires (shown in errors).
    """

    module: str | tuple[str, ...]
    side: Literal["input", "output"]
    index: int = 0
    arg: str = "hidden_states"
    layout: Layout | str = "full"
    transform: Transform | str | None = None
    writable: bool = True
    write_via: Tap | None = None
    write_base: Tap | None = None
    needs: str = ""
    position: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.layout, str):
            object.__setattr__(self, "layout", LAYOUTS[self.layout])
        if isinstance(self.transform, str):
            object.__setattr__(self, "transform", TRANSFORMS[self.transform])

    @property
    def heads(self) -> str | None:
        """The ``Dims`` field counting this site's heads (or experts); None if not split."""
        return self.layout.heads  # pyright: ignore[reportAttributeAccessIssue]

    @property
    def modules(self) -> tuple[str, ...]:
        return (self.module,) if isinstance(self.module, str) else self.module

    def value_range(self, config) -> tuple[float, float]:
        """The closed interval of values this site takes on a model with ``config`` (from its
        transform: ``[0, 1]`` for a sigmoid gate, ``[0, 2]`` for OLMo Hybrid's write strength
        with negative eigenvalues, ``(-inf, 0]`` for a log decay; unbounded without one)."""
        if self.transform is None:
            return (-math.inf, math.inf)
        assert not isinstance(self.transform, str)  # __post_init__ resolved the name
        return self.transform.range(config)


def router_taps(module: str, rule: Callable) -> dict[str, Tap]:
    """The three router sites of an MoE layer whose router module ``module`` returns the
    logits; ``rule(config)`` is the family's routing rule (how logits become the selection
    and weights)."""
    return {
        f"router_{part}": Tap(module, "output", layout=Router(part, rule))
        for part in ("logit", "prob", "weight")
    }


@dataclass(frozen=True)
class Family:
    """Declarative site map of one architecture family.

    Attributes:
        name: the family's name (``qwen3_next``, ``llama``, ...).
        model_types: the ``config.model_type`` values this family handles.
        layers: candidate paths of the decoder-layer list from the model root.
        taps: site kind -> :class:`Tap`. Kinds absent here do not exist in this family.
        embed / final_norm / unembed: candidate paths from the model root.
        norms: normalisation modules relative to a layer (for LRP rules).
        mlp_act: the GLU / MLP activation module relative to a layer, if it is a module.
        attn_input / mlp_input: the norm whose input is what the attention / MLP block reads
            from the residual stream (for edge attribution: gradients into one block only).
        refuse: config flag -> the values gatescope supports; any other value is refused.
        match: a predicate on the config: the family handles a config of one of its
            ``model_types`` only where it returns True (e.g. the "Gated Attention" layout is a
            ``qwen3`` config with gate flags; plain ``llama`` takes the same type without them).
        mixers: token-mixer name -> its module relative to a layer (``full_attention``:
            ``self_attn``, ``linear_attention``: ``linear_attn``, ...), for the layer map.
        moe: the module whose presence makes a layer's MLP a mixture of experts (its router).
        check: called as ``check(config, hf_model)`` once a model of this family is loaded;
            raises a :class:`~probe.errors.GatescopeError` where the config contradicts the
            weights (e.g. gate flags that do not fit ``q_proj``'s width).
        remote_code: the family's checkpoints run their own modelling code (transformers has
            none for them): loading needs ``trust_remote_code``.
        description: one line for listings and errors.
    """

    name: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...]
    taps: Mapping[str, Tap]
    embed: tuple[str, ...] = ("model.embed_tokens",)
    final_norm: tuple[str, ...] = ("model.norm",)
    unembed: tuple[str, ...] = ("lm_head",)
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    mlp_act: str | None = "mlp.act_fn"
    attn_input: str = "input_layernorm"
    mlp_input: str = "post_attention_layernorm"
    refuse: Mapping[str, tuple] = field(default_factory=dict)
    match: Callable[[object], bool] | None = None
    mixers: Mapping[str, str] = field(default_factory=lambda: {"full_attention": "self_attn"})
    moe: str | None = None
    check: Callable[[object, object], None] | None = None
    remote_code: bool = False
    description: str = ""

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.taps)

    @property
    def has_attn_gate(self) -> bool:
        return "attn_gate" in self.taps

    def matches(self, config) -> bool:
        """Whether this family handles ``config`` (its model type, then its predicate)."""
        if getattr(config, "model_type", None) not in self.model_types:
            return False
        return self.match is None or bool(self.match(config))

    def describe_layer(self, layer, index: int) -> LayerInfo:
        """The token mixer and MLP kind of one decoder layer."""
        mixer = next((name for name, path in self.mixers.items() if _has(layer, path)), "unknown")
        mlp = "moe" if self.moe is not None and _has(layer, self.moe) else "dense"
        return LayerInfo(index, mixer, mlp)


@dataclass(frozen=True)
class LayerInfo:
    """One entry of a model's layer map.

    Attributes:
        index: the layer index.
        mixer: ``full_attention``, ``linear_attention`` (Gated-DeltaNet), ``conv`` (gated
            short convolution), ...
        mlp: ``dense`` or ``moe``.
    """

    index: int
    mixer: str
    mlp: str


def _has(layer, path: str) -> bool:
    try:
        layer.get_submodule(path)
        return True
    except AttributeError:
        return False


#: Taps of the standard pre-norm decoder layer (Llama, Qwen, Mistral, Gemma 1): the residual
#: stream is the layer's input/output, attention adds ``self_attn``'s output, the MLP adds
#: ``mlp``'s output, and ``resid_mid`` is the input of ``post_attention_layernorm``.
PRE_NORM_TAPS: dict[str, Tap] = {
    "resid_pre": Tap("", "input"),
    "resid_mid": Tap(
        "post_attention_layernorm",
        "input",
        write_via=Tap("self_attn", "output"),
        write_base=Tap("", "input"),
    ),
    "resid_post": Tap("", "output"),
    "attn_out": Tap("self_attn", "output"),
    "mlp_out": Tap("mlp", "output"),
    "head_out": Tap("self_attn.o_proj", "input", layout="heads"),
    "attn_pattern": Tap(
        "self_attn", "output", index=1, layout="pattern", writable=False, needs="eager attention"
    ),
}

#: Taps of a GLU MLP with ``gate_proj``, ``up_proj``, ``act_fn`` and ``down_proj`` modules.
GLU_TAPS: dict[str, Tap] = {
    "mlp_gate_pre": Tap("mlp.gate_proj", "output"),
    "mlp_gate": Tap("mlp.act_fn", "output"),
    "mlp_up": Tap("mlp.up_proj", "output"),
    "mlp_hidden": Tap("mlp.down_proj", "input"),
}
