import pytest
import torch
from tiny import linear_model as _linear_model
from tiny import tiny_tokenizer
from tiny import toy_task as _task

from circuits.attribution import attribute
from circuits.methods import IG, AtP, AtPStar, RelP, RelPStar
from interventions.patching import activation_patching
from probe import GatescopeError, load_model
from probe.tasks import Task


def test_atp_equals_activation_patching_on_a_linear_model():
    model = _linear_model()
    base = _task()  # swapped words average out under uniform attention: replace one instead
    task = Task(
        "linear",
        base.clean,
        [f"w7 {c.split(' ', 1)[1]}" for c in base.clean],
        base.answers,
        base.wrongs,
    )
    for sites, pos in (("resid_pre.*,mlp_out.*", "each"), ("head_out.*", None)):
        patched = activation_patching(model, task, sites, positions=pos, progress=False)
        atp = attribute(model, task, sites, "atp", positions=pos)
        for p, a in zip(patched.components, atp.components, strict=True):
            assert p.label == a.label and a.effect == pytest.approx(p.effect, abs=1e-4)


def test_one_step_ig_is_atp_at_the_corrupt_point():
    from tiny import tiny_hf

    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    task = _task()
    atp = attribute(model, task, "resid_pre.*,head_out.*,attn_gate.1", "atp")
    ig = attribute(model, task, "resid_pre.*,head_out.*,attn_gate.1", "ig", steps=1)
    for a, b in zip(atp.components, ig.components, strict=True):
        assert a.effect == pytest.approx(b.effect, abs=1e-5)


@pytest.mark.parametrize(
    "method", [AtP(), RelP(), RelP(hold_attention=False), IG(steps=2), AtPStar(), RelPStar()]
)
def test_scores_are_invariant_to_batch_order(method):
    from tiny import tiny_hf

    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    task = _task()
    order = [2, 0, 3, 1]
    shuffled = Task(
        "toy",
        *[[getattr(task, f)[i] for i in order] for f in ("clean", "corrupt", "answers", "wrongs")],
    )
    a = attribute(model, task, "resid_pre.1,mlp_out.*,head_out.*", method)
    b = attribute(model, shuffled, "resid_pre.1,mlp_out.*,head_out.*", method)
    assert a.meta["name"] == method.name
    for x, y in zip(a.components, b.components, strict=True):
        assert x.effect == pytest.approx(y.effect, abs=1e-5)


def test_bad_input():
    from tiny import tiny_hf

    model = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer())
    with pytest.raises(GatescopeError, match="valid methods: atp, atp\\*, relp, relp\\*, ig, eap"):
        attribute(model, _task(), "resid_pre.0", "magic")
    with pytest.raises(GatescopeError, match="at least 1"):
        attribute(model, _task(), "resid_pre.0", "ig", steps=0)
    uneven = Task("x", ["w1 w2 w3"], ["w1 w2"], ["w4"], ["w5"])
    with pytest.raises(GatescopeError, match="equal lengths"):
        attribute(model, uneven, "resid_pre.0", "atp")


def test_registry_rejects_unknown_fields_and_bad_values():
    from circuits.methods import METHODS, make

    assert set(METHODS) == {"atp", "atp*", "relp", "relp*", "ig", "eap", "eap-ig"}
    assert make("relp", gate_rule="constant") == RelP(gate_rule="constant")
    assert make("ig") == IG(steps=5) and make("atp", steps=None) == AtP()
    with pytest.raises(GatescopeError, match="'atp' has no field.*steps; it has no fields"):
        make("atp", steps=3)
    with pytest.raises(GatescopeError, match="no field.*gate; it has gate_rule, glu_rule"):
        make("relp", gate="half")
    with pytest.raises(GatescopeError, match="gate rule 'third' is unknown"):
        RelP(gate_rule="third")
    with pytest.raises(GatescopeError, match="at least 1"):
        make("eap-ig", steps=0)
    with pytest.raises(GatescopeError, match="holds attention constant"):
        RelPStar(hold_attention=False)
    with pytest.raises(GatescopeError, match="extra options"):
        make(AtP(), steps=2)
    assert IG(steps=4).alphas() == [0.0, 0.25, 0.5, 0.75]
    assert make("eap-ig", steps=4).alphas() == [0.25, 0.5, 0.75, 1.0]
    assert RelP(hold_attention=False).label == "relp(hold_attention=False)"
    with pytest.raises(AttributeError):
        AtP().name = "x"  # class constant
    with pytest.raises(Exception, match="frozen|cannot assign"):
        RelP().gate_rule = "constant"


def test_relp_without_the_ah_rule_differs_only_through_attention():
    # with attention free, the softmax gradient adds q/k paths; the MLP of the last layer
    # sees no attention downstream, so its scores agree
    from tiny import tiny_hf

    model = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer())
    task = _task()
    held = attribute(model, task, "mlp_out.1,resid_pre.0", RelP())
    free = attribute(model, task, "mlp_out.1,resid_pre.0", RelP(hold_attention=False))
    h = {c.label: c.effect for c in held.components}
    f = {c.label: c.effect for c in free.components}
    assert h["mlp_out.1"] == pytest.approx(f["mlp_out.1"], abs=1e-6)
    assert h["resid_pre.0"] != pytest.approx(f["resid_pre.0"], abs=1e-4)


def test_attribution_leaves_every_parameters_grad_as_found():
    # only the probes' gradients are computed (torch.autograd.grad), for every method, the
    # graph's reader gradients and TCAV's site gradients: a parameter without .grad keeps
    # None and one with a .grad keeps it unchanged
    from tiny import tiny_hf

    from circuits.graph import build_graph
    from probe.concepts.tcav import site_gradients

    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    params = list(model.hf.parameters())
    for i, p in enumerate(params[::2]):
        p.grad = torch.full_like(p, float(i + 1))
    before = [None if p.grad is None else p.grad.clone() for p in params]
    task = _task()
    for method in (AtP(), RelP(), RelP(hold_attention=False), IG(steps=2), AtPStar(),
                   AtPStar(grad_drop=True), RelPStar()):  # fmt: skip
        attribute(model, task, "resid_pre.1,head_out.*,attn_gate.1,mlp_out.0", method)
    build_graph(model, task, "eap")
    site_gradients(model, ["w1 w2 w3"], "resid_post.0", lambda logits, lengths: logits[:, -1, 7])
    for p, b in zip(params, before, strict=True):
        assert (p.grad is None) == (b is None)
        if b is not None:
            assert torch.equal(p.grad, b)


def test_registry_drives_costs_variants_and_the_default():
    from circuits.methods import CIRCUIT_DEFAULT, METHODS, from_dict

    assert AtP().passes() == (2, 1) and RelP().passes() == (2, 1)
    assert IG(steps=2).passes() == (3, 2) and IG(steps=2).fast and not IG(steps=5).fast
    assert make_("eap-ig", steps=3).passes() == (5, 3)  # clean, 3 interpolated, corrupt
    assert AtPStar().passes() is None and not AtPStar().fast and not RelPStar().fast
    assert AtPStar(grad_drop=True).signed is False and AtPStar().signed
    assert isinstance(CIRCUIT_DEFAULT, tuple(METHODS.values()))
    for m in (AtP(), RelP(glu_rule="gradient"), IG(steps=3), AtPStar(grad_drop=True)):
        assert from_dict(m.to_dict()) == m
    with pytest.raises(GatescopeError, match="grad_drop must be true or false"):
        AtPStar(grad_drop="yes")


def make_(name, **kw):
    from circuits.methods import make

    return make(name, **kw)
