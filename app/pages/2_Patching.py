"""Patching: activation patching sweeps on a bundled task or your own clean / corrupt pair,
as heatmaps, with the top components and the numbers behind them."""

import json
from dataclasses import replace

import streamlit as st

from app.ui import (
    CUSTOM,
    cached_model,
    download_csv,
    finished,
    make_task,
    model_name,
    pair_inputs,
    pick_model,
    run_button,
    shared_choice,
    token_labels,
)
from interventions.components import prepare
from interventions.patching import PatchingResult, activation_patching
from probe.errors import GatescopeError
from probe.tasks import BUNDLED_TASKS

st.set_page_config(page_title="gatescope: patching", layout="wide")
st.title("Activation patching")
KINDS = ["head_out", "attn_gate", "resid_pre", "attn_out", "mlp_out", "mlp_gate"]
MEANING = {
    "denoise": "corrupt run with one clean activation patched in; 1 = clean behaviour "
    "restored, 0 = no effect",
    "noise": "clean run with one corrupt activation patched in; -1 = clean behaviour "
    "destroyed (corrupt logit difference reached), 0 = no effect",
}


@st.cache_data(show_spinner=False)
def sweep_layer(name: str, spec: tuple, kind: str, mode: str, each: bool, layer: int):
    return activation_patching(
        cached_model(name),
        make_task(spec),
        f"{kind}.{layer}",
        positions="each" if each else None,
        mode=mode,
        progress=False,
    )


@st.cache_data(show_spinner=False)
def position_labels(name, spec: tuple) -> list[str]:
    """Whole-token labels of the first prompt a per-position sweep uses."""
    batch = prepare(cached_model(name), make_task(spec), "each")
    return token_labels(cached_model(name).tokenizer, batch.clean_ids[0][: int(batch.lengths[0])])


def sweep(name: str, spec: tuple, kind: str, mode: str, each: bool) -> PatchingResult:
    """One cached sweep per layer, with a progress bar; merged into one result."""
    n_layers = cached_model(name).dims.n_layers
    bar = st.progress(0.0, text="patching...")
    parts = []
    for layer in range(n_layers):
        parts.append(sweep_layer(name, spec, kind, mode, each, layer))
        bar.progress((layer + 1) / n_layers, text=f"patched layer {layer + 1} of {n_layers}")
    bar.empty()
    first = parts[0]
    return replace(first, components=[c for part in parts for c in part.components])


model = pick_model()
if model is None:
    st.stop()
cols = st.columns(3)  # two rows of controls: none truncates at 800 px
row2 = st.columns(2)
task = shared_choice(cols[0], "task", "task", [*BUNDLED_TASKS, CUSTOM], key="task")
kinds = [k for k in KINDS if k in model.kinds]
kind = cols[1].selectbox("site kind", kinds, key="kind")
mode = cols[2].selectbox("mode", ["denoise", "noise"], key="mode")
headed = kind in ("head_out", "attn_gate")
# the checkbox's key names the kind: its default (off for per-head kinds) comes back when
# the kind changes instead of the last kind's setting
each = row2[1].checkbox("each position", value=not headed, key=f"each_{kind}")
if task == CUSTOM:
    spec, n = pair_inputs(model), 1
    if spec is None:
        st.stop()
else:
    n = row2[0].slider("prompts", 4, 64, 16, key="n")
    spec = ("bundled", task, n)
args = (model_name(model), spec, kind, mode, each)
what = "each position" if each else "all positions at once"
if not run_button(
    args,
    "patching_run",
    f"Patch every {kind} component of every layer ({mode}, {what}): press Run.",
):
    st.stop()
try:
    result = sweep(*args)
except GatescopeError as exc:
    st.error(str(exc))
    st.stop()
finished(args, "patching_run")
if result.n_prompts < n:
    st.warning(
        f"{n - result.n_prompts} of {n} prompts left out: patching each position needs prompts "
        f"of one token length, and the largest group of equal-length prompts has "
        f"{result.n_prompts}. Turn off 'each position' to use all {n}."
    )
else:
    st.caption(f"all {n} prompts used")
st.caption(
    f"{result.n_prompts} prompts; clean logit difference {result.clean_logit_diff:.2f}, "
    f"corrupt {result.corrupt_logit_diff:.2f}. Effect: {MEANING[mode]}."
)
fig = result.figure(kind)
fig.update_traces(zmin=-1, zmax=1, colorbar={"title": "normalised effect"})
fig.update_layout(yaxis_title="layer" if not (headed and each) else "layer.head")
if result.tokens and each:
    labels = position_labels(model_name(model), spec)
    if len(labels) != len(result.tokens):
        labels = [f"{i}:{t}" for i, t in enumerate(result.tokens)]
    fig.update_xaxes(
        title_text="position: token",
        tickmode="array",
        ticktext=labels,
        tickvals=[f"pos {i}" for i in range(len(labels))],
    )
elif headed:
    fig.update_xaxes(title_text="head")
else:
    fig.update_xaxes(title_text="positions patched (all at once; tick 'each position' for each)")
st.plotly_chart(fig, width="stretch", key="patching_heatmap")
st.download_button(
    "effects (JSON)",
    json.dumps([{"component": c.label, "effect": c.effect} for c in result.components]),
    file_name=f"patching_{kind}.json",
    key="patching_json",
)
download_csv(
    st,
    "effects",
    [
        {
            "component": c.label,
            "layer": c.layer,
            "head": c.head,
            "position": c.position,
            "effect": c.effect,
        }
        for c in result.components
    ],
    f"patching_{kind}.csv",
    "patching_csv",
)
st.subheader("Top components")
st.dataframe(
    [{"component": c.label, "effect": round(c.effect, 3)} for c in result.top(10)], hide_index=True
)
