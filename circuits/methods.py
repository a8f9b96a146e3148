"""Attribution methods as objects: one frozen dataclass per method, registered once.

Every method has a registry name (``Method.name``), documented fields, and validates them on
construction. :func:`make` builds one from its name and keyword fields and refuses unknown
names and unknown fields; ``METHODS`` maps names to classes (the CLI, the app and the
agreement study read it). Results record ``method.to_dict()``.

Node methods (scores per component, :func:`circuits.attribution.attribute`):

- ``atp``: attribution patching, ``(a_clean - a_corrupt) . dm/da`` at the corrupt point.
- ``atp*``: AtP with the attention correction of AtP* (Kramar et al. 2024, arXiv
  2403.00745; :mod:`circuits.atp_star`), optionally GradDrop (``grad_drop``).
- ``relp``: the same product with the gradient of a backward pass under LRP rules
  (arXiv 2508.21258; :mod:`circuits.lrp`); ``hold_attention`` chooses the AH rule.
- ``relp*``: RelP with attention held constant plus the exact attention-pattern change on
  the query/key path (:mod:`circuits.atp_star`).
- ``ig``: integrated gradients along the input embeddings, k = 0 .. steps-1.

Edge methods (scores per edge, :func:`circuits.graph.build_graph`; every node method also
scores edges there, from its gradient):

- ``eap``: edge attribution patching (Syed et al. 2023, arXiv 2310.10348).
- ``eap-ig``: EAP with gradients averaged over interpolated inputs, k = 1 .. steps (Hanna
  et al. 2024, arXiv 2403.17806).

Each method states its cost (:meth:`Method.passes`: forward and backward passes, ``None``
where it grows with the number of components); a method is *fast* with at most 3 forward
and 2 backward passes. :data:`CIRCUIT_DEFAULT` is the method ``gatescope circuit`` and
:func:`circuits.graph.build_graph` use when none is given; :meth:`Method.variants` lists
the settings the agreement study compares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, ClassVar

from probe.errors import GatescopeError

if TYPE_CHECKING:
    from probe.model import Model

GATE_RULES = ("half", "constant")
GLU_RULES = ("half", "gradient")


@dataclass(frozen=True)
class Method:
    """Base of every method. ``name``: registry name; ``edges``: scores edges, not nodes;
    ``rules``: the backward pass follows LRP rules; ``cost``: forward + backward passes."""

    name: ClassVar[str] = ""
    edges: ClassVar[bool] = False
    rules: ClassVar[bool] = False

    def alphas(self) -> list[float]:
        """Interpolation points of the corrupt pass (0: the corrupt input itself)."""
        return [0.0]

    def passes(self) -> tuple[int, int] | None:
        """(forward, backward) passes for any number of components; ``None`` where the cost
        grows with the components scored (per-component recomputation)."""
        alphas = self.alphas()
        forward = 1 + len(alphas) + (0 if 0.0 in alphas else 1)  # clean, gradient passes, corrupt
        return forward, len(alphas)

    @property
    def fast(self) -> bool:
        """At most 3 forward and 2 backward passes (the circuit default's criterion)."""
        cost = self.passes()
        return cost is not None and cost[0] <= 3 and cost[1] <= 2

    @property
    def signed(self) -> bool:
        """Whether scores carry a sign (an estimate of the patching effect) rather than a
        magnitude."""
        return True

    @classmethod
    def variants(cls, model: Model) -> list[Method]:
        """The settings of this method the agreement study compares on ``model``."""
        return [cls()]

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    @property
    def label(self) -> str:
        """The name with each field that differs from its default (``relp(glu_rule=...)``)."""
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name


def _check_rule(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise GatescopeError(f"{what} '{value}' is unknown; valid rules: {', '.join(valid)}")


def _check_steps(steps: int, name: str) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise GatescopeError(f"{name} steps must be at least 1, got {steps} (5 is usual)")


@dataclass(frozen=True)
class AtP(Method):
    """Attribution patching: the plain gradient at the corrupt point (2 forward, 1 backward)."""

    name: ClassVar[str] = "atp"


@dataclass(frozen=True)
class AtPStar(Method):
    """AtP plus, for every component and every attention layer it writes into (directly,
    through the residual stream), the exact attention block output recomputed with the
    component patched in place of AtP's linear estimate through that block: each query's
    softmax is recomputed exactly, the QK fix of AtP* (also for attention-gate and GLU sites).

    Attributes:
        grad_drop: also GradDrop: the score is ``1/(L-1) sum_l |score with layer l's writes
            passing no gradient|`` (a magnitude, against cancellation; L more backward
            passes).
    """

    name: ClassVar[str] = "atp*"
    grad_drop: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.grad_drop, bool):
            raise GatescopeError(f"grad_drop must be true or false, got {self.grad_drop!r}")

    def passes(self) -> None:
        return None  # one attention-block call per component and downstream layer

    @property
    def signed(self) -> bool:
        return not self.grad_drop

    @classmethod
    def variants(cls, model: Model) -> list[Method]:
        return [cls(), cls(grad_drop=True)]


@dataclass(frozen=True)
class RelP(Method):
    """RelP (2 forward, 1 backward).

    Attributes:
        gate_rule: attention output gate product, ``half`` (each factor half the relevance)
            or ``constant`` (the gate is a constant; all relevance on the attention path).
        glu_rule: GLU product, ``half`` (LRP) or ``gradient`` (plain gradient).
        hold_attention: the AH rule, attention probabilities held constant (``False``: the
            softmax keeps its gradient, as in the RelP repository's default rule set).
    """

    name: ClassVar[str] = "relp"
    rules: ClassVar[bool] = True
    gate_rule: str = "half"
    glu_rule: str = "half"
    hold_attention: bool = True

    def __post_init__(self) -> None:
        _check_rule(self.gate_rule, GATE_RULES, "gate rule")
        _check_rule(self.glu_rule, GLU_RULES, "GLU rule")
        if not isinstance(self.hold_attention, bool):
            raise GatescopeError(f"hold_attention must be true or false, got {self.hold_attention}")

    @classmethod
    def variants(cls, model: Model) -> list[Method]:
        """Both gate rules on gated models, with the AH rule and without, and the GLU
        product's plain gradient."""
        gates = GATE_RULES if model.is_gated else ("half",)
        out: list[Method] = []
        for gate in gates:
            out += [cls(gate_rule=gate), cls(gate_rule=gate, hold_attention=False)]
        return [*out, cls(glu_rule="gradient")]


@dataclass(frozen=True)
class RelPStar(RelP):
    """RelP with attention held constant (LRP rules on the residual, MLP, gate and value
    paths) plus the exact change of each attention output caused by the patched component
    changing the attention pattern (query/key path), weighted by the LRP coefficient at the
    attention output (:mod:`circuits.atp_star`)."""

    name: ClassVar[str] = "relp*"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hold_attention:
            raise GatescopeError("relp* holds attention constant (its q/k path is exact)")

    def passes(self) -> None:
        return None

    @classmethod
    def variants(cls, model: Model) -> list[Method]:
        gates = GATE_RULES if model.is_gated else ("half",)
        return [cls(gate_rule=gate) for gate in gates]


@dataclass(frozen=True)
class IG(Method):
    """Integrated gradients: gradients averaged over ``steps`` corrupt passes with input
    embeddings ``e_corrupt + (k / steps)(e_clean - e_corrupt)``, k = 0 .. steps-1."""

    name: ClassVar[str] = "ig"
    steps: int = 5

    def __post_init__(self) -> None:
        _check_steps(self.steps, "IG")

    def alphas(self) -> list[float]:
        return [k / self.steps for k in range(self.steps)]

    @classmethod
    def variants(cls, model: Model) -> list[Method]:
        return [cls(steps=5), cls(steps=2)]


@dataclass(frozen=True)
class EAP(Method):
    """Edge attribution patching: ``(u_clean - u_corrupt) . dm/d(input of v)`` per edge."""

    name: ClassVar[str] = "eap"
    edges: ClassVar[bool] = True


@dataclass(frozen=True)
class EAPIG(Method):
    """EAP-IG: EAP with gradients averaged over ``steps`` passes with interpolated input
    embeddings, k = 1 .. steps (k = steps is the clean input)."""

    name: ClassVar[str] = "eap-ig"
    edges: ClassVar[bool] = True
    steps: int = 5

    def __post_init__(self) -> None:
        _check_steps(self.steps, "EAP-IG")

    def alphas(self) -> list[float]:
        return [k / self.steps for k in range(1, self.steps + 1)]


METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (AtP, AtPStar, RelP, RelPStar, IG, EAP, EAPIG)
}
NODE_METHODS = tuple(n for n, c in METHODS.items() if not c.edges)
EDGE_METHODS = tuple(n for n, c in METHODS.items() if c.edges)

#: The method ``gatescope circuit`` (and :func:`circuits.graph.build_graph`) uses when none is
#: given: the one place to change it. Chosen from ``bench/relp_rules.py``'s table (the best
#: fast method per site kind, r >= 0.95 and top-10 overlap >= 0.8 with activation patching).
CIRCUIT_DEFAULT: Method = IG(steps=2)


def from_dict(data: dict) -> Method:
    """The method object recorded by ``Method.to_dict()``."""
    return make(data["name"], **{k: v for k, v in data.items() if k != "name"})


def method_fields(name: str) -> tuple[str, ...]:
    """The field names of method ``name``."""
    return tuple(f.name for f in fields(get_class(name)))


def get_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise GatescopeError(f"method '{name}' is unknown; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def make(method: str | Method, **options) -> Method:
    """The method object for ``method`` (a name or an object) with ``options`` as fields.

    Unknown names and fields the method does not have are refused (options that are ``None``
    are skipped, so optional CLI flags can be passed through)."""
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(method, Method):
        if options:
            raise GatescopeError(
                f"method object {method.label} given with extra options {sorted(options)}; "
                "set them on the object"
            )
        return method
    cls = get_class(method)
    valid = method_fields(method)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        have = ", ".join(valid) if valid else "no fields"
        raise GatescopeError(
            f"method '{method}' has no field(s) {', '.join(unknown)}; it has {have}"
        )
    return cls(**options)
