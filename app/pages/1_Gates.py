"""Gates: per-token gate values, gate sparsity over a prompt set, and the attention sink and
largest activation of the gated reference model next to its ungated twin."""

import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.colors import sample_colorscale

from app.gate_sections import hybrid_sections, sink_section
from app.ui import (
    cached_model,
    download_csv,
    grid_rows,
    model_name,
    pick_model,
    prompt_labels,
    shared_text,
)
from probe import Tracer
from probe.errors import GatescopeError
from probe.gates import gate_stats, token_gates

st.set_page_config(page_title="gatescope: gates", layout="wide")
st.title("Gates")
DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"
#: One colour scale per quantity, on every figure that shows it: gate values (0 closed,
#: 1 open) in Viridis; attention probabilities (the pattern, the sink) in Blues, both 0-1.
GATE_SCALE, ATTENTION_SCALE = "Viridis", "Blues"


@st.cache_data(show_spinner="Computing gate statistics...")
def prompt_set_report(model_name: str) -> dict:
    return gate_stats(
        cached_model(model_name), prompt_set(), batch_size=32, progress=False
    ).to_dict()


BINS = 50


@st.cache_data(show_spinner="Collecting gate values...")
def gate_histogram(model_name) -> list[int]:
    """Counts of attention-gate values in 50 equal bins over [0, 1]: every gate value at every
    real (unpadded) token of the first 24 prompts of the prompt set."""
    model = cached_model(model_name)
    counts = torch.zeros(BINS, dtype=torch.long)
    with torch.no_grad():
        for batch in model.batches(prompt_set()[:24], 8):
            with Tracer(model, "attn_gate.*", reducers=[], keep=True) as tr:
                model.forward(batch.input_ids, batch.attention_mask)
            mask = batch.attention_mask.bool().cpu()  # (B, T)
            for value in tr.activations.values():  # (B, T, ...)
                real = value.float().cpu()[mask].flatten()
                counts += torch.histc(real, bins=BINS, min=0.0, max=1.0).long()
    return counts.tolist()


@st.cache_data(show_spinner=False)
def prompt_gates(model_name, prompt: str):
    """Gate values per token of one prompt (a layer or head change redraws from these)."""
    return token_gates(cached_model(model_name), prompt)


def prompt_set() -> list[str]:
    try:
        from probe.tasks import load_task, load_texts

        texts = load_texts("random_0")[:20] + load_texts("concept_sport")[:10]
        return texts + load_texts("concept_positive")[:10] + load_task("ioi").clean[:24]
    except GatescopeError:
        return [DEFAULT_PROMPT, "The weather today is cold and wet.", "I loved the film."]


model = pick_model()
if model is None:
    st.stop()
name = model_name(model)


@st.cache_data(show_spinner="Reading attention patterns...")
def patterns(name: str, prompt: str, layer: int) -> list:
    """(T, H, T) attention probabilities of one prompt at one layer."""
    model = cached_model(name)
    site = f"attn_pattern.{layer}"
    with torch.no_grad(), Tracer(model, site, device="cpu", dtype=torch.float32) as tr:
        model.run([prompt])
    return next(iter(tr.activations.values()))[0].tolist()


def gate_over_text(labels: list[str], values: list[float]) -> str:
    """The prompt's tokens as HTML spans shaded by their gate value on the gate colour scale
    (the heatmaps' Viridis, 0 to 1), dark text on light colours and light on dark."""
    import html

    spans = []
    for label, v in zip(labels, values, strict=True):
        text = html.escape(label.split(":", 1)[1])
        v = max(0.0, min(1.0, v))
        colour = sample_colorscale(GATE_SCALE, [v])[0]
        ink = "black" if v > 0.55 else "white"
        spans.append(
            f'<span title="gate {v:.3f}" style="background: {colour}; color: {ink}; '
            f'padding: 1px 3px; margin: 1px; border-radius: 3px">{text}</span>'
        )
    legend = "".join(
        f'<span style="background: {sample_colorscale(GATE_SCALE, [t])[0]}; color: '
        f'{"black" if t > 0.55 else "white"}; padding: 0 6px">{t:g}</span>'
        for t in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    return (
        "<div style='line-height: 2'>" + "".join(spans) + "</div>"
        f"<div style='font-size: 0.8em'>gate value: {legend}</div>"
    )


def heatmap(z, x, y, title: str, axes: tuple[str, str, str], scale: str, hover: str):
    """A 0-1 heatmap, first row on top, every category labelled; ``axes``: the x, y and
    colour-bar titles. (``go.Heatmap``: plotly express took eight times as long to build.)"""
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            zmin=0,
            zmax=1,
            colorscale=scale,
            colorbar={"title": axes[2]},
            hovertemplate=hover + "<extra></extra>",
        )
    )
    fig.update_layout(
        title=title, xaxis_title=axes[0], yaxis_title=axes[1], yaxis_autorange="reversed"
    )
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=[str(v) for v in x])
    fig.update_yaxes(tickmode="array", tickvals=y, ticktext=[str(v) for v in y])
    return fig


def section_attn_gate(model, name, prompt: str, tg, labels: list[str], layer: int) -> None:
    """The attention output gate: per token and head, over the text, with the pattern."""
    heads = [f"head {h}" for h in range(model.dims.n_heads)]
    fig = heatmap(
        tg.gates[layer],
        heads,
        labels,
        f"mean gate per head, layer {layer} (0 = closed, 1 = open)",
        ("head", "token", "mean gate"),
        GATE_SCALE,
        "%{x}, token %{y}<br>mean gate %{z:.3f}",
    )
    fig.update_layout(height=max(350, 18 * len(labels)))
    st.plotly_chart(fig, width="stretch", key="token_gates")
    rows = grid_rows(tg.gates[layer], heads, labels, "head", "token", "mean gate")
    download_csv(st, "gate per token and head", rows, f"gates_layer{layer}.csv", "dl_tok")
    head = st.selectbox("head", list(range(model.dims.n_heads)), key="head")
    st.markdown(
        f"**Gate of head {head}, layer {layer}, over the prompt** (same colours as the "
        "heatmaps; hover for the value)"
    )
    st.html(gate_over_text(labels, [row[head] for row in tg.gates[layer]]))
    try:
        pattern = patterns(name, prompt, layer)
    except GatescopeError as exc:
        st.info(f"attention pattern unavailable: {exc}")
        return
    z = [[row[head][k] for k in range(len(labels))] for row in pattern]
    att = heatmap(
        z,
        labels,
        labels,
        f"attention pattern, layer {layer} head {head} (before the gate)",
        ("key token", "query token", "attention"),
        ATTENTION_SCALE,
        "query %{y} -> key %{x}<br>attention %{z:.3f}",
    )
    att.update_layout(height=max(350, 18 * len(labels)))
    st.plotly_chart(att, width="stretch", key="attention_pattern")
    rows = grid_rows(z, labels, labels, "key token", "query token", "attention")
    download_csv(st, "attention pattern", rows, f"pattern_L{layer}H{head}.csv", "dl_pattern")


def section_mlp_gate(model, name, prompt: str, tg, labels: list[str], layer: int) -> None:
    """The GLU gate: fraction of active gate units per token and layer."""
    n_tok = len(labels)
    z = [r if r is not None else [float("nan")] * n_tok for r in tg.glu_active]
    rows = [f"L{i}" for i in range(len(tg.glu_active))]
    glu = heatmap(  # MoE layers have no dense GLU gate: gaps, never 0
        z,
        labels,
        rows,
        "fraction of |mlp_gate| >= 0.01 per token",
        ("token", "layer", "active fraction"),
        GATE_SCALE,
        "%{y}, token %{x}<br>active %{z:.3f}",
    )
    st.plotly_chart(glu, width="stretch", key="token_glu")
    rows = grid_rows(z, labels, rows, "token", "layer", "active fraction")
    download_csv(st, "GLU activity per token", rows, "glu_per_token.csv", "dl_glu_tok")


# one section per gate kind, drawn when the model has it; new gate kinds add an entry
SECTIONS = {
    "attn_gate": (
        lambda tg, i: tg.gates is not None and tg.gates[i] is not None,
        section_attn_gate,
    ),
    "mlp_gate": (
        lambda tg, i: tg.glu_active is not None and tg.glu_active[i] is not None,
        section_mlp_gate,
    ),
}


@st.fragment
def per_token_section(model, name) -> None:
    """The prompt's gates per token: a fragment, so a new prompt, layer or head redraws this
    section alone (the prompt-set figures below stay as they are)."""
    st.subheader("Per-token gate values")
    prompt = shared_text("prompt", DEFAULT_PROMPT, key="prompt", area=True)
    layer = st.slider("layer", 0, model.dims.n_layers - 1, 0, key="layer")
    try:
        tg = prompt_gates(name, prompt)
    except GatescopeError as exc:
        st.error(str(exc))
        return
    labels = prompt_labels(model, prompt)
    if len(labels) != len(tg.tokens):
        labels = [f"{i}:{t}" for i, t in enumerate(tg.tokens)]
    if tg.gates is None:
        st.info("This model has no attention output gate; showing GLU gate activity instead.")
    info = model.layer_map()[layer]
    for kind, (present, draw) in SECTIONS.items():
        if kind in model.kinds and present(tg, layer):
            draw(model, name, prompt, tg, labels, layer)
        elif kind in model.kinds:
            st.info(
                f"layer {layer} ({info.mixer}, {info.mlp} MLP) has no {kind}; layers with it: "
                f"{', '.join(map(str, model.layers_with(kind)))}"
            )


per_token_section(model, name)


def per_head(table: list, n_heads: int) -> list:
    """A layer x head table with gaps (NaN) on layers that lack the quantity."""
    return [r if r is not None else [float("nan")] * n_heads for r in table]


st.subheader("Over a prompt set")
report = prompt_set_report(name)
cols = st.columns(2)
if report["mean_gate"] is not None:
    n_heads = max(len(r) for r in report["mean_gate"] if r is not None)
    z = per_head(report["mean_gate"], n_heads)
    heat = heatmap(  # layers without an attention gate are gaps (NaN), never 0
        z,
        list(range(n_heads)),
        list(range(len(z))),
        "mean gate (layer x head)",
        ("head", "layer", "mean gate"),
        GATE_SCALE,
        "layer %{y}, head %{x}<br>mean gate %{z:.3f}",
    )
    cols[0].plotly_chart(heat, width="stretch", key="mean_gate")
    rows = grid_rows(z, list(range(n_heads)), list(range(len(z))), "head", "layer", "mean gate")
    download_csv(cols[0], "mean gate", rows, "mean_gate.csv", "dl_mean_gate")
    counts = gate_histogram(name)
    edges = [i / BINS for i in range(BINS + 1)]
    hist = go.Figure(
        go.Bar(
            x=[(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)],
            y=counts,
            width=1 / BINS,
            hovertemplate="gate %{x:.2f} ± 0.01: %{y} values<extra></extra>",
        )
    )
    hist.update_layout(
        title="distribution of gate values",
        xaxis_title="gate value",
        xaxis_range=[0, 1],
        yaxis_title="count (log)",
        yaxis_type="log",
        bargap=0,
    )
    cols[1].plotly_chart(hist, width="stretch", key="gate_hist")
    rows = [
        {"bin_start": a, "bin_end": b, "count": c}
        for a, b, c in zip(edges, edges[1:], counts, strict=False)
    ]
    download_csv(cols[1], "gate value histogram", rows, "gate_histogram.csv", "dl_hist")
    below = go.Figure()
    for t, table in report["gate_below"].items():
        below.add_bar(
            name=f"gate < {t}",
            x=[f"L{i}" for i in range(len(table))],
            y=[None if r is None else sum(r) / len(r) for r in table],
        )
    below.update_traces(hovertemplate="%{fullData.name}, %{x}: %{y:.3f}<extra></extra>")
    below.update_layout(
        barmode="group",
        title="fraction of gate values under thresholds",
        xaxis_title="layer",
        yaxis_title="fraction of gate values",
        yaxis_range=[0, 1],
    )
    st.plotly_chart(below, width="stretch", key="gate_below")
    rows = [
        {"layer": i, "threshold": t, "fraction_below": None if r is None else sum(r) / len(r)}
        for t, table in report["gate_below"].items()
        for i, r in enumerate(table)
    ]
    download_csv(st, "fraction under thresholds", rows, "gate_below.csv", "dl_below")
if report["glu_below"] is not None:
    glu = go.Figure()
    for t, per_layer in report["glu_below"].items():
        glu.add_bar(
            name=f"|mlp_gate| < {t}", x=[f"L{i}" for i in range(len(per_layer))], y=per_layer
        )
    glu.update_traces(hovertemplate="%{fullData.name}, %{x}: %{y:.3f}<extra></extra>")
    glu.update_layout(
        barmode="group",
        title="GLU gate sparsity per layer",
        xaxis_title="layer",
        yaxis_title="fraction of GLU gate values",
        yaxis_range=[0, 1],
    )
    st.plotly_chart(glu, width="stretch", key="glu_sparsity")
    rows = [
        {"layer": i, "threshold": t, "fraction_below": v}
        for t, per_layer in report["glu_below"].items()
        for i, v in enumerate(per_layer)
    ]
    download_csv(st, "GLU sparsity", rows, "glu_below.csv", "dl_glu")

hybrid_sections(report)
sink_section(name, report, prompt_set_report)
