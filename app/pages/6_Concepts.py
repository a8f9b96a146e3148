"""Concepts: CAV accuracy per layer and TCAV scores with p-values against random CAVs."""

import json

import plotly.graph_objects as go
import streamlit as st

from app.ui import (
    cached_model,
    download_csv,
    finished,
    memo,
    model_name,
    pick_model,
    run_button,
)
from probe.concepts import cross_layer
from probe.concepts.tcav import target_function
from probe.errors import GatescopeError
from probe.tasks import TASKS_DIR, load_texts

st.set_page_config(page_title="gatescope: concepts", layout="wide")
st.title("Concepts")


def layers(name, concept: str, kind: str, target: str, n_random: int, on_step=None):
    """TCAV on every layer of ``kind``, once per server; ``on_step`` hears of each finished
    step."""
    randoms = [load_texts(f"random_{i}") for i in range(n_random)]
    return memo(
        ("tcav", name, concept, kind, target, n_random),
        lambda: cross_layer(
            cached_model(name),
            load_texts(concept),
            randoms,
            kind,
            target,
            load_texts("sentiment_prompts"),
            on_step=on_step,
        ),
    )


model = pick_model()
if model is None:
    st.stop()
concepts = sorted(p.stem for p in TASKS_DIR.glob("concept_*.jsonl"))
if not concepts:
    st.error("no concept sets found in data/tasks (run `gatescope reference tasks`)")
    st.stop()
cols = st.columns(2) + st.columns(2)  # two rows: readable at 800 px
concept = cols[0].selectbox(
    "concept",
    concepts,
    index=concepts.index("concept_positive") if "concept_positive" in concepts else 0,
    key="concept",
)
kinds = [
    k for k in ("resid_post", "resid_mid", "attn_out", "mlp_out", "attn_gate") if k in model.kinds
]
kind = cols[1].selectbox("site kind", kinds, key="kind")
target = cols[2].text_input("target word (its logit)", "wonderful|terrible", key="target")
n_random = cols[3].slider("random sets", 10, 12, 10, key="n_random")
try:
    target_function(model, target)  # a bad target is refused before anything runs
except GatescopeError as exc:
    st.error(str(exc))
    st.stop()
args = (model_name(model), concept, kind, target, n_random)
if not run_button(
    args,
    "concepts_run",
    "TCAV trains CAVs against every random set on every layer (10-60 s): press Run.",
):
    st.stop()
bar = st.progress(0.0, text="activations of the concept set...")
try:
    result = layers(
        *args, on_step=lambda what, i, n: bar.progress(i / n, text=f"{what} ({i} of {n})")
    )
except GatescopeError as exc:
    bar.empty()
    st.error(str(exc))
    st.stop()
bar.empty()
finished(args, "concepts_run")
fig = go.Figure()
fig.add_trace(go.Bar(x=[f"L{i}" for i in result.layers], y=result.accuracy, name="CAV accuracy"))
fig.add_trace(
    go.Scatter(
        x=[f"L{i}" for i in result.layers], y=result.tcav, name="TCAV score", mode="lines+markers"
    )
)
random_tcav = [sum(r.random_scores) / len(r.random_scores) for r in result.results]
fig.add_trace(
    go.Scatter(
        x=[f"L{i}" for i in result.layers],
        y=random_tcav,
        name="random TCAV",
        mode="lines+markers",
        line={"dash": "dot"},
    )
)
fig.update_traces(hovertemplate="%{fullData.name}, %{x}: %{y:.3f}<extra></extra>")
fig.update_layout(
    title=f"{concept} at {kind}: CAV accuracy and TCAV on '{target}'",
    yaxis_range=[0, 1.05],
    xaxis_title="layer",
    yaxis_title="accuracy / fraction of inputs",
)
st.plotly_chart(fig, width="stretch", key="concept_layers")
table = [
    {
        "layer": i,
        "CAV accuracy": round(a, 3),
        "TCAV": round(t, 3),
        "p": p,
        "significant": p < 0.05,
        "all or none": r.all_or_none,
    }
    for i, a, t, p, r in zip(
        result.layers,
        result.accuracy,
        result.tcav,
        result.p_values,
        result.results,
        strict=True,
    )
]
st.dataframe(table, hide_index=True)
download_csv(st, "per-layer numbers", table, f"tcav_{kind}.csv", "concepts_csv")
st.caption(
    f"variance of TCAV across layers: {result.tcav_variance:.3f}; cosine of CAVs "
    f"between adjacent layers: {[round(c, 2) for c in result.adjacent_cosine]}"
)
flat = [r.site for r in result.results if r.all_or_none]
if flat:
    st.warning(
        f"At {', '.join(flat)} every input's gradient points the same way (mean cosine to "
        "their mean > 0.99, as next to the unembedding), so each CAV scores 0 or 1 by "
        "construction: the score there says only on which side of that one direction the "
        "concept falls, not how many inputs it moves."
    )
st.download_button(
    "per-layer numbers (JSON)",
    json.dumps(result.to_dict()),
    file_name=f"tcav_{kind}.json",
    key="concepts_json",
)
