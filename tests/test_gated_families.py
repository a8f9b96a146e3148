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
from probe import GatescopeError, Site, Tracer, load_model


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


def test_a_config_naming_its_own_code_needs_trust_remote_code(tmp_path):
    import json
    import shutil

    from tiny_gated import GATED_ATTENTION_CODE

    for f in GATED_ATTENTION_CODE.glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    auto = {"AutoConfig": "configuration_gated_attention.GatedAttentionConfig"}
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "type_transformers_lacks", "auto_map": auto})
    )
    with pytest.raises(GatescopeError, match="own modelling code.*--trust-remote-code"):
        load_model(tmp_path)


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


# ---------------------------------------------------------------- MoE routers


def _softmax(z):
    return torch.softmax(z.float(), -1)


ROUTERS = {  # family -> (router path in a layer, experts path, independent prob function)
    "qwen3_moe": ("mlp.gate", "mlp.experts", _softmax),
    "qwen2_moe": ("mlp.gate", "mlp.experts", _softmax),
    "olmoe": ("mlp.gate", "mlp.experts", _softmax),
    "mixtral": ("mlp.gate", "mlp.experts", _softmax),
    "gpt_oss": ("mlp.router", "mlp.experts", _softmax),
    "afmoe": ("mlp.router", "mlp.experts", lambda z: torch.sigmoid(z.float())),
    "lfm2_moe": ("feed_forward.gate", "feed_forward.experts", lambda z: torch.sigmoid(z.float())),
}


def _keep(store, key, value) -> None:
    """Record ``value`` once under ``key`` (a hook that returns nothing: it edits nothing)."""
    if isinstance(store, list):
        store.append(value)
    else:
        store.setdefault(key, value)


def _router_logits_from_weights(router, x):
    """``x W^T (+ b)`` from the router's own parameters (AFMoE: its ``gate`` Linear)."""
    lin = getattr(router, "gate", router)
    out = x.reshape(-1, x.shape[-1]) @ lin.weight.detach().T
    bias = getattr(lin, "bias", None)
    return (out if bias is None else out + bias.detach()).float()


@pytest.fixture(scope="module", params=list(ROUTERS))
def moe(request):
    from tiny import tiny_tokenizer
    from tiny_gated import tiny_gated_hf

    model = load_model(tiny_gated_hf(request.param), tokenizer=tiny_tokenizer())
    assert model.family.name == request.param
    return request.param, model


def test_router_sites_equal_the_routers_own_output_and_weights(moe):
    name, model = moe
    router_path, _, prob_fn = ROUTERS[name]
    layers = [i.index for i in model.layer_map() if i.mlp == "moe"]
    assert layers and model.layers_with("router_logit") == layers
    batch = model.tokenize(prompts(3))
    seen = {}
    handles = [
        model.layer(i)
        .get_submodule(router_path)
        .register_forward_hook(lambda m, a, out, i=i: _keep(seen, i, (a[0], out)))
        for i in layers
    ]
    try:
        sites = ["router_logit.*", "router_prob.*", "router_weight.*", "resid_mid.*"]
        tr = _trace_is_exact(model, sites, batch)
    finally:
        for h in handles:
            h.remove()
    b, t = batch.input_ids.shape
    for i in layers:
        x, (logits, scores, idx) = seen[i]
        logit = tr[Site("router_logit", i)]
        assert logit.shape == (b, t, model.dims.n_experts)
        assert torch.equal(logit.reshape(-1, logit.shape[-1]), logits)
        router = model.layer(i).get_submodule(router_path)
        torch.testing.assert_close(logits.float(), _router_logits_from_weights(router, x))
        torch.testing.assert_close(tr[Site("router_prob", i)], prob_fn(logit))
        weight = tr[Site("router_weight", i)].reshape(b * t, -1)
        assert torch.equal(weight.gather(1, idx), scores)
        chosen = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, idx, True)
        assert torch.equal(weight[~chosen], torch.zeros_like(weight[~chosen]))


def test_routing_rule_reproduces_the_models_router_bit_for_bit(moe):
    name, model = moe
    router_path = ROUTERS[name][0]
    tap = model.family.taps["router_weight"]
    batch = model.tokenize(prompts(4, length=16, seed=3))
    outs = {}
    layers = model.layers_with("router_weight")
    handles = [
        model.layer(i)
        .get_submodule(router_path)
        .register_forward_hook(lambda m, a, out, i=i: _keep(outs, i, out))
        for i in layers
    ]
    try:
        model.run(batch)
    finally:
        for h in handles:
            h.remove()
    from probe.families.layouts import Ctx

    for i in layers:
        logits, scores, idx = outs[i]
        ctx = Ctx(model.dims, model.text_config, model.layer(i), None)
        top, chosen = tap.layout.rule(ctx).route(logits, idx.shape[-1])
        assert torch.equal(chosen, idx) and torch.equal(top, scores) and top.dtype == scores.dtype


def test_banning_an_expert_routes_no_token_to_it_and_changes_the_output(moe):
    from interventions.edits import Apply

    name, model = moe
    layer, expert = model.layers_with("router_logit")[-1], 1
    experts = model.layer(layer).get_submodule(ROUTERS[name][1])
    batch = model.tokenize(prompts(3))
    clean = model.run(batch)
    with Tracer(model, f"router_weight.{layer}") as tr:
        model.run(batch)
    assert bool((tr[f"router_weight.{layer}"][..., expert] > 0).any())  # it was used

    def ban(z):
        z = z.clone()
        z[..., expert] = float("-inf")
        return z

    sent = []
    handle = experts.register_forward_pre_hook(lambda m, a: _keep(sent, len(sent), a[1]))
    try:
        with (
            intervene(model, Apply(f"router_logit.{layer}", fn=ban)),
            Tracer(model, f"router_weight.{layer}") as ed,
        ):
            edited = model.run(batch)
    finally:
        handle.remove()
    assert not bool((sent[0] == expert).any())
    assert torch.equal(ed[f"router_weight.{layer}"][..., expert], torch.zeros_like(clean[..., 0]))
    assert not torch.equal(edited, clean)


#: Every MoE family: (MLP block path, how its router turns logits into probabilities).
MOE_BLOCKS = {
    "qwen3_next_hybrid": ("mlp", "softmax"),
    "qwen3_5_moe": ("mlp", "softmax"),
    "qwen3_moe": ("mlp", "softmax"),
    "qwen2_moe": ("mlp", "softmax"),
    "olmoe": ("mlp", "softmax"),
    "mixtral": ("mlp", "softmax"),
    "gpt_oss": ("mlp", "topk_softmax"),
    "afmoe": ("mlp", "sigmoid"),
    "lfm2_moe": ("feed_forward", "sigmoid"),
}


def _forced_weights(model, name, block, logits, forced: int) -> torch.Tensor:
    """The dense weights the family's documented rule gives when ``forced`` must be chosen,
    recomputed in float64 from the unedited logits ``(N, E)``: the forced expert takes one of
    the k slots, the rule fills the others as usual, and the chosen experts' weights are
    normalised as the family normalises them."""
    cfg, k = model.text_config, model.dims.top_k
    z = logits.double()
    kind = MOE_BLOCKS[name][1]
    if kind == "sigmoid":
        score = torch.sigmoid(z)
        bias = getattr(block, "expert_bias", None)
        key = score + (0 if bias is None else bias.double())
    elif kind == "topk_softmax":
        score = key = z
    else:
        score = key = torch.softmax(z, -1)
    key = key.clone()
    key[:, forced] = -torch.inf
    rest = key.topk(k - 1, dim=-1).indices
    chosen = torch.cat([torch.full_like(rest[:, :1], forced), rest], dim=-1)
    w = score.gather(-1, chosen)
    if kind == "sigmoid":
        eps = 1e-20 if name == "afmoe" else 1e-6
        scale = cfg.route_scale if name == "afmoe" else cfg.routed_scaling_factor
        w = w / (w.sum(-1, keepdim=True) + eps) * scale
    elif kind == "topk_softmax":
        w = torch.softmax(w, -1)
    elif getattr(cfg, "norm_topk_prob", True):  # Mixtral has no flag: it always renormalises
        w = w / w.sum(-1, keepdim=True)
    return torch.zeros_like(z).scatter(-1, chosen, w)


@pytest.mark.parametrize("name", list(MOE_BLOCKS))
def test_a_forced_expert_gets_every_token_with_the_familys_own_weights(name):
    """``ForceExperts`` chooses the expert on every token even where a sigmoid router's expert
    bias would outbid any logit, and the weights follow the family's own normalisation."""
    from tiny_gated import tiny_model

    from interventions.edits import ForceExperts

    model = tiny_model(name)
    block_path = MOE_BLOCKS[name][0]
    layer = model.layers_with("router_logit")[-1]
    block = model.layer(layer).get_submodule(block_path)
    batch = model.tokenize(prompts(3))
    site = f"router_logit.{layer}"
    with Tracer(model, [site, f"router_weight.{layer}"]) as clean:
        base = model.run(batch)
    forced = int((clean[f"router_weight.{layer}"] != 0).sum((0, 1)).argmin())  # the rarest
    bias = getattr(block, "expert_bias", None)
    saved = None if bias is None else bias.detach().clone()
    sent = []
    handle = block.experts.register_forward_pre_hook(
        lambda m, a, kw: _keep(sent, 0, a[1] if len(a) > 1 else kw["top_k_index"]),
        with_kwargs=True,
    )
    try:
        if bias is not None:  # a sigmoid saturates: no logit could outbid this bias
            with torch.no_grad():
                bias[forced] = -10.0
        with (
            intervene(model, ForceExperts(site, experts=[forced])),
            Tracer(model, [f"router_weight.{layer}"]) as ed,
        ):
            edited = model.run(batch)
        logits = clean[site].reshape(-1, model.dims.n_experts)
        expect = _forced_weights(model, name, block, logits, forced)
    finally:
        handle.remove()
        if saved is not None:
            with torch.no_grad():
                bias.copy_(saved)
    assert bool((sent[0] == forced).any(-1).all())  # the experts module got it for every token
    weight = ed[f"router_weight.{layer}"].reshape(expect.shape)
    assert bool((weight[:, forced] > 0).all())
    torch.testing.assert_close(weight.double(), expect, rtol=1e-5, atol=1e-6)
    assert not torch.equal(edited, base)


def test_forcing_more_experts_than_top_k_is_refused(moe):
    from interventions.edits import ForceExperts

    _, model = moe
    layer, k = model.layers_with("router_logit")[-1], model.dims.top_k
    with pytest.raises(GatescopeError, match=f"{k + 1} experts are forced.*at most {k}"):
        with intervene(model, ForceExperts(f"router_logit.{layer}", experts=list(range(k + 1)))):
            model.run(model.tokenize(prompts(1)))


def test_every_site_of_an_moe_family_traces_exactly_and_adds_up(moe):
    _, model = moe
    batch = model.tokenize(prompts(2))
    kinds = model.kinds
    tr = _trace_is_exact(model, [f"{k}.*" for k in kinds], batch)
    for i in range(model.dims.n_layers):
        get = lambda k, i=i: tr[Site(k, i)]  # noqa: E731
        assert torch.equal(get("resid_pre") + get("attn_out"), get("resid_mid"))
        assert torch.equal(get("resid_mid") + get("mlp_out"), get("resid_post"))
    dense = [i.index for i in model.layer_map() if i.mlp == "dense"]
    if "mlp_gate" in kinds:  # GLU sites exist on the dense layers only
        assert model.layers_with("mlp_gate") == dense and dense
        layer = model.layer(dense[0])
        act = layer.mlp.act_fn if hasattr(layer, "mlp") else torch.nn.functional.silu
        torch.testing.assert_close(
            tr[Site("mlp_gate", dense[0])], act(tr[Site("mlp_gate_pre", dense[0])])
        )
    if "shared_gate" in kinds:  # sigmoid(shared_expert_gate(x)) of the MoE block's input
        moe = [i.index for i in model.layer_map() if i.mlp == "moe"]
        assert model.layers_with("shared_gate") == moe
        block = model.layer(moe[0]).mlp
        x = model.layer(moe[0]).post_attention_layernorm(tr[Site("resid_mid", moe[0])])
        expect = torch.sigmoid(x @ block.shared_expert_gate.weight.detach().T)
        torch.testing.assert_close(tr[Site("shared_gate", moe[0])], expect, rtol=1e-5, atol=1e-6)


def test_afmoe_attention_gate_is_the_sigmoid_of_its_gate_proj():
    from tiny import tiny_tokenizer
    from tiny_gated import tiny_gated_hf

    model = load_model(tiny_gated_hf("afmoe"), tokenizer=tiny_tokenizer())
    assert model.is_gated and model.layers_with("attn_gate") == list(range(model.dims.n_layers))
    gate_proj = model.layer(1).self_attn.gate_proj
    xs, handle = _capture_inputs(gate_proj)
    batch = model.tokenize(prompts(2))
    try:
        tr = _trace_is_exact(model, ["attn_gate.1", "head_out.1"], batch)
    finally:
        handle.remove()
    h, d = model.dims.n_heads, model.dims.d_head
    expect = torch.sigmoid(xs[0] @ gate_proj.weight.detach().T).view(*batch.input_ids.shape, h, d)
    torch.testing.assert_close(tr["attn_gate.1"], expect, rtol=1e-5, atol=1e-6)
    with intervene(model, ClampGate("attn_gate.1.2", value=0.0)), Tracer(model, "head_out.1") as ed:
        model.run(batch)
    out = ed["head_out.1"]
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    assert torch.equal(out[:, :, :2], tr["head_out.1"][:, :, :2])


# ---------------------------------------------------------------- lfm3


@pytest.fixture(scope="module")
def lfm3():
    from tiny import tiny_tokenizer
    from tiny_gated import tiny_lfm3

    return load_model(tiny_lfm3(), tokenizer=tiny_tokenizer())


def test_lfm3_every_site_traces_exactly_on_the_layers_that_have_it(lfm3):
    model = lfm3
    mixers = [i.mixer for i in model.layer_map()]
    assert mixers == ["conv", "full_attention", "full_attention", "conv"]
    assert model.layers_with("attn_gate") == [1, 2]
    assert model.layers_with("conv_gate") == model.layers_with("conv_out_gate") == [0, 3]
    batch = model.tokenize(prompts(2))
    tr = _trace_is_exact(model, [f"{k}.*" for k in model.kinds], batch)
    for i in range(model.dims.n_layers):
        get = lambda k, i=i: tr[Site(k, i)]  # noqa: E731
        assert torch.equal(get("resid_pre") + get("attn_out"), get("resid_mid"))
        assert torch.equal(get("resid_mid") + get("mlp_out"), get("resid_post"))
        torch.testing.assert_close(
            get("mlp_gate"), torch.nn.functional.silu(get("mlp_gate_pre")), rtol=0, atol=0
        )


def test_lfm3_headwise_gate_is_the_sigmoid_of_g_proj_one_per_head(lfm3):
    model = lfm3
    g_proj = model.layer(2).self_attn.g_proj
    xs, handle = _capture_inputs(g_proj)
    batch = model.tokenize(prompts(2))
    try:
        tr = _trace_is_exact(model, ["attn_gate.2", "head_out.2"], batch)
    finally:
        handle.remove()
    expect = torch.sigmoid(xs[0] @ g_proj.weight.detach().T)[..., None]
    assert tr["attn_gate.2"].shape == (*batch.input_ids.shape, model.dims.n_heads, 1)
    torch.testing.assert_close(tr["attn_gate.2"], expect, rtol=1e-5, atol=1e-6)
    with intervene(model, ClampGate("attn_gate.2.1", value=0.0)), Tracer(model, "head_out.2") as ed:
        model.run(batch)
    out = ed["head_out.2"]
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
    assert torch.equal(out[:, :, 0], tr["head_out.2"][:, :, 0])


@pytest.fixture(scope="module", params=["lfm2", "lfm2_moe"])
def lfm2(request):
    from tiny_gated import tiny_model

    return tiny_model(request.param)


def test_lfm2_every_site_traces_exactly_on_the_layers_that_have_it(lfm2):
    model = lfm2
    mixers = [i.mixer for i in model.layer_map()]
    conv = [i for i, m in enumerate(mixers) if m == "conv"]
    attn = [i for i, m in enumerate(mixers) if m == "full_attention"]
    assert conv and attn and not model.is_gated
    assert model.layers_with("conv_gate") == model.layers_with("conv_out_gate") == conv
    assert model.layers_with("head_out") == attn
    batch = model.tokenize(prompts(2))
    tr = _trace_is_exact(model, [f"{k}.*" for k in model.kinds], batch)
    for i in range(model.dims.n_layers):
        get = lambda k, i=i: tr[Site(k, i)]  # noqa: E731
        assert torch.equal(get("resid_pre") + get("attn_out"), get("resid_mid"))
        assert torch.equal(get("resid_mid") + get("mlp_out"), get("resid_post"))
    for i in model.layers_with("mlp_gate"):
        torch.testing.assert_close(
            tr[Site("mlp_gate", i)], torch.nn.functional.silu(tr[Site("mlp_gate_pre", i)])
        )


@pytest.mark.parametrize("name", ["lfm3", "lfm2", "lfm2_moe"])
def test_conv_gates_are_the_b_and_c_chunks_of_in_proj(name, lfm3):
    from tiny_gated import tiny_model

    from interventions.edits import Apply

    model = lfm3 if name == "lfm3" else tiny_model(name)
    in_proj = model.layer(0).conv.in_proj
    xs, handle = _capture_inputs(in_proj)
    batch = model.tokenize(prompts(2))
    try:
        tr = _trace_is_exact(model, ["conv_gate.0", "conv_out_gate.0"], batch)
    finally:
        handle.remove()
    d, w = model.dims.d_model, in_proj.weight.detach()
    torch.testing.assert_close(tr["conv_gate.0"], xs[0] @ w[:d].T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tr["conv_out_gate.0"], xs[0] @ w[d : 2 * d].T, rtol=1e-5, atol=1e-6)
    clean = model.run(batch)
    for kind in ("conv_gate", "conv_out_gate"):  # a closed gate silences the conv layer
        with (
            intervene(model, Apply(f"{kind}.0", fn=torch.zeros_like)),
            Tracer(model, "attn_out.0") as ed,
        ):
            edited = model.run(batch)
        assert torch.equal(ed["attn_out.0"], torch.zeros_like(ed["attn_out.0"]))
        assert not torch.equal(edited, clean)


# ---------------------------------------------------------------- olmo_hybrid


@pytest.fixture(scope="module")
def olmo_hybrid():
    from tiny import tiny_tokenizer
    from tiny_gated import tiny_olmo_hybrid

    return load_model(tiny_olmo_hybrid(), tokenizer=tiny_tokenizer())


def test_olmo_hybrid_every_site_traces_exactly_on_the_layers_that_have_it(olmo_hybrid):
    model = olmo_hybrid
    assert [i.mixer for i in model.layer_map()] == ["linear_attention"] * 3 + ["full_attention"]
    assert model.layers_with("delta_beta") == model.layers_with("delta_out") == [0, 1, 2]
    assert model.layers_with("head_out") == [3] and model.layers_with("mlp_gate") == [0, 1, 2, 3]
    batch = model.tokenize(prompts(2))
    tr = _trace_is_exact(model, [f"{k}.*" for k in model.kinds], batch)
    for i in range(model.dims.n_layers):
        get = lambda k, i=i: tr[Site(k, i)]  # noqa: E731
        assert torch.equal(get("resid_pre") + get("attn_out") + get("mlp_out"), get("resid_post"))


def test_olmo_hybrid_delta_sites_equal_values_recomputed_from_the_weights(olmo_hybrid):
    model = olmo_hybrid
    mixer = model.layer(1).linear_attn
    xs, handle = _capture_inputs(mixer.b_proj)
    batch = model.tokenize(prompts(2))
    kinds = ["delta_beta", "delta_decay", "delta_gate_pre", "delta_gate", "delta_out"]
    try:
        tr = _trace_is_exact(model, [f"{k}.1" for k in kinds], batch)
    finally:
        handle.remove()
    x, f = xs[0], torch.nn.functional
    b, t = batch.input_ids.shape
    hv, dv = model.dims.n_v_heads, model.dims.d_v
    close = dict(rtol=1e-5, atol=1e-6)
    assert model.text_config.linear_allow_neg_eigval  # beta in [0, 2]
    beta = 2 * torch.sigmoid(x @ mixer.b_proj.weight.detach().T)
    torch.testing.assert_close(tr["delta_beta.1"], beta, **close)
    a = x @ mixer.a_proj.weight.detach().T
    decay = -mixer.A_log.detach().exp() * f.softplus(a + mixer.dt_bias.detach())
    torch.testing.assert_close(tr["delta_decay.1"], decay, **close)
    z = (x @ mixer.g_proj.weight.detach().T).view(b, t, hv, dv)
    torch.testing.assert_close(tr["delta_gate_pre.1"], z, **close)
    torch.testing.assert_close(tr["delta_gate.1"], f.silu(z), **close)
    assert tr["delta_out.1"].shape == (b, t, hv, dv)


def test_olmo_hybrid_zero_write_strength_zeroes_the_recurrence_output(olmo_hybrid):
    from interventions.edits import Apply

    model = olmo_hybrid
    batch = model.tokenize(prompts(2))
    clean = model.run(batch)
    with (
        intervene(model, Apply("delta_beta.0", fn=torch.zeros_like)),
        Tracer(model, "delta_out.0") as ed,
    ):
        edited = model.run(batch)
    assert torch.equal(ed["delta_out.0"], torch.zeros_like(ed["delta_out.0"]))
    assert not torch.equal(edited, clean)
    with pytest.raises(GatescopeError, match=r"\[0, 2\]"):
        with intervene(model, Apply("delta_beta.0", fn=lambda v: v + 3)):
            model.run(batch)


# ---------------------------------------------------------------- statistics


def _gate_means_match_traced(model):
    from probe.gates import gate_stats

    texts = prompts(3, seed=5)
    report = gate_stats(model, texts, batch_size=2, progress=False)
    layers = model.layers_with("attn_gate")
    assert layers
    with Tracer(model, "attn_gate.*") as tr:
        for batch in model.batches(texts, 2):
            model.forward(batch.input_ids, batch.attention_mask)
    batches = list(model.batches(texts, 2))
    for layer in layers:
        real = [_real(p, b) for p, b in zip(tr.passes(f"attn_gate.{layer}"), batches, strict=True)]
        values = torch.cat(real, dim=1).double()  # (1, N, H, g)
        expect = values.mean((0, 1, 3))
        got = torch.tensor(report.mean_gate[layer], dtype=torch.float64)
        torch.testing.assert_close(got, expect)


def _real(value, batch):
    """The values of real (unpadded) tokens, as ``(1, N, H, g)``."""
    return value[batch.attention_mask.bool()][None]


def test_gate_statistics_of_the_paper_layout_equal_traced_means(paper):
    _gate_means_match_traced(paper[2])


@pytest.mark.parametrize("name", ["afmoe", "lfm3"])
def test_gate_statistics_of_gate_modules_equal_traced_means(name, lfm3):
    from tiny import tiny_tokenizer
    from tiny_gated import tiny_gated_hf

    model = lfm3 if name == "lfm3" else load_model(tiny_gated_hf(name), tokenizer=tiny_tokenizer())
    _gate_means_match_traced(model)


# ---------------------------------------------------------------- ranges, registry, bad writes


def test_olmo_hybrid_write_strength_takes_its_own_range_0_to_2(olmo_hybrid):
    """The range of ``delta_beta`` comes from the site's transform: [0, 2] on OLMo Hybrid with
    negative eigenvalues, [0, 1] on Qwen3-Next."""
    from tiny_gated import tiny_model

    from interventions.edits import ScaleGate

    model = olmo_hybrid
    batch = model.tokenize(prompts(2))
    with Tracer(model, "delta_beta.0") as tr:
        clean = model.run(batch)
    assert bool((tr["delta_beta.0"] > 1).any())  # values a [0, 1] clamp would change
    with intervene(model, ScaleGate("delta_beta.0", factor=1.0)):
        assert torch.equal(model.run(batch), clean)
    with (
        intervene(model, ClampGate("delta_beta.0", value=1.5)),
        Tracer(model, "delta_beta.0") as ed,
    ):
        model.run(batch)
    torch.testing.assert_close(ed["delta_beta.0"], torch.full_like(ed["delta_beta.0"], 1.5))
    with (
        intervene(model, ScaleGate("delta_beta.0", factor=4.0)),
        Tracer(model, "delta_beta.0") as ed,
    ):
        model.run(batch)
    assert float(ed["delta_beta.0"].max()) == pytest.approx(2.0)  # clamped to this model's top
    qwen = tiny_model("qwen3_next_hybrid")
    with pytest.raises(GatescopeError, match=r"outside \[0, 1\] for delta_beta on this model"):
        with intervene(qwen, ClampGate("delta_beta.1", value=1.5)):
            qwen.run(qwen.tokenize(prompts(1)))
    with pytest.raises(GatescopeError, match=r"outside \[0, 2\]"):
        ClampGate("delta_beta.0", value=2.5)


def test_two_families_claiming_one_config_are_refused(monkeypatch):
    from types import SimpleNamespace

    import probe.families as families
    from probe.families import Family, _check_registry, family_for_config

    _check_registry(families.FAMILIES)  # the real registry is unambiguous
    a = Family(name="a", model_types=("x",), layers=("model.layers",), taps={})
    b = Family(name="b", model_types=("x", "y"), layers=("model.layers",), taps={})
    with pytest.raises(GatescopeError, match="families a and b both register model_type 'x'"):
        _check_registry((a, b))
    both = (
        Family(name="a", model_types=("x",), layers=(), taps={}, match=lambda c: True),
        Family(name="b", model_types=("x",), layers=(), taps={}, match=lambda c: c.flag),
    )
    _check_registry(both)  # each has a predicate: allowed, as long as configs are told apart
    monkeypatch.setattr(families, "FAMILIES", both)
    with pytest.raises(GatescopeError, match="matches families a, b.*ambiguous"):
        family_for_config(SimpleNamespace(model_type="x", flag=True))
    assert family_for_config(SimpleNamespace(model_type="x", flag=False)).name == "a"


@pytest.mark.parametrize("which", ["lfm3", "paper"])
def test_a_headwise_gate_written_per_dimension_is_refused(which, lfm3, paper):
    from interventions.edits import Add, Apply

    if paper[0] != "headwise":  # elementwise: one gate per head dimension (lfm3: ran once)
        pytest.skip("the paper's elementwise layout has one gate per head dimension")
    model = lfm3 if which == "lfm3" else paper[2]
    layer = model.layers_with("attn_gate")[-1]
    d = model.dims.d_head
    batch = model.tokenize(prompts(1))
    with pytest.raises(GatescopeError, match="headwise: one value per head.*16 given"):
        with intervene(model, Apply(f"attn_gate.{layer}", fn=lambda v: v.expand(*v.shape[:-1], d))):
            model.run(batch)
    with pytest.raises(GatescopeError, match=r"shape \(16,\).*headwise"):
        with intervene(model, Add(f"attn_gate.{layer}.1", vector=torch.zeros(d))):
            model.run(batch)
