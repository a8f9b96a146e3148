"""The nnsight backend gives the same results as the local hook backend."""

import pytest
import torch
from tiny import prompts, tiny_hf

from probe import GatescopeError, Site, Tracer, hook_sites, load_model
from probe.gates import gate_stats
from probe.nnsight_backend import NNsightBackend, use_nnsight


@pytest.fixture(scope="module")
def pair(tiny_model):
    local = tiny_model("qwen3_next")
    return local, use_nnsight(local)


def _assert_same_traces(first, second, sites, n_prompts: int) -> None:
    """Both models give the same logits and the same captured sites on the same prompts."""
    batch = first.tokenize(prompts(n_prompts))
    with Tracer(first, sites) as a:
        logits_a = first.run(batch)
    with Tracer(second, sites) as b:
        logits_b = second.run(batch)
    torch.testing.assert_close(logits_a, logits_b)
    for site in a.sites:
        torch.testing.assert_close(a[site], b[site], rtol=1e-5, atol=1e-6)


def test_same_logits_and_captured_sites(pair):
    local, remote_like = pair
    _assert_same_traces(local, remote_like, [f"{k}.*" for k in local.kinds], 3)


def test_same_gate_statistics(pair):
    local, nns = pair
    ra = gate_stats(local, prompts(5), progress=False)
    rb = gate_stats(nns, prompts(5), progress=False)
    torch.testing.assert_close(torch.tensor(ra.mean_gate), torch.tensor(rb.mean_gate))
    torch.testing.assert_close(torch.tensor(ra.sink), torch.tensor(rb.sink))


def test_same_writes_including_residual_sums_and_gates(pair):
    local, nns = pair
    batch = local.tokenize(prompts(2))
    shift = torch.randn(local.dims.d_model, generator=torch.Generator().manual_seed(0))
    edits = [
        (Site("resid_mid", 0), lambda v, i: v + shift),
        (Site("attn_gate", 1, 2), lambda v, i: torch.zeros_like(v)),
        (Site("mlp_gate", 1), lambda v, i: v * 0.5),
    ]
    outs = []
    for model in (local, nns):
        with hook_sites(model, edits, write=True), Tracer(model, "head_out.1") as tr:
            outs.append((model.run(batch), tr["head_out.1"]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert torch.equal(outs[1][1][:, :, 2], torch.zeros_like(outs[1][1][:, :, 2]))
    assert not torch.allclose(outs[0][0], local.run(batch))


def test_gradients_flow_through_the_nnsight_backend(pair):
    local, nns = pair
    batch = local.tokenize(prompts(1))
    grads = []
    for model in (local, nns):
        kept = {}

        def keep(v, info, kept=kept):
            v = v.detach().requires_grad_(True)
            kept["v"] = v
            return v

        with hook_sites(model, [(Site("resid_post", 0), keep)], write=True):
            logits = model.forward(batch.input_ids, batch.attention_mask)
        logits[0, -1, 3].backward()
        grads.append(kept["v"].grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_remote_without_key_fails_before_any_network_call(monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(GatescopeError, match="NDIF_API_KEY"):
        NNsightBackend(tiny_hf("llama"), remote=True)


def test_load_model_selects_the_backend(tmp_path):
    from tiny import save_tiny

    save_tiny(tmp_path / "m", "llama")
    model = load_model(tmp_path / "m", backend="nnsight")
    assert model.backend.name == "nnsight"
    torch.testing.assert_close(model.run(prompts(1)), load_model(tmp_path / "m").run(prompts(1)))
    with pytest.raises(GatescopeError, match="choose 'hooks' or 'nnsight'"):
        load_model(tmp_path / "m", backend="jax")
    with pytest.raises(GatescopeError, match="needs backend='nnsight'"):
        load_model(tmp_path / "m", remote=True)


def test_same_patching_and_relp_scores(pair, make_task):
    from circuits.attribution import attribute
    from interventions.patching import activation_patching

    local, nns = pair
    task = make_task("toy")
    for sites, pos in (("head_out.*", None), ("resid_pre.*", "each")):
        a = activation_patching(local, task, sites, positions=pos, progress=False)
        b = activation_patching(nns, task, sites, positions=pos, progress=False)
        for x, y in zip(a.components, b.components, strict=True):
            assert x.label == y.label and abs(x.effect - y.effect) < 1e-4
    for rule in ("half", "constant"):
        a = attribute(local, task, "mlp_out.*,head_out.*", "relp", gate_rule=rule)
        b = attribute(nns, task, "mlp_out.*,head_out.*", "relp", gate_rule=rule)
        for x, y in zip(a.components, b.components, strict=True):
            assert abs(x.effect - y.effect) < 1e-4


def test_a_model_directory_loads_through_nnsight_lazily(tmp_path):
    """A name or directory with backend='nnsight' is loaded by nnsight itself (its
    TransformersModel): locally the weights load, and every site reads as with hooks."""
    from tiny import save_tiny

    save_tiny(tmp_path / "m", "qwen3_next")
    nns = load_model(tmp_path / "m", backend="nnsight")
    local = load_model(tmp_path / "m")
    assert type(nns.backend.envoy).__name__ in ("TransformersModel", "LanguageModel")
    assert nns.device.type == "cpu" and next(nns.hf.parameters()).device.type == "cpu"
    _assert_same_traces(local, nns, ["attn_gate.*", "mlp_gate.1", "resid_post.*", "head_out.0"], 2)


def test_remote_loading_keeps_the_weights_off_this_machine(tmp_path, monkeypatch):
    """With remote=True the model stays on the meta device: sites and plans resolve, inputs
    go to the CPU, and nothing runs here (a trace would go to NDIF, so none is started)."""
    from tiny import save_tiny

    from probe.hooks import plan_hooks
    from probe.nnsight_backend import _execution_order

    save_tiny(tmp_path / "m", "qwen3_next")
    monkeypatch.setenv("NDIF_API_KEY", "not-a-real-key")
    model = load_model(tmp_path / "m", backend="nnsight", remote=True)
    assert next(model.hf.parameters()).device.type == "meta"
    assert model.device.type == "cpu" and model.backend.remote
    assert len(plan_hooks(model, [(Site("attn_gate", 1), lambda v, i: None)], False, None)) == 1
    order = _execution_order(model)  # the dry run works on meta tensors
    gate = model.hf.model.layers[0].mlp
    assert order[(id(gate.act_fn), "output")] < order[(id(gate.up_proj), "output")]
    with pytest.raises(GatescopeError, match="layer 0 lacks it|out of range"):
        model.check_site(Site("resid_post", 9))


def test_remote_without_key_fails_before_reading_any_config(monkeypatch):
    import transformers

    monkeypatch.delenv("NDIF_API_KEY", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a config was fetched")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_network)
    with pytest.raises(GatescopeError, match="NDIF_API_KEY"):
        load_model("Qwen/Qwen3-Next-80B-A3B-Instruct", backend="nnsight", remote=True)
