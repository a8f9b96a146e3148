"""Patching: activation patching sweeps on a task, as heatmaps, with the top components."""

from dataclasses import replace

import streamlit as st

from app.ui import cached_model, model_name, pick_model
from interventions.patching import PatchingResult, activation_patching
from probe.errors import GatescopeError
from probe.tasks import BUNDLED_TASKS, load_task

st.set_page_config(page_title="gatescope: patching", layout="wide")
st.title("Activation patching")
KINDS = ["head_out", "attn_gate", "resid_pre", "attn_out", "mlp_out", "mlp_gate"]


@st.cache_data(show_spinner=False)
def sweep_layer(name: str, task: str, kind: str, mode: str, n: int, each: bool, layer: int):
    return activation_patching(
        cached_model(name),
        load_task(task).subset(n),
        f"{kind}.{layer}",
        positions="each" if each else None,
        mode=mode,
        progress=False,
    )


def sweep(name: str, task: str, kind: str, mode: str, n: int, each: bool) -> PatchingResult:
    """One cached sweep per layer, with a progress bar; merged into one result."""
    n_layers = cached_model(name).dims.n_layers
    bar = st.progress(0.0, text="patching...")
    parts = []
    for layer in range(n_layers):
        parts.append(sweep_layer(name, task, kind, mode, n, each, layer))
        bar.progress((layer + 1) / n_layers, text=f"patched layer {layer} of {n_layers}")
    bar.empty()
    first = parts[0]
    return replace(first, components=[c for part in parts for c in part.components])


model = pick_model()
if model is None:
    st.stop()
cols = st.columns(5)
task = cols[0].selectbox("task", BUNDLED_TASKS, key="task")
kinds = [k for k in KINDS if k in model.kinds]
kind = cols[1].selectbox("site kind", kinds, key="kind")
mode = cols[2].selectbox("mode", ["denoise", "noise"], key="mode")
n = cols[3].slider("prompts", 4, 64, 16, key="n")
headed = kind in ("head_out", "attn_gate")
each = cols[4].checkbox("each position", value=not headed, key="each")
try:
    result = sweep(model_name(model), task, kind, mode, n, each)
except GatescopeError as exc:
    st.error(str(exc))
    st.stop()
st.caption(
    f"{result.n_prompts} prompts; clean logit difference {result.clean_logit_diff:.2f}, "
    f"corrupt {result.corrupt_logit_diff:.2f}; effect 1 = clean behaviour restored"
)
fig = result.figure(kind)
if result.tokens and each:
    fig.update_xaxes(
        ticktext=[f"{i}:{t}" for i, t in enumerate(result.tokens)],
        tickvals=[f"pos {i}" for i in range(len(result.tokens))],
    )
st.plotly_chart(fig, width="stretch", key="patching_heatmap")
st.subheader("Top components")
st.dataframe(
    [{"component": c.label, "effect": round(c.effect, 3)} for c in result.top(10)], hide_index=True
)
