"""Gates: per-token gate values, gate sparsity over a prompt set, and the attention sink and
largest activation of the gated reference model next to its ungated twin."""

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
import torch

from app.gate_sections import hybrid_sections
from app.ui import cached_model, model_name, pick_model, shared_text
from probe import Tracer
from probe.errors import GatescopeError
from probe.gates import gate_stats, token_gates

st.set_page_config(page_title="gatescope: gates", layout="wide")
st.title("Gates")
DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"


@st.cache_data(show_spinner="Computing gate statistics...")
def prompt_set_report(model_name: str) -> dict:
    return gate_stats(
        cached_model(model_name), prompt_set(), batch_size=32, progress=False
    ).to_dict()


@st.cache_data(show_spinner="Collecting gate values...")
def gate_values(model_name: str) -> list[float]:
    model = cached_model(model_name)
    with Tracer(model, "attn_gate.*", reducers=[], keep=True) as tr, torch.no_grad():
        for batch in model.batches(prompt_set()[:24], 8):
            model.forward(batch.input_ids, batch.attention_mask)
            values = torch.cat([v.flatten() for v in tr.activations.values()])
            break
    step = max(1, values.numel() // 40000)
    return values[::step].tolist()


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

st.subheader("Per-token gate values")
prompt = shared_text("prompt", DEFAULT_PROMPT, key="prompt", area=True)
layer = st.slider("layer", 0, model.dims.n_layers - 1, 0, key="layer")
try:
    tg = token_gates(model, prompt)
except GatescopeError as exc:
    st.error(str(exc))
    tg = None


def token_labels(model, prompt: str) -> list[str]:
    """One label per token, "i:text", with each multi-byte character shown whole on the
    token that completes it (the text each token adds to the decoded prefix)."""
    ids = model.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    labels, before = [], ""
    for i in range(len(ids)):
        text = model.tokenizer.decode(ids[: i + 1])
        piece = text[len(before) :] if text.startswith(before) else text
        piece = piece.replace("\ufffd", "")
        labels.append(f"{i}:{piece if piece.strip() else repr(piece) if piece else '…'}")
        before = text if "\ufffd" not in text else before
    return labels


@st.cache_data(show_spinner="Reading attention patterns...")
def patterns(name: str, prompt: str, layer: int) -> list:
    """(T, H, T) attention probabilities of one prompt at one layer."""
    model = cached_model(name)
    site = f"attn_pattern.{layer}"
    with torch.no_grad(), Tracer(model, site, device="cpu", dtype=torch.float32) as tr:
        model.run([prompt])
    return next(iter(tr.activations.values()))[0].tolist()


def gate_over_text(labels: list[str], values: list[float]) -> str:
    """The prompt's tokens as HTML spans shaded by their gate value (white 0 to blue 1)."""
    import html

    spans = []
    for label, v in zip(labels, values, strict=True):
        text = html.escape(label.split(":", 1)[1])
        shade = int(255 - 200 * max(0.0, min(1.0, v)))
        spans.append(
            f'<span title="gate {v:.3f}" style="background: rgb({shade},{shade},255); '
            f'padding: 1px 2px; margin: 1px; border-radius: 3px">{text}</span>'
        )
    return "<div style='line-height: 2'>" + "".join(spans) + "</div>"


def section_attn_gate(model, tg, labels: list[str], layer: int) -> None:
    """The attention output gate: per token and head, over the text, with the pattern."""
    fig = px.imshow(
        tg.gates[layer],
        x=[f"head {h}" for h in range(model.dims.n_heads)],
        y=labels,
        zmin=0,
        zmax=1,
        color_continuous_scale="Viridis",
        aspect="auto",
        title=f"mean gate per head, layer {layer} (0 = closed, 1 = open)",
        labels={"x": "head", "y": "token", "color": "mean gate"},
    )
    fig.update_traces(hovertemplate="%{x}, token %{y}<br>mean gate %{z:.3f}<extra></extra>")
    fig.update_yaxes(tickmode="array", tickvals=labels, ticktext=labels)
    fig.update_layout(height=max(350, 18 * len(labels)))
    st.plotly_chart(fig, width="stretch", key="token_gates")
    head = st.selectbox("head", list(range(model.dims.n_heads)), key="head")
    st.markdown(
        f"**Gate of head {head}, layer {layer}, over the prompt** (white 0, blue 1; hover "
        "for the value)"
    )
    st.html(gate_over_text(labels, [row[head] for row in tg.gates[layer]]))
    try:
        pattern = patterns(name, prompt, layer)
    except GatescopeError as exc:
        st.info(f"attention pattern unavailable: {exc}")
        return
    att = px.imshow(
        [[row[head][k] for k in range(len(labels))] for row in pattern],
        x=labels,
        y=labels,
        zmin=0,
        zmax=1,
        color_continuous_scale="Blues",
        aspect="auto",
        title=f"attention pattern, layer {layer} head {head} (before the gate)",
        labels={"x": "key token", "y": "query token", "color": "attention"},
    )
    att.update_traces(hovertemplate="query %{y} -> key %{x}<br>attention %{z:.3f}<extra></extra>")
    att.update_xaxes(tickmode="array", tickvals=labels, ticktext=labels)
    att.update_yaxes(tickmode="array", tickvals=labels, ticktext=labels)
    att.update_layout(height=max(350, 18 * len(labels)))
    st.plotly_chart(att, width="stretch", key="attention_pattern")


def section_mlp_gate(model, tg, labels: list[str], layer: int) -> None:
    """The GLU gate: fraction of active gate units per token and layer."""
    n_tok = len(labels)
    glu = px.imshow(  # MoE layers have no dense GLU gate: gaps, never 0
        [r if r is not None else [float("nan")] * n_tok for r in tg.glu_active],
        x=labels,
        y=[f"L{i}" for i in range(len(tg.glu_active))],
        zmin=0,
        zmax=1,
        aspect="auto",
        color_continuous_scale="Viridis",
        title="fraction of |mlp_gate| >= 0.01 per token",
        labels={"x": "token", "y": "layer", "color": "active fraction"},
    )
    glu.update_traces(hovertemplate="%{y}, token %{x}<br>active %{z:.3f}<extra></extra>")
    glu.update_xaxes(tickmode="array", tickvals=labels, ticktext=labels)
    st.plotly_chart(glu, width="stretch", key="token_glu")


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

if tg is not None:
    labels = token_labels(model, prompt)
    if len(labels) != len(tg.tokens):
        labels = [f"{i}:{t}" for i, t in enumerate(tg.tokens)]
    if tg.gates is None:
        st.info("This model has no attention output gate; showing GLU gate activity instead.")
    info = model.layer_map()[layer]
    for kind, (present, draw) in SECTIONS.items():
        if kind in model.kinds and present(tg, layer):
            draw(model, tg, labels, layer)
        elif kind in model.kinds:
            st.info(
                f"layer {layer} ({info.mixer}, {info.mlp} MLP) has no {kind}; layers with it: "
                f"{', '.join(map(str, model.layers_with(kind)))}"
            )

st.subheader("Over a prompt set")
report = prompt_set_report(name)
cols = st.columns(2)
if report["mean_gate"] is not None:
    n_heads = max(len(r) for r in report["mean_gate"] if r is not None)
    heat = px.imshow(  # layers without an attention gate are gaps (NaN), never 0
        [r if r is not None else [float("nan")] * n_heads for r in report["mean_gate"]],
        zmin=0,
        zmax=1,
        aspect="auto",
        color_continuous_scale="Viridis",
        labels={"x": "head", "y": "layer", "color": "mean gate"},
        title="mean gate (layer x head)",
    )
    heat.update_traces(hovertemplate="layer %{y}, head %{x}<br>mean gate %{z:.3f}<extra></extra>")
    cols[0].plotly_chart(heat, width="stretch", key="mean_gate")
    hist = px.histogram(
        x=gate_values(name),
        nbins=50,
        log_y=True,
        title="distribution of gate values",
        labels={"x": "gate value"},
    )
    hist.update_yaxes(title_text="count (log)")
    cols[1].plotly_chart(hist, width="stretch", key="gate_hist")
    below = go.Figure()
    for t, table in report["gate_below"].items():
        below.add_bar(
            name=f"gate < {t}",
            x=[f"L{i}" for i in range(len(table))],
            y=[None if r is None else sum(r) / len(r) for r in table],
        )
    below.update_layout(
        barmode="group",
        title="fraction of gate values under thresholds",
        xaxis_title="layer",
        yaxis_title="fraction of gate values",
        yaxis_range=[0, 1],
    )
    st.plotly_chart(below, width="stretch", key="gate_below")
if report["glu_below"] is not None:
    glu = go.Figure()
    for t, per_layer in report["glu_below"].items():
        glu.add_bar(
            name=f"|mlp_gate| < {t}", x=[f"L{i}" for i in range(len(per_layer))], y=per_layer
        )
    glu.update_layout(
        barmode="group",
        title="GLU gate sparsity per layer",
        xaxis_title="layer",
        yaxis_title="fraction of GLU gate values",
        yaxis_range=[0, 1],
    )
    st.plotly_chart(glu, width="stretch", key="glu_sparsity")

hybrid_sections(report)

st.subheader("Attention sink and largest activation: gated vs ungated")
pair = ["reference", "reference-plain"] if name in ("reference", "reference-plain") else [name]
reports = {}
for other in pair:
    try:
        reports[other] = report if other == name else prompt_set_report(other)
    except GatescopeError as exc:
        st.warning(f"{other}: {exc}")
sink, act = go.Figure(), go.Figure()
sinks, acts = {}, {}
for other, rep in reports.items():
    layers = [f"L{i}" for i in range(len(rep["sink"]))]
    sinks[other] = [None if r is None else sum(r) / len(r) for r in rep["sink"]]
    acts[other] = list(rep["max_activation"])
    sink.add_bar(name=other, x=layers, y=sinks[other])
    act.add_bar(name=other, x=layers, y=acts[other])
sink.update_layout(
    barmode="group",
    title="attention on the first token (sink), mean over heads",
    xaxis_title="layer",
    yaxis_title="attention probability on token 0",
    yaxis_range=[0, 1],
)
act.update_layout(
    barmode="group",
    title="largest |residual activation|",
    xaxis_title="layer",
    yaxis_title="max |resid_post| (activation units)",
)
for fig in (sink, act):
    fig.update_traces(hovertemplate="%{fullData.name}, %{x}: %{y:.3f}<extra></extra>")
cols = st.columns(2)
cols[0].plotly_chart(sink, width="stretch", key="sink")
cols[1].plotly_chart(act, width="stretch", key="max_act")


def verdict(values: dict[str, list[float]], what: str) -> str:
    """One line from the numbers: per layer, which model is higher, and the overall means."""
    gated, plain = values["reference"], values["reference-plain"]
    higher = [i for i, (g, p) in enumerate(zip(gated, plain, strict=True)) if g > p]
    mean_g, mean_p = sum(gated) / len(gated), sum(plain) / len(plain)
    lower = "lower" if mean_g < mean_p else "higher"
    where = f"; the gated model is higher at layers {higher}" if higher else ""
    return (
        f"{what}: gated mean {mean_g:.3f} vs plain {mean_p:.3f}, {lower} overall "
        f"({mean_g / mean_p:.2f}x){where}."
    )


if set(reports) == {"reference", "reference-plain"}:
    st.markdown("**Verdict.** " + verdict(sinks, "attention sink"))
    st.markdown("**Verdict.** " + verdict(acts, "largest activation"))
if sinks:
    rows = [
        {"model": m, "layer": i, "sink": sinks[m][i], "max_activation": acts[m][i]}
        for m in sinks
        for i in range(len(sinks[m]))
    ]
    st.download_button(
        "sink and largest activation (CSV)",
        "model,layer,sink,max_activation\n"
        + "".join(f"{r['model']},{r['layer']},{r['sink']},{r['max_activation']}\n" for r in rows),
        file_name="gates_sink.csv",
        key="sink_csv",
    )
