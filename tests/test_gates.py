import dataclasses
import json

import pytest
import torch
from tiny import prompts

from probe import Site, Tracer
from probe.gates import GateStatsReducer, gate_sites, gate_stats, token_gates


@pytest.fixture(scope="module")
def sdpa_model(tiny_model):
    """Factory: a tiny model with SDPA attention (gate statistics must not need eager)."""
    return lambda name: tiny_model(name, attn="sdpa")


def test_streamed_statistics_equal_stored_ones(sdpa_model):
    model = sdpa_model("qwen3_next")
    texts = prompts(7)
    report = gate_stats(model, texts, batch_size=3, progress=False)
    batch = model.tokenize(texts)
    with Tracer(model, ["attn_gate.*", "attn_pattern.*", "resid_post.*", "mlp_gate.*"]) as tr:
        model.run(batch)
    mask = batch.attention_mask.bool()
    for layer in range(model.dims.n_layers):
        gate = tr[Site("attn_gate", layer)][mask]  # (N, H, d)
        torch.testing.assert_close(
            torch.tensor(report.mean_gate[layer], dtype=torch.float64),
            gate.mean((0, 2)).double(),
            rtol=1e-5,
            atol=1e-6,
        )
        below = (gate < 0.5).float().mean((0, 2)).double()
        torch.testing.assert_close(
            torch.tensor(report.gate_below["0.5"][layer], dtype=torch.float64), below
        )
        sink = tr[Site("attn_pattern", layer)][:, 1:, :, 0][mask[:, 1:]].mean(0).double()
        torch.testing.assert_close(
            torch.tensor(report.sink[layer], dtype=torch.float64), sink, rtol=1e-5, atol=1e-6
        )
        resid = tr[Site("resid_post", layer)][mask].abs().max()
        assert abs(report.max_activation[layer] - float(resid)) < 1e-6
    assert report.n_tokens == int(mask.sum())
    assert model.hf.config._attn_implementation == "sdpa"
    data = json.loads(report.to_json())  # every figure survives the JSON round trip exactly
    assert {k: v for k, v in data.items() if k != "summary"} == dataclasses.asdict(report)
    assert data["summary"] == report.summary()


def test_ungated_model_reports_sink_but_no_gate_figures(sdpa_model):
    model = sdpa_model("gpt2")
    report = gate_stats(model, prompts(3), progress=False)
    assert report.mean_gate is None and report.gated_output_below is None
    assert report.glu_below is None
    assert len(report.sink) == 2 and all(0 < s < 1 for row in report.sink for s in row)
    assert report.summary()["mean_gate"] is None and report.summary()["sink"] > 0
    assert {s.kind for s in gate_sites(model)} == {"attn_pattern", "resid_post"}


def test_token_gates_shapes(sdpa_model):
    model = sdpa_model("qwen3_next")
    tg = token_gates(model, "w1 w2 w3 w4")
    assert tg.tokens == ["w1", "w2", "w3", "w4"]
    assert len(tg.gates) == 2 and len(tg.gates[0]) == 4 and len(tg.gates[0][0]) == 4
    assert len(tg.glu_active[1]) == 4
    plain = token_gates(sdpa_model("llama"), "w1 w2")
    assert plain.gates is None and plain.glu_active is not None


def test_reducer_ignores_padding(sdpa_model):
    model = sdpa_model("qwen3_next")
    reducer = GateStatsReducer(model)
    value = torch.ones(2, 3, 4, 16)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    reducer.update(Site("attn_gate", 0), value, mask)
    assert reducer.gate_n[0, 0] == 3 * 16
