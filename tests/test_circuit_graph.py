import json

import pytest
from test_patching import _task
from tiny import tiny_hf, tiny_tokenizer

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
