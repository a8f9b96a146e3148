import json

import pytest
import torch
from tiny import tiny_hf, tiny_tokenizer
from tiny import toy_task as _task

from circuits.attribution import attribute, gradient_pass
from circuits.graph import build_graph, faithfulness, faithfulness_curve
from circuits.nodes import LOGITS, Port
from probe import GatescopeError, load_model
from probe.sites import Site


@pytest.fixture(scope="module")
def setup():
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    task = _task()
    return model, task, build_graph(model, task, "relp")


def test_full_graph_is_faithful_and_empty_graph_is_not(setup):
    model, task, graph = setup
    assert faithfulness(model, task, graph.ports()) == pytest.approx(1.0, abs=1e-5)
    assert faithfulness(model, task, graph.prune(0).ports()) == pytest.approx(0.0, abs=1e-5)
    curve = faithfulness_curve(model, task, graph, [0, 11])
    assert curve.values == pytest.approx([0.0, 1.0], abs=1e-5)
    assert curve.smallest(0.8) == 11 and len(curve.figure().data) == 1


def test_node_score_is_the_sum_of_its_outgoing_edges(setup):
    # the gradient at a node's output is the sum of the reader-only gradients downstream of
    # it (the residual stream is a sum; an attention block reads it only through its heads'
    # q, k, v and gate inputs), so the edges split the node's attribution exactly
    _, _, graph = setup
    for node in graph.nodes:
        if node.port != LOGITS:
            out = sum(e.score for e in graph.edges if e.source == node.port)
            assert out == pytest.approx(node.score, abs=1e-4 * max(1.0, abs(node.score)))


def test_heads_reader_gradients_add_up_to_the_block_gradient(setup):
    # q, k, v and gate of every head, each pulled back to resid_pre alone, sum to the
    # gradient into the attention block (the residual gradients around it)
    model, task, _ = setup
    from circuits.graph import graph_sites

    run = gradient_pass(
        model, graph_sites(model), task.tokenize(model.tokenizer), "atp", readers=True
    )
    assert {c for (_, _, c) in run.readers} == {"q", "k", "v", "g"}
    for layer in range(model.dims.n_layers):
        block = run.grads[Site("resid_pre", layer)] - run.grads[Site("resid_mid", layer)]
        parts = sum(r for (i, _, _), r in run.readers.items() if i == layer)
        torch.testing.assert_close(parts, block, atol=1e-6, rtol=1e-4)
        assert all(r.abs().max() > 0 for (i, _, c), r in run.readers.items() if i == layer)


def test_graph_nodes_match_attribute(setup):
    model, task, graph = setup
    heads = attribute(model, task, "head_out.*", "relp")
    by_port = {n.port: n.score for n in graph.nodes}
    for c in heads.components:
        assert by_port[Port(c.site)] == pytest.approx(c.effect, abs=1e-5)


def test_graph_structure_pruning_and_export(setup):
    _, _, graph = setup
    assert len(graph.nodes) == 1 + 1 + 2 * 4 + 2  # logits, embed, heads, MLPs
    # readers: 4 channels (q, k, v, gate) x 4 heads and the MLP per layer, and the logits;
    # the embedding feeds all 35, a layer-0 head 19, MLP 0 18, a layer-1 head 2, MLP 1 1
    assert len(graph.edges) == 35 + 4 * 19 + 18 + 4 * 2 + 1
    targets = {str(e.target) for e in graph.edges}
    assert {"head_out.1.2.q", "head_out.1.2.k", "head_out.1.2.v", "head_out.1.2.g"} < targets
    assert {"mlp_out.0.in", "logits"} < targets
    small = graph.prune(3)
    assert len(small.nodes) == 4 and all(e.source in small.ports() for e in small.edges)
    assert all(e.target.owner() in small.ports() for e in small.edges)
    top = sorted((n for n in graph.nodes if n.port != LOGITS), key=lambda n: -abs(n.score))[:3]
    assert {n.port for n in top} < small.ports()
    data = json.loads(small.to_json())
    assert data["method"] == "relp" and {n["name"] for n in data["nodes"]} == small.node_names()
    assert all(Port.parse(e["target"]) in {e.target for e in small.edges} for e in data["edges"])
    assert len(small.figure().data) == len(small.edges) + 1
    with pytest.raises(GatescopeError, match="outside 0-11"):
        graph.prune(12)


def test_ports_read_back_and_refuse_what_is_not_a_node():
    for text in ("resid_pre.0", "head_out.1.2", "head_out.1.2.q", "mlp_out.0.in", "logits",
                 "attn_out.2", "attn_out.2.in", "head_out.0.3.g@4"):  # fmt: skip
        assert str(Port.parse(text)) == text
    assert Port.parse("head_out.1.2.k").owner() == Port(Site("head_out", 1, 2))
    for bad, message in [
        ("resid_post.1", "not a circuit node"),
        ("head_out.1", "names its head"),
        ("mlp_out.1.q", "only heads"),
        ("head_out.1.2.in", "block input"),
        ("resid_pre.0.in", "writer only|block input"),
    ]:
        with pytest.raises(GatescopeError, match=message):
            Port.parse(bad)


def test_gpt2_head_edges_follow_the_modules_route():
    # GPT-2's o_proj is a square Conv1D (weight stored (in, out)); a head's write into the
    # residual stream must be o_proj(z with the other heads zeroed) - o_proj(0), the route
    # per-head DLA takes, and head -> logits edges must use it
    import torch

    from circuits.attribution import EMBED
    from circuits.graph import writer_delta
    from probe.hooks import locate

    model = load_model(tiny_hf("gpt2"), tokenizer=tiny_tokenizer())
    task = _task()
    graph = build_graph(model, task, "atp")
    n = model.dims.n_layers
    sites = [EMBED, Site("resid_post", n - 1)] + [Site("head_out", i) for i in range(n)]
    sites += [Site("mlp_out", i) for i in range(n)]
    run = gradient_pass(model, sorted(set(sites)), task.tokenize(model.tokenizer), "atp")
    span = run.clean_logit_diff - run.corrupt_logit_diff
    edges = {(str(e.source), str(e.target)): e.score for e in graph.edges}
    for layer in range(n):
        o_proj = locate(model, Site("head_out", layer))
        zc, zx = run.clean[Site("head_out", layer)], run.corrupt[Site("head_out", layer)]
        for h in range(model.dims.n_heads):

            def only(z, h=h, o_proj=o_proj):
                keep = torch.zeros_like(z)
                keep[:, :, h] = z[:, :, h]
                return o_proj(keep.flatten(2)).detach()

            route = only(zc) - only(zx)
            port = Port(Site("head_out", layer, h))
            delta = writer_delta(model, port, run.clean, run.corrupt)
            torch.testing.assert_close(delta, route, atol=1e-5, rtol=1e-4)
            expected = float((route * run.grads[Site("resid_post", n - 1)]).sum()) / span
            assert edges[(str(port), "logits")] == pytest.approx(expected, abs=1e-5)


def test_prune_keeps_meta_and_circuit_out_writes_it(setup, tmp_path):
    _, _, graph = setup
    small = graph.prune(3)
    assert small.meta == graph.meta and small.meta["clean_logit_diff"] is not None
    import typer
    from tiny import save_tiny
    from typer.testing import CliRunner

    from app.cli_circuits import register
    from circuits.methods import CIRCUIT_DEFAULT

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
    assert meta["method"] == CIRCUIT_DEFAULT.to_dict()  # the registry's default
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
    names = [n.name for n in graph.nodes if n.port != LOGITS]
    reports = [inspect_node(model, task, graph, name) for name in names]
    batch = task.tokenize(model.tokenizer)
    with torch.no_grad():
        logits = model.forward(batch.clean_ids, batch.attention_mask)
    whole = float(logit_diff(logits, batch).mean())
    assert sum(r.dla for r in reports) == pytest.approx(whole, rel=1e-4, abs=1e-5)
    embed = reports[names.index("resid_pre.0")]
    assert embed.lens_site == "resid_pre.0" and len(embed.lens_top) == 5
    assert 0 <= embed.answer_rank < model.hf.config.vocab_size
    small = graph.prune(1)
    missing = next(n for n in names if n not in small.node_names())
    with pytest.raises(GatescopeError, match="not in the circuit"):
        inspect_node(model, task, small, missing)


def test_a_circuit_without_the_embedding_says_why_its_faithfulness_is_0(setup, caplog):
    # nodes inside the circuit compute from what they read, so with the embedding patched to
    # the corrupt prompt's every kept node reads the corrupt input: exactly the corrupt run
    model, task, graph = setup
    no_embed = {n.port for n in graph.nodes} - {Port(Site("resid_pre", 0))}
    with caplog.at_level("WARNING"):
        assert faithfulness(model, task, no_embed) == pytest.approx(0.0, abs=1e-6)
    assert "leaves out the embedding" in caplog.text
    pruned = graph.prune(3)
    has_embed = Port(Site("resid_pre", 0)) in pruned.ports()
    assert bool(pruned.notes) != has_embed
    assert json.loads(pruned.to_json())["notes"] == pruned.notes


@pytest.mark.slow
def test_hybrid_graph_has_mixer_and_moe_nodes_and_its_edges_add_up(tiny_model):
    # Gated-DeltaNet layers are one writer / reader each (attn_out.L / attn_out.L.in), MoE
    # MLPs one writer each; heads only on the full-attention layer
    model = tiny_model("qwen3_next_hybrid")
    task = _task()
    graph = build_graph(model, task, "eap")
    names = graph.node_names()
    assert {"attn_out.0", "attn_out.1", "attn_out.2", "mlp_out.1", "head_out.3.0"} <= names
    assert not any(n.startswith("head_out.0") for n in names)
    assert "attn_out.1.in" in {str(e.target) for e in graph.edges}
    for node in graph.nodes:
        if node.port != LOGITS:
            out = sum(e.score for e in graph.edges if e.source == node.port)
            assert out == pytest.approx(node.score, abs=1e-4 * max(1.0, abs(node.score)))
    assert faithfulness(model, task, graph.ports()) == pytest.approx(1.0, abs=1e-5)
