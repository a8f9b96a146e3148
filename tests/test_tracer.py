"""The tracer on tiny random models of every family: invariants, not golden numbers."""

import pytest
import torch
import torch.nn.functional as F
from tiny import FAMILIES, prompts

from probe import GatescopeError, Site, Tracer, hook_sites
from probe.locate import locate


def test_every_tiny_family_is_tested_here():
    from tiny import CLASSES

    assert set(FAMILIES) | {"qwen3_next_hybrid", "qwen3_5", "qwen3_5_moe"} == set(CLASSES)


@pytest.mark.parametrize("name", FAMILIES)
def test_tracing_leaves_logits_bit_identical(name, tiny_model):
    model = tiny_model(name)
    batch = model.tokenize(prompts(3))
    before = model.run(batch)
    with Tracer(model, [f"{k}.*" for k in model.kinds]) as tr:
        during = model.run(batch)
    assert torch.equal(before, during)
    assert torch.equal(before, model.run(batch))
    assert len(tr.activations) == len(model.kinds) * model.dims.n_layers


@pytest.mark.parametrize("name", FAMILIES)
def test_residual_and_head_identities(name, tiny_model):
    model = tiny_model(name)
    with Tracer(model, [f"{k}.*" for k in model.kinds]) as tr:
        model.run(prompts(2))
    for layer in range(model.dims.n_layers):
        get = lambda kind, layer=layer: tr[Site(kind, layer)]  # noqa: E731
        assert torch.equal(get("resid_pre") + get("attn_out"), get("resid_mid"))
        assert torch.equal(get("resid_mid") + get("mlp_out"), get("resid_post"))
        o_proj = locate(model, Site("head_out", layer))
        heads = get("head_out")  # (B, T, H, d)
        attn = o_proj(heads.flatten(2))
        if name in ("gemma2", "gemma3_text"):  # sandwich norm after o_proj
            attn = model.layer(layer).post_attention_layernorm(attn)
        torch.testing.assert_close(attn, get("attn_out"), rtol=1e-5, atol=1e-6)
        if "mlp_gate" in model.kinds:
            torch.testing.assert_close(
                get("mlp_gate") * get("mlp_up"), get("mlp_hidden"), rtol=0, atol=0
            )
            act = model.layer(layer).mlp.act_fn
            assert torch.equal(act(get("mlp_gate_pre")), get("mlp_gate"))
        pattern = get("attn_pattern")  # (B, Tq, H, Tk)
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))


def test_attn_gate_is_sigmoid_of_recomputed_gate_logits(tiny_model):
    model = tiny_model("qwen3_next")
    H, D = model.dims.n_heads, model.dims.d_head
    normed = {}
    layer = model.layer(1)
    handle = layer.input_layernorm.register_forward_hook(lambda m, a, o: normed.update(x=o))
    try:
        with Tracer(model, ["attn_gate.1", "attn_gate_logit.1", "attn_gate.1.2"]) as tr:
            model.run(prompts(2))
    finally:
        handle.remove()
    q = F.linear(normed["x"], layer.self_attn.q_proj.weight)  # (B, T, H*2D)
    gate_logit = q.view(*q.shape[:2], H, 2, D)[..., 1, :]  # (B, T, H, D)
    assert torch.equal(tr["attn_gate_logit.1"], gate_logit)
    assert torch.equal(tr["attn_gate.1"], torch.sigmoid(gate_logit))
    assert torch.equal(tr["attn_gate.1.2"], torch.sigmoid(gate_logit[:, :, 2]))


def test_positions_count_from_each_rows_end(tiny_model):
    model = tiny_model("llama")
    texts = prompts(3)  # different lengths: right padding
    batch = model.tokenize(texts)
    with (
        Tracer(model, "resid_post.1") as full,
        Tracer(model, "resid_post.1", positions=[0, -1]) as sel,
    ):
        model.run(batch)
    for row, n in enumerate(batch.lengths.tolist()):
        assert torch.equal(sel["resid_post.1"][row, 0], full["resid_post.1"][row, 0])
        assert torch.equal(sel["resid_post.1"][row, 1], full["resid_post.1"][row, n - 1])
    with pytest.raises(GatescopeError, match="out of range"):
        with Tracer(model, "resid_post.1", positions=[40]):
            model.run(batch)


def test_device_dtype_and_multiple_passes(tiny_model):
    model = tiny_model("qwen3_next")
    with Tracer(model, "mlp_gate.0", device="cpu", dtype=torch.float16) as tr:
        model.run(prompts(2, length=8, seed=1)[:1])
        model.run(prompts(2, length=8, seed=2)[:1])
    assert tr["mlp_gate.0"].dtype == torch.float16 and tr["mlp_gate.0"].shape[0] == 2


def _all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


def test_no_hook_survives_an_exception(tiny_model):
    model = tiny_model("qwen3_next")
    assert _all_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with Tracer(model, [f"{k}.*" for k in model.kinds]):
            model.run(prompts(1))
            assert _all_hooks(model) > 0
            raise RuntimeError("boom")
    assert _all_hooks(model) == 0
    assert model.hf.config._attn_implementation == "eager"


def test_pattern_tracing_restores_attention_implementation(tiny_model):
    model = tiny_model("qwen3_next", attn="sdpa")
    with Tracer(model, "attn_pattern.0") as tr:
        model.run(prompts(1))
    assert tr["attn_pattern.0"].shape[2] == model.dims.n_heads
    assert model.hf.config._attn_implementation == "sdpa"


def test_streaming_reducer_sees_every_pass_without_storing(tiny_model):
    class Count:
        n = 0

        def update(self, site, value, mask):
            Count.n += int(mask.sum())

    model = tiny_model("qwen3_next")
    texts = prompts(5)
    with Tracer(model, "resid_post.0", reducers=[Count()], keep=False) as tr:
        for batch in model.batches(texts, batch_size=2):
            model.forward(batch.input_ids, batch.attention_mask)
    assert Count.n == int(model.tokenize(texts).lengths.sum())
    with pytest.raises(GatescopeError, match="saw no forward pass"):
        tr["resid_post.0"]


def test_writes_through_hook_sites(tiny_model):
    model = tiny_model("qwen3_next")
    batch = model.tokenize(prompts(2))
    clean = model.run(batch)
    identity = lambda v, info: v.clone()  # noqa: E731
    sites = [Site(k, 1) for k in model.kinds if k != "attn_pattern"]
    with hook_sites(model, [(s, identity) for s in sites], write=True):
        assert torch.equal(model.run(batch), clean)
    # a gate clamped to 0 zeroes that head's output exactly
    with hook_sites(model, [(Site("attn_gate", 0, 1), lambda v, i: torch.zeros_like(v))], True):
        with Tracer(model, "head_out.0") as tr:
            model.run(batch)
    assert torch.equal(tr["head_out.0"][:, :, 1], torch.zeros_like(tr["head_out.0"][:, :, 1]))
    assert tr["head_out.0"][:, :, 0].abs().sum() > 0
    # writing resid_mid reaches the residual stream (resid_post moves by the same delta)
    shift = torch.randn(model.dims.d_model)
    with Tracer(model, ["resid_post.0", "mlp_out.0"]) as base:
        model.run(batch)
    with hook_sites(model, [(Site("resid_mid", 0), lambda v, i: v + shift)], write=True):
        with Tracer(model, ["resid_post.0", "mlp_out.0", "resid_mid.0"]) as moved:
            model.run(batch)
    expected = base["resid_post.0"] - base["mlp_out.0"] + shift + moved["mlp_out.0"]
    torch.testing.assert_close(moved["resid_post.0"], expected, rtol=1e-5, atol=1e-5)


def test_read_only_site_refuses_writes(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(GatescopeError, match="read-only"):
        with hook_sites(model, [(Site("attn_pattern", 0), lambda v, i: v)], write=True):
            pass


def test_a_tracer_sees_only_its_own_threads_passes(tiny_model):
    # a web app runs two requests on one cached model at once: each tracer must capture only
    # the passes of the thread that opened it
    import threading

    model = tiny_model("qwen3_next")
    ids = model.tokenize(prompts(2)).input_ids
    other = model.tokenize(prompts(3, length=5, seed=9)).input_ids
    inside, done = threading.Event(), threading.Event()

    def elsewhere():
        inside.wait()
        with torch.no_grad():
            model.forward(other, None)  # another thread, another shape, while the tracer is open
        done.set()

    worker = threading.Thread(target=elsewhere)
    worker.start()
    with Tracer(model, ["attn_gate.1", "resid_post.0"]) as tr, torch.no_grad():
        inside.set()
        assert done.wait(60)
        model.forward(ids, None)
    worker.join()
    assert len(tr.passes("attn_gate.1")) == 1 and tr["resid_post.0"].shape[:2] == ids.shape
