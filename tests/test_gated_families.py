"""Gate sites of the gated families: the paper's layout, MoE routers, hybrids.

Every site is checked against a value recomputed independently from the module's own weights
(or the module's own output), tracing is checked to leave the logits bit-identical, and each
family's routing rule is checked to reproduce the model's own router bit for bit.
"""

import copy

import pytest
import torch
from tiny import prompts
from tiny_gated import save_gated_attention

from interventions.edits import ClampGate, intervene
from probe import GatescopeError, Tracer, load_model


def _capture_inputs(module):
    """A forward hook keeping ``module``'s first input; returns (store, handle)."""
    store = []
    handle = module.register_forward_hook(lambda m, args, out: store.append(args[0].detach()))
    return store, handle


def _trace_is_exact(model, sites, batch):
    before = model.run(batch)
    with Tracer(model, sites) as tr:
        after = model.run(batch)
    assert torch.equal(before, after)
    return tr


# ---------------------------------------------------------------- gated_attention (paper)


@pytest.fixture(scope="module", params=["headwise", "elementwise"])
def paper(request, tmp_path_factory):
    path = save_gated_attention(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, path, load_model(path, trust_remote_code=True)


def test_paper_layout_gate_is_the_sigmoid_of_each_kv_groups_gate_rows(paper):
    mode, _, model = paper
    assert model.family.name == "gated_attention" and model.is_gated
    dims = model.dims
    h, g, d = dims.n_heads, dims.n_kv_heads, dims.d_head
    r = h // g
    w = 1 if mode == "headwise" else d
    batch = model.tokenize(prompts(2))
    q_proj = model.layer(1).self_attn.q_proj
    xs, handle = _capture_inputs(q_proj)
    try:
        tr = _trace_is_exact(model, ["attn_gate.*", "attn_gate_logit.*"], batch)
    finally:
        handle.remove()
    gate = tr["attn_gate.1"]
    assert gate.shape == (*batch.input_ids.shape, h, w)
    weight, x = q_proj.weight.detach(), xs[0]
    per_group = r * d + r * w  # rows of q_proj per KV group: [queries | gates]
    for group in range(g):
        for j in range(r):
            first = group * per_group + r * d + j * w
            expect = torch.sigmoid(x @ weight[first : first + w].T)
            torch.testing.assert_close(gate[:, :, group * r + j], expect, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.sigmoid(tr["attn_gate_logit.1"]), gate)


def test_paper_layout_closing_one_gate_zeroes_exactly_that_head(paper):
    _, _, model = paper
    batch = model.tokenize(prompts(2))
    clean = model.run(batch)
    with Tracer(model, "head_out.1") as tr:
        model.run(batch)
    with intervene(model, ClampGate("attn_gate.1.2", value=0.0)), Tracer(model, "head_out.1") as ed:
        edited = model.run(batch)
    assert not torch.equal(edited, clean)
    out, before = ed["head_out.1"], tr["head_out.1"]
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    keep = [i for i in range(model.dims.n_heads) if i != 2]
    assert torch.equal(out[:, :, keep], before[:, :, keep])


def test_paper_layout_needs_trust_remote_code(paper):
    _, path, _ = paper
    with pytest.raises(GatescopeError, match="--trust-remote-code"):
        load_model(path)


def test_paper_layout_refuses_gate_flags_that_contradict_q_proj(paper, tmp_path):
    mode, path, model = paper
    other = "elementwise" if mode == "headwise" else "headwise"
    flipped = save_gated_attention(
        tmp_path / "flipped",
        mode,
        **{f"{mode}_attn_output_gate": False, f"{other}_attn_output_gate": True},
    )
    with pytest.raises(GatescopeError, match="attn_output_gate.*q_proj"):
        load_model(flipped, trust_remote_code=True)
    hf = model.hf
    saved = hf.config
    try:
        hf.config = copy.deepcopy(saved)
        setattr(hf.config, f"{other}_attn_output_gate", True)
        with pytest.raises(GatescopeError, match="both"):
            load_model(hf)
    finally:
        hf.config = saved
