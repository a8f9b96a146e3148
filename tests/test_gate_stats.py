"""Streamed gate statistics of every gate type, against figures recomputed from traced values.

Each figure of ``gate_stats`` (accumulated in a reducer, batch by batch, over real tokens only)
is compared with the same figure computed here in float64 from values a Tracer stored:
router entropy, top-k mass, load, dead experts and mean shared gate from the router's own
logits; DeltaNet write strength, decay, retention horizon and output-gate sparsity from the
pre-activations; conv-gate figures from the ``in_proj`` chunks.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny import prompts
from tiny_gated import tiny_model

from interventions.edits import BanExperts, intervene
from probe import Tracer
from probe.gates import CONV_THRESHOLDS, DELTA_GATE_THRESHOLDS, GATE_THRESHOLDS, gate_stats

TEXTS = prompts(5, seed=7)  # unequal lengths: batches of 2 carry padding
BATCH = 2


def _traced(model, sites):
    """Every pass's values of ``sites``, real tokens only, concatenated: site -> (N, ...)."""
    batches = list(model.batches(TEXTS, BATCH, progress=False))
    with Tracer(model, sites) as tr:
        for batch in batches:
            model.forward(batch.input_ids, batch.attention_mask)
    out = {}
    for site in tr.sites:
        passes = tr.passes(site)
        real = [v[b.attention_mask.bool()] for v, b in zip(passes, batches, strict=True)]
        out[str(site)] = torch.cat(real).double()
    return out


def _close(got, want, **tol):
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, **tol)


ROUTER_PROBS = {
    "qwen3_next_hybrid": lambda z: torch.softmax(z, -1),
    "qwen3_moe": lambda z: torch.softmax(z, -1),
    "qwen2_moe": lambda z: torch.softmax(z, -1),
    "olmoe": lambda z: torch.softmax(z, -1),
    "mixtral": lambda z: torch.softmax(z, -1),
    "gpt_oss": lambda z: torch.softmax(z, -1),
    "afmoe": torch.sigmoid,
    "lfm2_moe": torch.sigmoid,
}


@pytest.mark.parametrize("name", list(ROUTER_PROBS))
def test_router_statistics_equal_figures_recomputed_from_traced_logits(name):
    """Entropy and top-k mass over the probabilities normalised per token (a sigmoid router's
    scores do not sum to 1), load, dead experts (one banned expert) and the shared gate."""
    model = tiny_model(name)
    layers = model.layers_with("router_logit")
    banned_layer, k, n_exp = layers[-1], model.dims.top_k, model.dims.n_experts
    ban = BanExperts(f"router_logit.{banned_layer}", experts=[1])
    sites = ["router_logit.*", "router_weight.*"]
    if "shared_gate" in model.kinds:
        sites.append("shared_gate.*")
    with intervene(model, ban):
        report = gate_stats(model, TEXTS, batch_size=BATCH, progress=False)
        traced = _traced(model, sites)
    router = report.router
    for layer in layers:
        logits = traced[f"router_logit.{layer}"]
        p = ROUTER_PROBS[name](logits)
        q = p / p.sum(-1, keepdim=True)
        entropy = -torch.xlogy(q, q).sum(-1).mean()
        mass = q.topk(k, dim=-1).values.sum(-1).mean()
        _close(router["entropy"][layer], entropy, rtol=1e-5, atol=1e-6)
        _close(router["top_k_mass"][layer], mass, rtol=1e-5, atol=1e-6)
        assert router["top_k_mass"][layer] <= 1 + 1e-6
        assert router["entropy"][layer] <= math.log(n_exp) + 1e-6
        chosen = traced[f"router_weight.{layer}"] != 0
        _close(router["load"][layer], chosen.double().mean(0))
        dead = [e for e in range(n_exp) if not bool(chosen[:, e].any())]
        assert router["dead_experts"][layer] == dead
        if "shared_gate" in model.kinds:
            shared = traced[f"shared_gate.{layer}"].mean()
            _close(report.shared_gate[layer], shared, rtol=1e-6, atol=1e-7)
    assert 1 in router["dead_experts"][banned_layer]  # the banned expert never fires
    for layer in range(model.dims.n_layers):
        if layer not in layers:
            assert router["entropy"][layer] is None and router["load"][layer] is None


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next_hybrid", "olmo_hybrid"])
def test_deltanet_statistics_equal_figures_recomputed_from_traced_pre_activations(name):
    model = tiny_model(name)
    report = gate_stats(model, TEXTS, batch_size=BATCH, progress=False)
    kinds = ["delta_beta", "delta_decay", "delta_gate_pre", "attn_gate"]
    traced = _traced(model, [f"{k}.*" for k in kinds if k in model.kinds])
    delta = report.deltanet
    layers = model.layers_with("delta_beta")
    for layer in layers:
        beta = traced[f"delta_beta.{layer}"]  # (N, Hv)
        _close(delta["mean_beta"][layer], beta.mean(0))
        decay = traced[f"delta_decay.{layer}"].mean(0)
        _close(delta["mean_decay"][layer], decay)
        _close(delta["retention_horizon"][layer], math.log(0.5) / decay)
        gate = F.silu(traced[f"delta_gate_pre.{layer}"]).abs()  # (N, Hv, dv)
        for t in DELTA_GATE_THRESHOLDS:
            _close(delta["gate_below"][str(t)][layer], (gate < t).double().mean((0, 2)))
    if name == "olmo_hybrid":  # write strength in [0, 2]: some head means may exceed 1
        assert max(max(delta["mean_beta"][i]) for i in layers) <= 2
    for layer in model.layers_with("attn_gate"):  # the attention gates of the same model
        gate = traced[f"attn_gate.{layer}"]  # (N, H, g)
        _close(report.mean_gate[layer], gate.mean((0, 2)))
        for t in GATE_THRESHOLDS:
            _close(report.gate_below[str(t)][layer], (gate < t).double().mean((0, 2)))
    for layer in range(model.dims.n_layers):
        if layer not in layers:
            assert delta["mean_beta"][layer] is None and delta["gate_below"]["0.1"][layer] is None


@pytest.mark.parametrize("name", ["lfm3", "lfm2", "lfm2_moe"])
def test_conv_gate_statistics_equal_figures_recomputed_from_traced_gates(name):
    model = tiny_model(name)
    report = gate_stats(model, TEXTS, batch_size=BATCH, progress=False)
    traced = _traced(model, ["conv_gate.*", "conv_out_gate.*"])
    conv_layers = model.layers_with("conv_gate")
    assert set(report.conv) == {"conv_gate", "conv_out_gate"} and conv_layers
    for kind, stats in report.conv.items():
        for layer in range(model.dims.n_layers):
            if layer not in conv_layers:
                assert stats["mean"][layer] is None and stats["below"]["0.1"][layer] is None
                continue
            value = traced[f"{kind}.{layer}"]  # (N, d_model)
            _close(stats["mean"][layer], value.mean(), rtol=1e-6, atol=1e-7)
            _close(stats["mean_abs"][layer], value.abs().mean(), rtol=1e-6, atol=1e-7)
            for t in CONV_THRESHOLDS:
                _close(stats["below"][str(t)][layer], (value.abs() < t).double().mean())
    assert report.deltanet is None and (report.router is None) == (name != "lfm2_moe")


def test_the_cli_gate_table_and_the_gates_page_show_the_conv_gates(tmp_path):
    import json

    from streamlit.testing.v1 import AppTest
    from tiny import tiny_tokenizer
    from tiny_gated import tiny_lfm3
    from typer.testing import CliRunner

    from app.cli import app

    path = tmp_path / "lfm3"
    tiny_lfm3().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    runner = CliRunner()
    res = runner.invoke(app, ["gates", str(path), "--prompt", "w1 w2 w3 w4"])
    assert res.exit_code == 0, res.output
    assert "Gated short convolutions" in res.output and "|B|<0.1" in res.output
    res = runner.invoke(app, ["gates", str(path), "--prompt", "w1 w2 w3 w4", "--json"])
    report = json.loads(res.stdout[res.stdout.index("{") :])
    assert report["conv"]["conv_gate"]["mean"][1] is None  # an attention layer
    assert report["conv"]["conv_out_gate"]["below"]["0.1"][0] is not None
    sites = report["provenance"]["sites"].split(",")  # what the statistics read
    assert {"conv_gate.*", "conv_out_gate.*", "attn_gate.*", "mlp_gate.*"} <= set(sites)

    def page(report):
        from app.gate_sections import hybrid_sections

        hybrid_sections(report)

    at = AppTest.from_function(page, kwargs={"report": report}, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert "Gated short convolutions" in [h.value for h in at.subheader]
    assert at.get("plotly_chart")
