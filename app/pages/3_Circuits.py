"""Circuits: activation patching vs AtP vs RelP, the circuit graph and its faithfulness, on a
bundled task or your own clean / corrupt pair, with a click-a-node inspector (the node's
score, its direct logit attribution and the logit lens at its layer)."""

import json

import streamlit as st

from app.ui import (
    CUSTOM,
    cached_model,
    make_task,
    model_name,
    pair_inputs,
    pick_model,
    shared_choice,
)
from circuits.agreement import agreement
from circuits.graph import build_graph, faithfulness, faithfulness_curve
from circuits.inspect import inspect_node
from probe.errors import GatescopeError
from probe.tasks import BUNDLED_TASKS

st.set_page_config(page_title="gatescope: circuits", layout="wide")
st.title("Circuits")


@st.cache_data(show_spinner=False)
def agree(name: str, spec: tuple, kind: str):
    return agreement(cached_model(name), make_task(spec), (kind,), progress=False)


@st.cache_data(show_spinner=False)
def graph_and_curve(name: str, spec: tuple, method: str):
    model, task = cached_model(name), make_task(spec)
    graph = build_graph(model, task, method)
    return graph, faithfulness_curve(model, task, graph)


@st.cache_data(show_spinner=False)
def inspected(name: str, spec: tuple, size: int, node: str):
    graph, _ = graph_and_curve(name, spec, "relp")
    return inspect_node(cached_model(name), make_task(spec), graph.prune(size), node)


model = pick_model()
if model is None:
    st.stop()
name = model_name(model)
cols = st.columns(3)  # controls wrap into rows at 800 px instead of truncating
task = shared_choice(cols[0], "task", "task", [*BUNDLED_TASKS, CUSTOM], key="task")
kinds = [k for k in ("mlp_out", "attn_out", "resid_pre", "head_out") if k in model.kinds]
kind = cols[1].selectbox("site kind", kinds, key="kind")
if task == CUSTOM:
    spec = pair_inputs(model)
    if spec is None:
        st.stop()
else:
    spec = ("bundled", task, cols[2].slider("prompts", 4, 48, 16, key="n"))
args = (name, spec, kind)
if st.session_state.get("circuits_done") != args:
    if not st.button("Run", key="circuits_run", type="primary"):
        st.info(
            "Activation patching of every component, AtP, RelP and IG, then the RelP circuit "
            "graph and its faithfulness curve (5-30 s): press Run."
        )
        st.stop()
bar = st.progress(0.0, text="patching and attributing...")
try:
    result = agree(name, spec, kind)
    bar.progress(0.5, text="building the circuit graph and its faithfulness curve...")
    graph, curve = graph_and_curve(name, spec, "relp")
except GatescopeError as exc:
    bar.empty()
    st.error(str(exc))
    st.stop()
bar.empty()
st.session_state["circuits_done"] = args

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
    1,
    len(graph.nodes) - 1,
    curve.smallest(0.8) or len(graph.nodes) - 1,
    # keyed by what the graph was built from: a new task, pair or prompt count starts again
    # at the smallest circuit reaching 80 % faithfulness instead of keeping the old node count
    key=f"size_{name}_{spec}",
)
small = graph.prune(size)
small.faithfulness = faithfulness(cached_model(name), make_task(spec), small.node_names())
st.metric(
    "faithfulness",
    f"{small.faithfulness:.3f}",
    help="logit difference with only these nodes kept, as a fraction of the full model's",
)
left, right = st.columns([3, 2])
graph_fig = small.figure()
picked = left.plotly_chart(
    graph_fig,
    width="stretch",
    key="circuit_graph",
    on_select="rerun",
    selection_mode="points",
)
right.plotly_chart(curve.figure(), width="stretch", key="faithfulness_curve")
st.download_button(
    "circuit graph (JSON)", small.to_json(), file_name="circuit.json", key="circuit_json"
)

st.subheader("Node inspector")
nodes = [n.name for n in sorted(small.nodes, key=lambda n: -abs(n.score)) if n.name != "logits"]
key = f"inspect_{name}_{spec}_{size}"
points = (picked or {}).get("selection", {}).get("points", [])
node_trace = len(graph_fig.data) - 1  # the node markers are the figure's last trace
for p in points:  # a click on a node in the graph selects it here
    if p.get("curve_number") == node_trace and p.get("point_index") is not None:
        clicked = small.nodes[p["point_index"]].name
        if clicked in nodes:
            st.session_state[key] = clicked
node = st.selectbox("node (or click one in the graph)", nodes, key=key)
report = inspected(name, spec, size, node)
c = st.columns(3)
c[0].metric("RelP score", f"{report.score:+.3f}")
c[1].metric(
    "direct logit attribution",
    f"{report.dla:+.3f}",
    help=f"what {node} writes straight into logit('{report.answer}') - logit('{report.wrong}') "
    "through the frozen final norm, mean over the prompts",
)
c[2].metric(
    f"logit lens at {report.lens_site}: rank of '{report.answer}'",
    report.answer_rank + 1,
    help=f"'{report.wrong}' is at rank {report.wrong_rank + 1} (first prompt, last token)",
)
st.dataframe(
    [{"token": repr(t), "probability": round(p, 4)} for t, p in report.lens_top],
    hide_index=True,
)
st.download_button(
    "node report (JSON)",
    json.dumps(report.to_dict()),
    file_name=f"node_{node}.json",
    key="node_json",
)
