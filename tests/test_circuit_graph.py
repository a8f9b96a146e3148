import json

import pytest
from test_patching import _task
from tiny import tiny_hf, tiny_tokenizer

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
    assert curve[0][1] == pytest.approx(0.0, abs=1e-5) and curve[1][1] == pytest.approx(
        1.0, abs=1e-5
    )


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
