import pytest
import torch
from test_patching import _task
from tiny import qwen3_next_config, tiny_tokenizer
from torch import nn

from circuits.attribution import attribute
from interventions.patching import activation_patching
from probe import GatescopeError, load_model
from probe.tasks import Task


class _Ones(nn.Module):
    def forward(self, x):
        return torch.ones_like(x)


def _linear_model():
    """A Qwen3-Next model made linear in its residual stream: identity norms, q = k = 0
    (uniform attention, so attention is linear in the values), and a constant GLU gate (the
    MLP is its linear up/down path)."""
    import transformers as tf

    torch.manual_seed(0)
    hf = tf.Qwen3NextForCausalLM(qwen3_next_config()).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.input_layernorm = nn.Identity()
            layer.post_attention_layernorm = nn.Identity()
            layer.self_attn.q_norm = nn.Identity()
            layer.self_attn.k_norm = nn.Identity()
            query_rows = layer.self_attn.q_proj.weight.view(4, 2, 16, -1)[:, 0]
            query_rows.zero_()
            layer.self_attn.k_proj.weight.zero_()
            layer.mlp.act_fn = _Ones()
        hf.model.norm = nn.Identity()
    return load_model(hf, tokenizer=tiny_tokenizer())


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


@pytest.mark.parametrize("method", ["atp", "relp", "ig"])
def test_scores_are_invariant_to_batch_order(method):
    from tiny import tiny_hf

    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    task = _task()
    order = [2, 0, 3, 1]
    shuffled = Task(
        "toy",
        *[[getattr(task, f)[i] for i in order] for f in ("clean", "corrupt", "answers", "wrongs")],
    )
    a = attribute(model, task, "mlp_out.*,head_out.1", method, steps=2)
    b = attribute(model, shuffled, "mlp_out.*,head_out.1", method, steps=2)
    for x, y in zip(a.components, b.components, strict=True):
        assert x.effect == pytest.approx(y.effect, abs=1e-5)


def test_bad_input():
    from tiny import tiny_hf

    model = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer())
    with pytest.raises(GatescopeError, match="valid methods: atp, relp, ig"):
        attribute(model, _task(), "resid_pre.0", "magic")
    with pytest.raises(GatescopeError, match="at least 1"):
        attribute(model, _task(), "resid_pre.0", "ig", steps=0)
    uneven = Task("x", ["w1 w2 w3"], ["w1 w2"], ["w4"], ["w5"])
    with pytest.raises(GatescopeError, match="equal lengths"):
        attribute(model, uneven, "resid_pre.0", "atp")
