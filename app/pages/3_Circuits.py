"""Circuits: activation patching vs AtP vs RelP, the circuit graph and its faithfulness, on a
bundled task or your own clean / corrupt pair, with a click-a-node inspector (the node's
score, its direct logit attribution and the logit lens at its layer)."""

import json

import streamlit as st

from app.ui import (
    CUSTOM,
    cached_model,
    download_csv,
    finished,
    make_task,
    memo,
    model_name,
    pair_inputs,
    pick_model,
    run_button,
    shared_choice,
)
from circuits.agreement import agreement
from circuits.graph import FaithfulnessCurve, build_graph, faithfulness, faithfulness_curve
from circuits.inspect import inspect_node
from probe.errors import GatescopeError
from probe.tasks import BUNDLED_TASKS

st.set_page_config(page_title="gatescope: circuits", layout="wide")
st.title("Circuits")


def agree(name, spec: tuple, kind: str, on_step=None):
    """Patching vs every attribution method on ``kind``, once per server; ``on_step`` hears
    of each finished step."""
    return memo(
        ("agreement", name, spec, kind),
        lambda: agreement(
            cached_model(name), make_task(spec), (kind,), progress=False, on_step=on_step
        ),
    )


@st.cache_data(show_spinner=False)
def graph_of(name, spec: tuple, method: str):
    return build_graph(cached_model(name), make_task(spec), method)


CURVE_CHUNKS = 5


@st.cache_data(show_spinner=False)
def curve_part(name, spec: tuple, method: str, sizes: tuple):
    model, task = cached_model(name), make_task(spec)
    return faithfulness_curve(model, task, graph_of(name, spec, method), list(sizes)).values


def curve_of(name, spec: tuple, method: str, on_part=None) -> FaithfulnessCurve:
    """The faithfulness curve over every circuit size, in a few cached parts (a progress bar
    moves between them)."""
    graph = graph_of(name, spec, method)
    sizes = list(range(len(graph.nodes)))
    parts = [tuple(sizes[i::CURVE_CHUNKS]) for i in range(CURVE_CHUNKS) if sizes[i::CURVE_CHUNKS]]
    values = {}
    for i, part in enumerate(parts):
        values.update(zip(part, curve_part(name, spec, method, part), strict=True))
        if on_part is not None:
            on_part(i + 1, len(parts))
    return FaithfulnessCurve(graph.method, graph.task, sizes, [values[n] for n in sizes])


@st.cache_data(show_spinner=False)
def faithfulness_of(name, spec: tuple, size: int) -> float:
    keep = graph_of(name, spec, "relp").prune(size).node_names()
    return faithfulness(cached_model(name), make_task(spec), keep)


@st.cache_data(show_spinner=False)
def inspected(name: str, spec: tuple, size: int, node: str):
    graph = graph_of(name, spec, "relp")
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
if not run_button(
    args,
    "circuits_run",
    "Activation patching of every component, AtP, RelP and IG, then the RelP circuit graph "
    "and its faithfulness curve (10 s to a few minutes): press Run.",
):
    st.stop()
bar = st.progress(0.0, text="patching every component...")


def agreement_step(what: str, done: int, total: int) -> None:
    # the agreement is the first 70 % of the bar, the graph 5 %, the curve the rest
    bar.progress(0.7 * done / total, text=f"{what} done ({done} of {total} steps)")


def curve_step(done: int, total: int) -> None:
    bar.progress(0.75 + 0.25 * done / total, text=f"faithfulness curve: part {done} of {total}")


try:
    result = agree(name, spec, kind, on_step=agreement_step)
    bar.progress(0.7, text="building the RelP circuit graph...")
    graph = graph_of(name, spec, "relp")
    bar.progress(0.75, text="faithfulness of every circuit size...")
    curve = curve_of(name, spec, "relp", on_part=curve_step)
except GatescopeError as exc:
    bar.empty()
    st.error(str(exc))
    st.stop()
bar.empty()
finished(args, "circuits_run")

st.subheader("Attribution vs activation patching")
scatter = result.figure(kind)
scatter.update_layout(
    xaxis_title="activation patching effect (normalised)",
    yaxis_title="attribution score (normalised)",
    legend={"orientation": "h", "yanchor": "top", "y": -0.2},
    height=720,  # eleven methods in the legend under the chart: room for the points above it
    margin={"b": 260},
)
st.plotly_chart(scatter, width="stretch", key="agreement_scatter")
# full width under the chart: at 800 px a side column cut the Spearman column off
st.dataframe(
    [
        {
            "method": m,
            "Pearson r": round(result.pearson[kind][m], 3),
            "Spearman r": round(result.spearman[kind][m], 3),
            "top-10 overlap": round(result.stats[kind][m]["top10"], 2),
        }
        for m in result.pearson[kind]
    ],
    hide_index=True,
    width="stretch",
)
download_csv(
    st,
    "patching effect and attribution per component",
    [
        {
            "component": label,
            "patching": x,
            **{m: result.scores[kind][m][i] for m in result.scores[kind]},
        }
        for i, (label, x) in enumerate(zip(result.labels[kind], result.patching[kind], strict=True))
    ],
    f"agreement_{kind}.csv",
    "agreement_csv",
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
small.faithfulness = faithfulness_of(name, spec, size)
st.metric(
    "faithfulness",
    f"{small.faithfulness:.3f}",
    help="logit difference with only these nodes kept, as a fraction of the full model's",
)
# one chart above the other: side by side, both were cut off at 800 px
left = right = st.container()
graph_fig = small.figure()
top = max((abs(n.score) for n in small.nodes), default=1.0) or 1.0
graph_fig.update_traces(  # the node markers: one symmetric scale, with its colour bar
    selector=-1,
    marker={"showscale": True, "cmin": -top, "cmax": top, "colorbar": {"title": "node score"}},
)
picked = left.plotly_chart(
    graph_fig,
    width="stretch",
    key="circuit_graph",
    on_select="rerun",
    selection_mode="points",
)
left.caption("Edges: red adds to the logit difference, blue takes from it; width is |score|.")
right.plotly_chart(curve.figure(), width="stretch", key="faithfulness_curve")
download_csv(
    right,
    "faithfulness per circuit size",
    [{"nodes": n, "faithfulness": f} for n, f in zip(curve.sizes, curve.values, strict=True)],
    "faithfulness_curve.csv",
    "curve_csv",
)
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
c = [*st.columns(2), st.container()]  # the long logit-lens label gets a row of its own
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
