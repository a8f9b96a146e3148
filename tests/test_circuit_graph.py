import json

import pytest
import torch
from tiny import tiny_hf, tiny_tokenizer
from tiny import toy_task as _task

from circuits.attribution import attribute
from circuits.graph import build_graph, faithfulness, faithfulness_curve
from probe import GatescopeError, load_model


@pytest.fixture(scope="module")
def setup():
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    task = _task()
    return model, task, build_graph(model, task, "relp")


def test_full_graph_is_faithful_and_empty_graph_is_not(setup):
    model, task, graph = setup
    assert faithfulness(model, task, graph.node_names()) == pytest.approx(1.0, abs=1e-5)
    assert faithfulness(model, task, graph.prune(0).node_names()) == pytest.approx(0.0, abs=1e-5)
    curve = faithfulness_curve(model, task, graph, [0, 11])
    assert curve.values == pytest.approx([0.0, 1.0], abs=1e-5)
    assert curve.smallest(0.8) == 11 and len(curve.figure().data) == 1


def test_node_score_is_the_sum_of_its_outgoing_edges(setup):
    # the gradient at a node's output is the sum of the block-only gradients downstream of it
    # (the residual stream is a sum), so EAP edges split the node's attribution exactly
    _, _, graph = setup
    for node in graph.nodes:
        if node.name != "logits":
            out = sum(e.score for e in graph.edges if e.source == node.name)
            assert out == pytest.approx(node.score, abs=1e-4 * max(1.0, abs(node.score)))


def test_graph_nodes_match_attribute(setup):
    model, task, graph = setup
    heads = attribute(model, task, "head_out.*", "relp")
    by_name = {n.name: n.score for n in graph.nodes}
    for c in heads.components:
        assert by_name[f"head.{c.layer}.{c.head}"] == pytest.approx(c.effect, abs=1e-5)


def test_graph_structure_pruning_and_export(setup):
    _, _, graph = setup
    assert len(graph.nodes) == 1 + 1 + 2 * 4 + 2  # logits, embed, heads, MLPs
    assert len(graph.edges) == 33  # every output feeds every later block input
    small = graph.prune(3)
    assert len(small.nodes) == 4 and all(e.source in small.node_names() for e in small.edges)
    top = sorted((n for n in graph.nodes if n.name != "logits"), key=lambda n: -abs(n.score))[:3]
    assert {n.name for n in top} < small.node_names()
    assert json.loads(small.to_json())["method"] == "relp"
    assert len(small.figure().data) == len(small.edges) + 1
    with pytest.raises(GatescopeError, match="outside 0-11"):
        graph.prune(12)


def test_gpt2_head_edges_follow_the_modules_route():
    # GPT-2's o_proj is a square Conv1D (weight stored (in, out)); a head's write into the
    # residual stream must be o_proj(z with the other heads zeroed) - o_proj(0), the route
    # per-head DLA takes, and head -> logits edges must use it
    import torch

    from circuits.attribution import gradient_pass
    from circuits.graph import EMBED, _node_deltas
    from probe.hooks import locate
    from probe.sites import Site

    model = load_model(tiny_hf("gpt2"), tokenizer=tiny_tokenizer())
    task = _task()
    graph = build_graph(model, task, "atp")
    n = model.dims.n_layers
    sites = [EMBED, Site("resid_post", n - 1)] + [Site("head_out", i) for i in range(n)]
    sites += [Site("mlp_out", i) for i in range(n)]
    run = gradient_pass(model, sorted(set(sites)), task.tokenize(model.tokenizer), "atp")
    span = run.clean_logit_diff - run.corrupt_logit_diff
    deltas = {name: d for name, _, _, d in _node_deltas(model, run.clean, run.corrupt)}
    edges = {(e.source, e.target): e.score for e in graph.edges}
    for layer in range(n):
        o_proj = locate(model, Site("head_out", layer))
        zc, zx = run.clean[Site("head_out", layer)], run.corrupt[Site("head_out", layer)]
        for h in range(model.dims.n_heads):

            def only(z, h=h, o_proj=o_proj):
                keep = torch.zeros_like(z)
                keep[:, :, h] = z[:, :, h]
                return o_proj(keep.flatten(2)).detach()

            route = only(zc) - only(zx)
            torch.testing.assert_close(deltas[f"head.{layer}.{h}"], route, atol=1e-5, rtol=1e-4)
            expected = float((route * run.grads[Site("resid_post", n - 1)]).sum()) / span
            assert edges[(f"head.{layer}.{h}", "logits")] == pytest.approx(expected, abs=1e-5)


def test_prune_keeps_meta_and_circuit_out_writes_it(setup, tmp_path):
    _, _, graph = setup
    small = graph.prune(3)
    assert small.meta == graph.meta and small.meta["clean_logit_diff"] is not None
    import typer
    from tiny import save_tiny
    from typer.testing import CliRunner

    from app.cli_circuits import register

    app = typer.Typer()
    register(app)
    model_dir = save_tiny(tmp_path / "m")
    task = tmp_path / "t.jsonl"
    t = _task()
    task.write_text(
        "\n".join(
            json.dumps({"clean": a, "corrupt": b, "answer": c, "wrong": d})
            for a, b, c, d in zip(t.clean, t.corrupt, t.answers, t.wrongs, strict=True)
        )
    )
    out = tmp_path / "c.json"
    res = CliRunner().invoke(
        app, ["circuit", str(model_dir), "--task", str(task), "--top-n", "3", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    meta = json.loads(out.read_text())["meta"]
    assert meta["clean_logit_diff"] > meta["corrupt_logit_diff"]
    assert meta["method"] == {"name": "ig", "steps": 2}  # the default method
    res = CliRunner().invoke(
        app,
        ["circuit", str(model_dir), "--task", str(task), "--top-n", "3", "--method", "eap"]
        + ["--mib"],
    )
    assert res.exit_code == 0, res.output
    assert "MIB: CPR" in res.stdout and "100:1.00" in res.stdout


def test_inspector_direct_attributions_add_up_to_the_logit_difference(setup):
    # with the final norm frozen the logits are linear in the residual stream, which is the
    # embedding plus every head's and MLP's output (plus o_proj biases: none here), so the
    # DLAs of all nodes sum to the mean clean logit difference computed by the model itself
    from circuits.inspect import inspect_node
    from probe.tasks import logit_diff

    model, task, graph = setup
    names = [n.name for n in graph.nodes if n.name != "logits"]
    reports = [inspect_node(model, task, graph, name) for name in names]
    batch = task.tokenize(model.tokenizer)
    with torch.no_grad():
        logits = model.forward(batch.clean_ids, batch.attention_mask)
    whole = float(logit_diff(logits, batch).mean())
    assert sum(r.dla for r in reports) == pytest.approx(whole, rel=1e-4, abs=1e-5)
    embed = reports[names.index("embed")]
    assert embed.lens_site == "resid_pre.0" and len(embed.lens_top) == 5
    assert 0 <= embed.answer_rank < model.hf.config.vocab_size
    with pytest.raises(GatescopeError, match="not in the circuit"):
        inspect_node(model, task, graph.prune(1), "mlp.0" if names[0] != "mlp.0" else "mlp.1")
