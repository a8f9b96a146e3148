"""Circuits: activation patching vs AtP vs RelP, the circuit graph and its faithfulness."""

import streamlit as st

from app.ui import cached_model, model_name, pick_model, shared_choice
from circuits.agreement import agreement
from circuits.graph import build_graph, faithfulness, faithfulness_curve
from probe.errors import GatescopeError
from probe.tasks import BUNDLED_TASKS, load_task

st.set_page_config(page_title="gatescope: circuits", layout="wide")
st.title("Circuits")


@st.cache_data(show_spinner="Patching and attributing...")
def agree(name: str, task: str, kind: str, n: int):
    return agreement(cached_model(name), load_task(task).subset(n), (kind,), progress=False)


@st.cache_data(show_spinner="Building the circuit graph...")
def graph_and_curve(name: str, task: str, method: str, n: int):
    model, t = cached_model(name), load_task(task).subset(n)
    graph = build_graph(model, t, method)
    return graph, faithfulness_curve(model, t, graph)


model = pick_model()
if model is None:
    st.stop()
name = model_name(model)
cols = st.columns(3)
task = shared_choice(cols[0], "task", "task", list(BUNDLED_TASKS), key="task")
kind = cols[1].selectbox("site kind", ["mlp_out", "attn_out", "resid_pre", "head_out"], key="kind")
n = cols[2].slider("prompts", 4, 48, 16, key="n")
try:
    result = agree(name, task, kind, n)
    graph, curve = graph_and_curve(name, task, "relp", n)
except GatescopeError as exc:
    st.error(str(exc))
    st.stop()

st.subheader("Attribution vs activation patching")
left, right = st.columns([2, 1])
scatter = result.figure(kind)
scatter.update_layout(xaxis_title="activation patching effect", yaxis_title="attribution score")
left.plotly_chart(scatter, width="stretch", key="agreement_scatter")
right.dataframe(
    [
        {
            "method": m,
            "Pearson r": round(result.pearson[kind][m], 3),
            "Spearman r": round(result.spearman[kind][m], 3),
        }
        for m in result.pearson[kind]
    ],
    hide_index=True,
)

st.subheader("RelP circuit")
size = st.slider(
    "nodes in the circuit",
    0,
    len(graph.nodes) - 1,
    curve.smallest(0.8) or len(graph.nodes) - 1,
    # keyed by what the graph was built from: a new task or prompt count starts again at
    # the smallest circuit reaching 80 % faithfulness instead of keeping the old node count
    key=f"size_{name}_{task}_{n}",
)
small = graph.prune(size)
small.faithfulness = faithfulness(cached_model(name), load_task(task).subset(n), small.node_names())
st.metric(
    "faithfulness",
    f"{small.faithfulness:.3f}",
    help="logit difference with only these nodes kept, as a fraction of the full model's",
)
left, right = st.columns([3, 2])
left.plotly_chart(small.figure(), width="stretch", key="circuit_graph")
right.plotly_chart(curve.figure(), width="stretch", key="faithfulness_curve")
