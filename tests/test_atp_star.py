"""AtP* and RelP*: exact on a one-layer attention-only model whose only nonlinearity is the
softmax; RelP* keeps RelP's value path and adds the pattern path."""

import pytest
import torch
from tiny import Zero as _Zero
from tiny import attention_only as _attention_only
from tiny import replace_task as _task2
from tiny import tiny_hf, tiny_tokenizer
from tiny import toy_task as _task
from torch import nn

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


class _RemoveSpan(nn.Module):
    """A linear 'MLP' that writes ``-P x``: it removes the stream's part in span(P)."""

    def __init__(self, projector: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("projector", projector)

    def forward(self, x):
        return -(x @ self.projector.to(x.dtype))


def _cancelling():
    """Two layers, linear throughout (identity norms, uniform attention in layer 0, no
    attention output in layer 1): layer 1's MLP removes exactly what head 0.0 writes, so head
    0.0's direct effect on the logits and its effect through layer 1 cancel."""
    model = _attention_only(2)
    first, second = model.hf.model.layers
    d = model.dims.d_head
    with torch.no_grad():
        first.self_attn.q_proj.weight.zero_()
        first.self_attn.k_proj.weight.zero_()
        second.self_attn.o_proj.weight.zero_()
        q, _ = torch.linalg.qr(first.self_attn.o_proj.weight[:, :d])  # head 0.0's write space
    second.mlp = _RemoveSpan(q @ q.T)
    return model


def test_grad_drop_finds_what_cancels():
    model, task = _cancelling(), _task2()
    sites = "head_out.0,mlp_out.1"
    patched = activation_patching(model, task, sites, progress=False)
    atp = attribute(model, task, sites, "atp")
    drop = attribute(model, task, sites, "atp*", grad_drop=True)
    assert drop.meta["signed"] is False and drop.meta["grad_drop"] is True
    by = lambda r: {c.label: c.effect for c in r.components}  # noqa: E731
    p, a, g = by(patched), by(atp), by(drop)
    # head 0.0: patching and AtP agree on (about) 0, its two paths cancel
    assert abs(p["head_out.0.0"]) < 1e-5 and abs(a["head_out.0.0"]) < 1e-5
    # GradDrop: l = 0 (its own layer) gives 0; l = 1 leaves the direct path only, which is
    # its write at the last token dotted with W_U[answer] - W_U[wrong] (linear to the logits)
    batch = task.tokenize(model.tokenizer)
    from probe.sites import Site
    from probe.tracer import Tracer

    runs = {}
    for name, ids in (("clean", batch.clean_ids), ("corrupt", batch.corrupt_ids)):
        with torch.no_grad(), Tracer(model, "head_out.0") as tr:
            logits = model.forward(ids, batch.attention_mask)
        runs[name] = (tr[Site("head_out", 0)][:, :, 0], logits)
    o_proj = model.hf.model.layers[0].self_attn.o_proj.weight[:, : model.dims.d_head]
    write = (runs["clean"][0] - runs["corrupt"][0]) @ o_proj.T  # (N, T, d_model)
    rows = torch.arange(len(batch))
    w_u = model.hf.lm_head.weight
    direct = write[rows, batch.lengths - 1] * (w_u[batch.answer_ids] - w_u[batch.wrong_ids])
    direct = float(direct.sum(-1).mean().detach())
    ld = lambda logits: float(  # noqa: E731
        (logits[rows, batch.lengths - 1, batch.answer_ids]
         - logits[rows, batch.lengths - 1, batch.wrong_ids]).mean()
    )  # fmt: skip
    span = ld(runs["clean"][1]) - ld(runs["corrupt"][1])
    assert abs(direct / span) > 1e-2  # a real effect hidden by cancellation
    assert g["head_out.0.0"] == pytest.approx(abs(direct / span), rel=1e-3)
    # a component of the last layer: l = 1 is its own layer (0), l = 0 leaves AtP as is
    assert g["mlp_out.1"] == pytest.approx(abs(a["mlp_out.1"]), rel=1e-4)
    assert all(v >= 0 for v in g.values())


def _gated_two_layers():
    """Qwen3-Next, two layers, identity norms (also q/k norms), no MLP: the softmax and the
    gate's sigmoid are the only nonlinearities. The embeddings are scaled up (the stream is
    not normalised) so the second layer's softmax is sharp and gates span (0, 1)."""
    import transformers as tf
    from tiny import qwen3_next_config

    torch.manual_seed(2)
    hf = tf.Qwen3NextForCausalLM(qwen3_next_config()).eval()
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(50.0)
        for layer in hf.model.layers:
            layer.input_layernorm = nn.Identity()
            layer.post_attention_layernorm = nn.Identity()
            layer.self_attn.q_norm = nn.Identity()
            layer.self_attn.k_norm = nn.Identity()
            layer.mlp = _Zero()
            layer.self_attn.q_proj.weight.mul_(10.0)
            layer.self_attn.k_proj.weight.mul_(10.0)
        hf.model.norm = nn.Identity()
    return load_model(hf, tokenizer=tiny_tokenizer())


def test_atp_star_is_exact_for_gates_of_a_layer_read_by_one_attention_layer():
    # patching head 0.H's gate changes its output by z * (sigmoid(l_clean) / sigmoid(l_corrupt)
    # - 1) exactly; that write reaches layer 1's attention (recomputed exactly) and the
    # logits linearly: AtP* is the patching effect, AtP (linear through both) is not
    model, task = _gated_two_layers(), _task2()
    patched = activation_patching(model, task, "attn_gate.0", progress=False)
    star = attribute(model, task, "attn_gate.0", "atp*")
    atp = attribute(model, task, "attn_gate.0", "atp")
    gap, miss = 0.0, 0.0
    for p, s, a in zip(patched.components, star.components, atp.components, strict=True):
        assert p.label == s.label
        gap, miss = max(gap, abs(a.effect - p.effect)), max(miss, abs(s.effect - p.effect))
    assert miss < 5e-5 and gap > 1e-3, (miss, gap)  # AtP is off where the softmax moves


def test_atp_star_on_glu_hidden_units_is_their_mlp_output():
    # the GLU product's change goes through down_proj (linear) into mlp_out: scored as the
    # whole mlp_hidden site, AtP* (exact write, the attention fix downstream) must equal AtP*
    # on mlp_out, which takes the residual-stream route
    model, task = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer()), _task()
    star = attribute(model, task, "mlp_hidden.0,mlp_out.0", "atp*", positions="each")
    atp = attribute(model, task, "mlp_hidden.0,mlp_out.0", "atp", positions="each")
    hidden = [c.effect for c in star.components if c.kind == "mlp_hidden"]
    out = [c.effect for c in star.components if c.kind == "mlp_out"]
    assert hidden == pytest.approx(out, abs=1e-5)
    plain = [c.effect for c in atp.components if c.kind == "mlp_hidden"]
    assert max(abs(a - b) for a, b in zip(hidden, plain, strict=True)) > 1e-5  # corrected
