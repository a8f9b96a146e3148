"""MIB circuit scores: edge patching against node patching, the ends of the curve, areas."""

import pytest
from tiny import tiny_hf, tiny_tokenizer
from tiny import toy_task as _task

from circuits.graph import _Faithfulness, build_graph
from circuits.mib import EdgePatcher, mib_score
from circuits.nodes import LOGITS, Port
from probe import load_model


@pytest.fixture(scope="module", params=["qwen3_next", "gpt2"])
def setup(request):
    model = load_model(tiny_hf(request.param), tokenizer=tiny_tokenizer())
    task = _task()
    return model, task, build_graph(model, task, "eap"), EdgePatcher(model, task)


def test_full_circuit_is_1_and_empty_is_0(setup):
    _, _, graph, patcher = setup
    edges = [(e.source, e.target) for e in graph.edges]
    assert patcher.faithfulness(set(edges), edges) == pytest.approx(1.0, abs=1e-5)
    assert patcher.faithfulness(set(), edges) == pytest.approx(0.0, abs=1e-5)


def test_cutting_every_edge_of_a_node_is_patching_the_node(setup):
    # the node's output reaches the rest of the model only through its edges, so patching
    # all of them equals patching its output to the corrupt value (node-level faithfulness)
    model, task, graph, patcher = setup
    edges = [(e.source, e.target) for e in graph.edges]
    nodes = _Faithfulness(model, task)
    ports = graph.ports()
    tol = max(1e-5, 2e-7 / abs(patcher.m_clean - patcher.m_corrupt))  # float32 logits
    for name in ("resid_pre.0", "head_out.0.1", "mlp_out.0", "head_out.1.3"):
        u = Port.parse(name)
        kept = {(a, b) for a, b in edges if a != u}
        expected = nodes(ports - {u})
        assert patcher.faithfulness(kept, edges) == pytest.approx(expected, abs=tol)


def test_cutting_every_edge_into_a_head_is_patching_the_head(setup):
    # a head whose q, k, v (and gate) inputs all read the corrupt stream computes its corrupt
    # output (the patched inputs are substituted head by head inside the attention call), so
    # cutting its incoming edges equals patching its output node; cutting only its value
    # input changes the metric by less and differently
    model, task, graph, patcher = setup
    edges = [(e.source, e.target) for e in graph.edges]
    nodes = _Faithfulness(model, task)
    ports = graph.ports()
    tol = max(1e-5, 2e-7 / abs(patcher.m_clean - patcher.m_corrupt))
    for name in ("head_out.1.0", "head_out.1.3", "head_out.0.2"):
        head = Port.parse(name)
        kept = {(a, b) for a, b in edges if b.owner() != head}
        expected = nodes(ports - {head})
        assert abs(expected - 1.0) > 1e-3  # the head matters on this task
        assert patcher.faithfulness(kept, edges) == pytest.approx(expected, abs=tol)
        only_v = {(a, b) for a, b in edges if b != Port(head.site, "v")}
        assert patcher.faithfulness(only_v, edges) != pytest.approx(expected, abs=1e-4)


def test_scores_and_areas(setup):
    model, task, graph, patcher = setup
    score = mib_score(model, task, graph, patcher=patcher)
    assert score.kept[-1] == score.n_edges == len(graph.edges) and score.kept[0] == 1
    assert score.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)
    x, f = score.fractions, score.faithfulness
    trapezoid = sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(x) - 1))
    assert score.cpr == pytest.approx(trapezoid)
    assert score.cmd >= 0 and len(score.figure().data) == 1
    assert score.method_fields == graph.meta["method"] == {"name": "eap"}


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_eap_node_score_is_the_sum_of_its_edges(method):
    model = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer())
    graph = build_graph(model, _task(), method, **({"steps": 3} if method == "eap-ig" else {}))
    assert graph.meta["method"]["name"] == method
    for node in graph.nodes:
        if node.port != LOGITS:
            out = sum(e.score for e in graph.edges if e.source == node.port)
            assert out == pytest.approx(node.score, abs=1e-4 * max(1.0, abs(node.score)))


@pytest.mark.slow
def test_edge_patching_on_a_hybrid(tiny_model):
    # DeltaNet mixers and MoE MLPs are whole-block readers and writers
    model, task = tiny_model("qwen3_next_hybrid"), _task()
    graph = build_graph(model, task, "eap")
    patcher = EdgePatcher(model, task)
    edges = [(e.source, e.target) for e in graph.edges]
    assert patcher.faithfulness(set(edges), edges) == pytest.approx(1.0, abs=1e-5)
    assert patcher.faithfulness(set(), edges) == pytest.approx(0.0, abs=1e-5)
    mixer = Port.parse("attn_out.1")
    kept = {(a, b) for a, b in edges if a != mixer}
    expected = _Faithfulness(model, task)(graph.ports() - {mixer})
    assert patcher.faithfulness(kept, edges) == pytest.approx(expected, abs=1e-5)
