"""AtP* and RelP*: exact on a one-layer attention-only model whose only nonlinearity is the
softmax; RelP* keeps RelP's value path and adds the pattern path."""

import pytest
from tiny import attention_only as _attention_only
from tiny import replace_task as _task2
from tiny import tiny_hf, tiny_tokenizer
from tiny import toy_task as _task

from circuits.attribution import attribute
from interventions.patching import activation_patching
from probe import load_model


@pytest.mark.parametrize("sites, pos", [("resid_pre.*", "each"), ("head_out.*,attn_out.*", None)])
def test_atp_star_equals_activation_patching_on_one_attention_layer(sites, pos):
    model, task = _attention_only(), _task2()
    patched = activation_patching(model, task, sites, positions=pos, progress=False)
    star = attribute(model, task, sites, "atp*", positions=pos)
    atp = attribute(model, task, sites, "atp", positions=pos)
    gap = 0.0
    for p, s, a in zip(patched.components, star.components, atp.components, strict=True):
        assert p.label == s.label and s.effect == pytest.approx(p.effect, abs=1e-4), (p, s)
        gap = max(gap, abs(a.effect - p.effect))
    if sites == "resid_pre.*":
        assert gap > 1e-2, gap  # AtP alone is off where the softmax moves


def test_atp_star_is_atp_where_no_attention_follows():
    # the last layer's head outputs reach no later attention: no correction
    model, task = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer()), _task()
    star = attribute(model, task, "head_out.1,mlp_out.1", "atp*")
    atp = attribute(model, task, "head_out.1,mlp_out.1", "atp")
    for a, b in zip(atp.components, star.components, strict=True):
        assert a.effect == pytest.approx(b.effect, abs=1e-6)


def test_relp_star_on_one_attention_layer():
    # one layer, linear elsewhere: RelP (AH) is exact along the values with the corrupt
    # pattern; RelP* adds the pattern change exactly, so it also equals patching
    model, task = _attention_only(), _task2()
    patched = activation_patching(model, task, "resid_pre.*", positions="each", progress=False)
    star = attribute(model, task, "resid_pre.*", "relp*", positions="each")
    for p, s in zip(patched.components, star.components, strict=True):
        assert s.effect == pytest.approx(p.effect, abs=1e-4)
