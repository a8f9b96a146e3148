"""Gates of hybrid and MoE models (Gated-DeltaNet, routers, shared experts), read and written
through the model's own modules, checked against values recomputed from the weights."""

import functools
import json

import pytest
import torch
import torch.nn.functional as F
from tiny import prompts, tiny_hf, tiny_tokenizer

from interventions import Apply, BanExperts, ClampGate, ForceExperts, ScaleGate, intervene
from probe import GatescopeError, Site, Tracer, load_model
from probe.gates import gate_stats

HYBRIDS = ["qwen3_next_hybrid", "qwen3_5", "qwen3_5_moe"]
NEW_KINDS = [
    "delta_beta",
    "delta_decay",
    "delta_gate_pre",
    "delta_gate",
    "delta_out",
    "router_logit",
    "router_prob",
    "router_weight",
    "shared_gate",
]


def _model(name):
    return load_model(tiny_hf(name), tokenizer=tiny_tokenizer())


@functools.cache
def _cached_model(name):
    """One tiny model per family for the tests that only read it and edit it in scopes."""
    from tiny_gated import tiny_model

    return tiny_model(name)


def _module_io(model, path, layer, side="input"):
    """Capture a module's input (first arg, or the named one) or output with a plain hook."""
    module = model.layer(layer).get_submodule(path)
    got = {}

    def hook(mod, args, kwargs, out=None):
        got["args"], got["kwargs"], got["out"] = args, kwargs, out

    if side == "input":
        return got, module.register_forward_pre_hook(hook, with_kwargs=True)
    return got, module.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("name", HYBRIDS)
def test_tracing_every_gate_site_leaves_logits_bit_identical(name):
    model = _model(name)
    batch = model.tokenize(prompts(3))
    before = model.run(batch)
    kinds = [k for k in NEW_KINDS + ["attn_gate", "mlp_gate"] if k in model.kinds]
    with Tracer(model, [f"{k}.*" for k in kinds]) as tr:
        during = model.run(batch)
    assert torch.equal(before, during)
    assert {s.kind for s in tr.activations} == set(kinds)
    expected = {"delta_beta", "delta_decay", "delta_gate", "delta_out", "attn_gate"}
    assert expected <= set(kinds)


@pytest.mark.parametrize("name", HYBRIDS)
def test_deltanet_sites_equal_values_recomputed_from_the_weights(name):
    model = _model(name)
    dims = model.dims
    batch = model.tokenize(prompts(2))
    layer = 1
    mixer = model.layer(layer).linear_attn
    got, handle = _module_io(model, "linear_attn", layer)
    with Tracer(model, [f"{k}.{layer}" for k in NEW_KINDS[:5]]) as tr:
        model.run(batch)
    handle.remove()
    x = got["args"][0] if got["args"] else got["kwargs"]["hidden_states"]  # (B, T, d)
    mask = batch.attention_mask.bool()
    x = x * mask[..., None]  # the layer zeroes padded positions first
    r = dims.n_v_heads // dims.n_k_heads
    if hasattr(mixer, "in_proj_ba"):  # Qwen3-Next: fused, per key-head group [b (r) | a (r)]
        w = mixer.in_proj_ba.weight
        rows_b = [g * 2 * r + j for g in range(dims.n_k_heads) for j in range(r)]
        rows_a = [g * 2 * r + r + j for g in range(dims.n_k_heads) for j in range(r)]
        b, a = x @ w[rows_b].T, x @ w[rows_a].T
    else:  # Qwen3.5: separate projections
        b, a = x @ mixer.in_proj_b.weight.T, x @ mixer.in_proj_a.weight.T
    torch.testing.assert_close(tr[f"delta_beta.{layer}"], torch.sigmoid(b), rtol=1e-5, atol=1e-6)
    decay = -mixer.A_log.float().exp() * F.softplus(a.float() + mixer.dt_bias)
    torch.testing.assert_close(tr[f"delta_decay.{layer}"], decay, rtol=1e-5, atol=1e-5)
    assert bool((tr[f"delta_decay.{layer}"] <= 0).all())
    # the gated norm: rms(delta_out) * weight * silu(z) is what out_proj reads
    out, z = tr[f"delta_out.{layer}"], tr[f"delta_gate_pre.{layer}"]
    torch.testing.assert_close(tr[f"delta_gate.{layer}"], F.silu(z), rtol=1e-6, atol=1e-6)
    normed = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + mixer.norm.variance_epsilon)
    gated = (mixer.norm.weight * normed * F.silu(z)).flatten(2)
    torch.testing.assert_close(mixer.out_proj(gated), _mixer_out(model, batch, layer))


def _mixer_out(model, batch, layer):
    got, handle = _module_io(model, "linear_attn", layer, side="output")
    model.run(batch)
    handle.remove()
    return got["out"]


@pytest.mark.parametrize("name", ["qwen3_next_hybrid", "qwen3_5_moe"])
def test_router_sites_and_routing_rule_reproduce_the_model_bit_for_bit(name):
    model = _model(name)
    batch = model.tokenize(prompts(3))
    layer = 2
    moe = model.layer(layer).mlp
    got, handle = _module_io(model, "mlp", layer)
    out_got, out_handle = _module_io(model, "mlp.gate", layer, side="output")
    sites = [f"{k}.{layer}" for k in ("router_logit", "router_prob", "router_weight")]
    with Tracer(model, [*sites, f"shared_gate.{layer}"]) as tr:
        model.run(batch)
    handle.remove()
    out_handle.remove()
    x = got["args"][0]  # (B, T, d): the MLP input
    logits = x @ moe.gate.weight.T
    torch.testing.assert_close(tr[sites[0]], logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tr[sites[1]], torch.softmax(logits, -1), rtol=1e-5, atol=1e-6)
    shared = torch.sigmoid(x @ moe.shared_expert_gate.weight.T)
    torch.testing.assert_close(tr[f"shared_gate.{layer}"], shared, rtol=1e-5, atol=1e-6)
    # the family's declared rule, from the router's own logits, equals the router's output
    own_logits, own_scores, own_idx = out_got["out"]
    tap = model.family.taps["router_logit"]
    scores, idx = tap.layout.rule_for(model.text_config).route(own_logits, model.dims.top_k)
    assert torch.equal(scores, own_scores) and torch.equal(idx, own_idx)
    dense = torch.zeros_like(own_logits).scatter(-1, own_idx, own_scores)
    assert torch.equal(tr[sites[2]].reshape(dense.shape), dense)


def _experts_seen(model, layer, batch, edits):
    seen = {}

    def hook(mod, args, kwargs):
        seen["idx"] = args[1] if len(args) > 1 else kwargs["top_k_index"]

    handle = model.layer(layer).mlp.experts.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with intervene(model, edits):
            logits = model.run(batch)
    finally:
        handle.remove()
    return seen["idx"], logits


def test_banned_expert_receives_no_token_and_forced_expert_every_token():
    model = _model("qwen3_next_hybrid")
    batch = model.tokenize(prompts(3))
    layer = 2
    base_idx, base = _experts_seen(model, layer, batch, [])
    busiest = int(torch.bincount(base_idx.flatten()).argmax())
    idx, banned = _experts_seen(
        model, layer, batch, [BanExperts(f"router_logit.{layer}", experts=[busiest])]
    )
    assert busiest in base_idx and busiest not in idx
    assert not torch.allclose(banned, base)
    rare = int(torch.bincount(base_idx.flatten(), minlength=4).argmin())
    idx, _ = _experts_seen(
        model, layer, batch, [ForceExperts(f"router_logit.{layer}", experts=[rare])]
    )
    assert bool((idx == rare).any(-1).all())
    with intervene(model, BanExperts(f"router_logit.{layer}", experts=[busiest])):
        with Tracer(model, [f"router_weight.{layer}", f"router_prob.{layer}"]) as tr:
            model.run(batch)
    assert bool((tr[f"router_weight.{layer}"][..., busiest] == 0).all())
    assert bool((tr[f"router_prob.{layer}"][..., busiest] == 0).all())


def test_writing_router_weight_routes_to_the_written_experts_with_those_weights():
    model = _model("qwen3_next_hybrid")
    batch = model.tokenize(prompts(3))
    layer, site = 2, "router_weight.2"
    base = model.run(batch)

    def route_to_1_and_3(w):
        new = torch.zeros_like(w)
        new[..., 1], new[..., 3] = 0.75, 0.25
        return new

    seen = {}

    def hook(mod, args, kwargs):
        seen["idx"] = args[1] if len(args) > 1 else kwargs["top_k_index"]
        seen["w"] = args[2] if len(args) > 2 else kwargs["top_k_weights"]

    handle = model.layer(layer).mlp.experts.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with intervene(model, Apply(site, fn=route_to_1_and_3)), Tracer(model, [site]) as tr:
            edited = model.run(batch)
    finally:
        handle.remove()
    assert bool((seen["idx"] == torch.tensor([1, 3])).all())  # (B*T, 2): experts 1 then 3
    assert bool((seen["w"] == torch.tensor([0.75, 0.25])).all())
    assert torch.equal(tr[site], route_to_1_and_3(tr[site]))
    assert not torch.allclose(edited, base)


def test_writing_delta_out_changes_exactly_that_heads_input_to_out_proj():
    """``delta_out`` is the gated norm's input: a head written as 0 reaches ``out_proj`` as 0
    (rms(0) * silu(z) = 0); the other heads' rows are untouched."""
    model = _model("qwen3_next_hybrid")
    batch = model.tokenize(prompts(2))
    layer, head = 1, 2
    dims = model.dims
    got, handle = _module_io(model, "linear_attn.out_proj", layer)
    try:
        model.run(batch)
        clean = got["args"][0].view(*batch.input_ids.shape, dims.n_v_heads, dims.d_v).clone()
        with (
            intervene(model, Apply(f"delta_out.{layer}.{head}", fn=torch.zeros_like)),
            Tracer(model, [f"delta_out.{layer}"]) as tr,
        ):
            model.run(batch)
        edited = got["args"][0].view_as(clean)
    finally:
        handle.remove()
    assert torch.equal(tr[f"delta_out.{layer}"][:, :, head], torch.zeros_like(clean[:, :, head]))
    assert torch.equal(edited[:, :, head], torch.zeros_like(clean[:, :, head]))
    assert bool(clean[:, :, head].abs().sum() > 0)
    keep = [h for h in range(dims.n_v_heads) if h != head]
    assert torch.equal(edited[:, :, keep], clean[:, :, keep])


def test_qwen3_5_dense_attention_gate_is_the_sigmoid_of_each_heads_gate_half_of_q_proj():
    model = _model("qwen3_5")
    assert [i.mlp for i in model.layer_map()] == ["dense"] * 4
    layer = model.layers_with("attn_gate")[0]
    h, d = model.dims.n_heads, model.dims.d_head
    batch = model.tokenize(prompts(2))
    got, handle = _module_io(model, "self_attn.q_proj", layer)
    try:
        before = model.run(batch)
        with Tracer(model, [f"attn_gate.{layer}", f"attn_gate_logit.{layer}"]) as tr:
            assert torch.equal(model.run(batch), before)
    finally:
        handle.remove()
    x, w = got["args"][0], model.layer(layer).self_attn.q_proj.weight
    gate = tr[f"attn_gate.{layer}"]
    assert gate.shape == (*batch.input_ids.shape, h, d)
    for head in range(h):  # rows of head h: [query (d) | gate (d)]
        rows = w[head * 2 * d + d : (head + 1) * 2 * d]
        expect = torch.sigmoid(x @ rows.T)
        torch.testing.assert_close(gate[:, :, head], expect, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.sigmoid(tr[f"attn_gate_logit.{layer}"]), gate)


def test_never_write_zeroes_the_recurrence_and_never_forget_sets_decay_zero():
    model = _model("qwen3_next_hybrid")
    batch = model.tokenize(prompts(2))
    base = model.run(batch)
    with intervene(model, ClampGate("delta_beta.1", value=0.0)):
        with Tracer(model, ["delta_out.1", "delta_beta.1", "delta_out.0"]) as tr:
            edited = model.run(batch)
    assert bool((tr["delta_beta.1"] == 0).all())
    assert bool((tr["delta_out.1"] == 0).all())
    assert bool(tr["delta_out.0"].abs().sum() > 0)  # other layers untouched
    assert not torch.allclose(edited, base)
    with intervene(model, ClampGate("delta_decay.1.2", value=0.0)):
        with Tracer(model, ["delta_decay.1"]) as tr:
            model.run(batch)
    decay = tr["delta_decay.1"]
    assert bool((decay[:, :, 2] == 0).all()) and bool((decay[:, :, [0, 1, 3]] < 0).all())


@pytest.mark.parametrize(
    "kind, change",
    [
        ("delta_beta", lambda v: v * 0.5),
        ("delta_decay", lambda v: v * 0.25),
        ("delta_gate", lambda v: v.clamp(min=0) * 1.5),
        ("delta_gate_pre", lambda v: v - 0.3),
        ("shared_gate", lambda v: 1 - v),
        ("router_prob", lambda v: torch.softmax(torch.log(v) * 0.5, -1)),
    ],
)
@pytest.mark.parametrize("name", ["qwen3_next_hybrid", "qwen3_5_moe", "olmo_hybrid", "qwen2_moe"])
def test_writes_through_inverse_transforms_read_back_as_written(name, kind, change):
    model = _cached_model(name)
    if kind not in model.kinds:
        pytest.skip(f"{name} has no {kind}")
    batch = model.tokenize(prompts(2))
    site = f"{kind}.2"
    assert model.has_site(Site.parse(site))
    with Tracer(model, [site]) as tr:
        model.run(batch)
    wanted = change(tr[site])
    with intervene(model, Apply(site, fn=change)):
        with Tracer(model, [site]) as after:
            model.run(batch)
    torch.testing.assert_close(after[site], wanted, rtol=1e-4, atol=1e-5)


def test_kind_star_takes_the_layers_that_have_it_and_explicit_layers_refuse():
    model = _model("qwen3_next_hybrid")
    assert [s.layer for s in model.sites("attn_gate.*")] == [3]
    assert [s.layer for s in model.sites("delta_beta.*")] == [0, 1, 2]
    assert [s.layer for s in model.sites("router_prob.*")] == [1, 2, 3]
    assert len(model.sites("router_prob.2.*")) == model.dims.n_experts
    with pytest.raises(GatescopeError, match=r"layer 0 \(linear_attention.*exists on layers: 3"):
        model.sites("attn_gate.0")
    with pytest.raises(GatescopeError, match="9 is out of range.*0-3"):
        model.sites("router_prob.2.9")
    info = model.layer_map()
    assert [i.mixer for i in info] == ["linear_attention"] * 3 + ["full_attention"]
    assert [i.mlp for i in info] == ["dense", "moe", "moe", "moe"]


def test_gate_report_has_null_not_zero_on_layers_without_a_gate():
    model = _model("qwen3_next_hybrid")
    texts = prompts(4)
    report = json.loads(gate_stats(model, texts, batch_size=2, progress=False).to_json())
    assert report["mean_gate"][:3] == [None, None, None] and report["mean_gate"][3] is not None
    assert report["deltanet"]["mean_beta"][3] is None
    assert report["router"]["load"][0] is None and report["shared_gate"][0] is None
    # streamed figures equal ones computed from stored activations
    batch = model.tokenize(texts)
    with Tracer(model, ["delta_beta.1", "delta_decay.1", "router_weight.2"]) as tr:
        model.run(batch)
    mask = batch.attention_mask.bool()
    beta = tr["delta_beta.1"][mask].double().mean(0)
    torch.testing.assert_close(torch.tensor(report["deltanet"]["mean_beta"][1]).double(), beta)
    decay = tr["delta_decay.1"][mask].double().mean(0)
    horizon = torch.log(torch.tensor(0.5, dtype=torch.float64)) / decay
    torch.testing.assert_close(
        torch.tensor(report["deltanet"]["retention_horizon"][1]).double(), horizon
    )
    load = (tr["router_weight.2"][mask] != 0).double().mean(0)
    torch.testing.assert_close(torch.tensor(report["router"]["load"][2]).double(), load)
    assert sum(report["router"]["load"][2]) == pytest.approx(model.dims.top_k)


def test_bad_gate_edits_are_refused_clearly():
    model = _model("qwen3_next_hybrid")
    batch = model.tokenize(prompts(1))
    with pytest.raises(GatescopeError, match="log decay must be <= 0"):
        with intervene(model, Apply("delta_decay.1", fn=lambda v: v * 0 + 0.5)):
            model.run(batch)
    with pytest.raises(GatescopeError, match="outside"):
        ClampGate("delta_decay.1", value=0.5)
    with pytest.raises(GatescopeError, match="banning all 4 experts"):
        with intervene(model, BanExperts("router_logit.2", experts=[0, 1, 2, 3])):
            model.run(batch)
    with pytest.raises(GatescopeError, match=r"experts \[7\].*out of range"):
        with intervene(model, ForceExperts("router_logit.2", experts=[7])):
            model.run(batch)
    with pytest.raises(GatescopeError, match="router_logit.LAYER"):
        BanExperts("router_prob.2", experts=[0])
    with pytest.raises(GatescopeError, match="gate edits need a gate site"):
        ScaleGate("resid_post.1", factor=0.5)


@pytest.fixture(scope="module")
def hybrid():
    return _model("qwen3_next_hybrid")


@pytest.mark.parametrize(
    "spec, heads",
    [
        ("delta_beta.1", "n_v_heads"),
        ("delta_decay.1", "n_v_heads"),
        ("delta_gate.2", "n_v_heads"),
        ("router_prob.2", "n_experts"),
        ("router_logit.3", "n_experts"),
        ("shared_gate.2", None),
    ],
)
def test_patching_sweeps_new_sites_resumed_as_full_passes(hybrid, spec, heads):
    """Clean and corrupt prompts share a prefix, so the sweep resumes its passes after it: the
    effects equal those of full passes (``resume=False``) for every new gate kind, with value
    heads or experts as components."""
    from tiny import late_task as _late_task

    from interventions import activation_patching

    task = _late_task(n=2)
    fast = activation_patching(hybrid, task, spec, progress=False)
    full = activation_patching(hybrid, task, spec, resume=False, progress=False)
    assert fast.resumed and fast.shared_prefix == 5 and not full.resumed
    kind = spec.split(".")[0]
    n = getattr(hybrid.dims, heads) if heads else 1
    want = [(kind, h) for h in range(n)] if heads else [(kind, None)]
    assert [(c.kind, c.head) for c in fast.components] == want
    got = torch.tensor([c.effect for c in fast.components])
    ref = torch.tensor([c.effect for c in full.components])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert bool(ref.abs().sum() > 0)


def test_cli_traces_kind_star_on_a_hybrid_and_reports_every_gate_type(tmp_path):
    from tiny import save_tiny
    from typer.testing import CliRunner

    from app.cli import app

    path = save_tiny(tmp_path / "hybrid", "qwen3_next_hybrid")
    runner = CliRunner()
    out = tmp_path / "acts.safetensors"
    res = runner.invoke(
        app,
        ["trace", str(path), "--prompt", "w1 w2 w3", "--sites", "attn_gate.*,delta_beta.*"]
        + ["--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "attn_gate.*: layers 3" in res.output
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == {"attn_gate.3", "delta_beta.0", "delta_beta.1", "delta_beta.2"}
    res = runner.invoke(app, ["gates", str(path), "--prompt", "w1 w2 w3 w4", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{") :])
    assert report["mean_gate"][0] is None and report["router"]["load"][1] is not None
    res = runner.invoke(app, ["gates", str(path), "--prompt", "w1 w2 w3 w4"])
    assert res.exit_code == 0 and "Gated-DeltaNet" in res.output and "MoE routers" in res.output
