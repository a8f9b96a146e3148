"""Gates-page sections for the gates of hybrid and MoE models: the layer map, DeltaNet
retention per value head, router load per expert, the shared-expert gate and the gates of
short convolutions.

Each section draws from a ``GateReport`` dict (``probe.gates``); layers without a gate are
gaps (``None``), never zeros.
"""

from __future__ import annotations

import json

import plotly.graph_objects as go
import streamlit as st


def _heatmap(rows, x_title: str, colorbar: str, zmin=None, zmax=None, scale="Viridis"):
    layers = [i for i, row in enumerate(rows) if row is not None]
    z = [rows[i] for i in layers]
    width = max(len(r) for r in z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(width)),
            y=[f"layer {i}" for i in layers],
            zmin=zmin,
            zmax=zmax,
            colorscale=scale,
            colorbar={"title": colorbar},
            hovertemplate=f"%{{y}}, {x_title} %{{x}}: %{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis_title=x_title, yaxis_title="layer", height=120 + 40 * len(layers), margin={"t": 30}
    )
    return fig


def twin_of(name: str) -> str | None:
    """The bundled model a bundled model is compared with (``paper_effects.twin`` in its
    ``evaluation.json``), or None."""
    from probe.errors import GatescopeError
    from probe.paths import BUNDLED_MODELS, bundled_model_dir

    if name not in BUNDLED_MODELS:
        return None
    try:
        evaluation = json.loads((bundled_model_dir(name) / "evaluation.json").read_text())
    except (OSError, ValueError, GatescopeError):
        return None
    return (evaluation.get("paper_effects") or {}).get("twin")


def _layer_means(table: list) -> list:
    return [None if r is None else sum(r) / len(r) for r in table]


def comparison_verdict(values: dict, gated: str, plain: str, what: str) -> str:
    """One line from the numbers: over the layers where both models have ``what``, the two
    means, which is lower, and the layers where the gated model is higher. The paper reports
    both the sink and the largest activation lower with the gate."""
    g_all, p_all = values[gated], values[plain]
    both = [i for i, (g, p) in enumerate(zip(g_all, p_all, strict=False)) if None not in (g, p)]
    if not both:
        return f"{what}: no layer where both models have it."
    mean_g = sum(g_all[i] for i in both) / len(both)
    mean_p = sum(p_all[i] for i in both) / len(both)
    lower = [i for i in both if g_all[i] < p_all[i]]
    higher = [i for i in both if g_all[i] > p_all[i]]
    where = f"layers {both}" if len(both) < len(g_all) else f"all {len(both)} layers"
    agrees = "as the paper reports" if mean_g < mean_p else "unlike the paper's finding"
    ratio = f" ({mean_g / mean_p:.2f}x)" if mean_p else ""
    tail = f"; {gated} is higher at layers {higher}" if higher else ""
    return (
        f"{what} over {where}: {gated} mean {mean_g:.3f} vs {plain} {mean_p:.3f}{ratio}, "
        f"{'lower' if mean_g < mean_p else 'not lower'} with the gate ({agrees}); lower at "
        f"{len(lower)} of {len(both)} layers{tail}."
    )


def _sink_heatmap(title: str, table: list, n_heads: int):
    z = [r if r is not None else [float("nan")] * n_heads for r in table]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"head {h}" for h in range(n_heads)],
            y=[f"layer {i}" for i in range(len(z))],
            zmin=0,
            zmax=1,
            colorscale="Blues",
            colorbar={"title": "attention on token 0"},
            hovertemplate="%{y}, %{x}<br>attention on token 0: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="head",
        yaxis_title="layer",
        yaxis_autorange="reversed",
        height=140 + 36 * len(z),
        margin={"t": 40},
    )
    return fig


def sink_section(name, report: dict, report_of) -> None:
    """Attention sink per layer and head and the largest activation per layer, of the model
    and its bundled twin (gated vs ungated) when it has one, with a verdict from the numbers.
    ``name`` is the page's model reference (``str()`` is its name, ``twin()`` another model
    under the same options); ``report_of(ref)`` is the gate report of another model."""
    from app.ui import download_csv
    from probe.errors import GatescopeError

    st.subheader("Attention sink and largest activation: gated vs ungated")
    reports = {str(name): report}
    twin = twin_of(str(name))
    if twin is not None:
        try:
            reports[twin] = report_of(name.twin(twin))
        except (GatescopeError, OSError, ValueError) as exc:  # the model's own view stays
            st.warning(f"{twin}: {exc}")
    # the gated model first: the one with an attention gate
    order = sorted(reports, key=lambda m: reports[m]["mean_gate"] is None)
    sinks = {m: reports[m]["sink"] for m in order}
    cols = st.columns(len(order))
    for col, m in zip(cols, order, strict=True):
        n_heads = max((len(r) for r in sinks[m] if r is not None), default=0)
        if not n_heads:
            col.info(f"{m} has no softmax attention layer: no sink.")
            continue
        col.plotly_chart(
            _sink_heatmap(f"{m}: attention on the first token", sinks[m], n_heads),
            width="stretch",
            key=f"sink_heads_{m}",
        )
    st.caption(
        "Sink: mean attention probability on token 0 over query positions >= 1, per layer "
        "and head (0-1, same colour scale as the attention pattern); blank rows are layers "
        "without softmax attention."
    )
    means = {m: _layer_means(sinks[m]) for m in order}
    acts = {m: list(reports[m]["max_activation"]) for m in order}
    sink, act = go.Figure(), go.Figure()
    for m in order:
        sink.add_bar(name=m, x=[f"L{i}" for i in range(len(means[m]))], y=means[m])
        act.add_bar(name=m, x=[f"L{i}" for i in range(len(acts[m]))], y=acts[m])
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
    if len(order) == 2 and reports[order[0]]["mean_gate"] is not None:
        gated, plain = order
        st.markdown("**Verdict.** " + comparison_verdict(means, gated, plain, "Attention sink"))
        st.markdown("**Verdict.** " + comparison_verdict(acts, gated, plain, "Largest activation"))
    elif twin is None:
        st.caption("The gated-vs-ungated comparison is drawn for the bundled reference models.")
    heads = [
        {"model": m, "layer": i, "head": h, "sink": v}
        for m in order
        for i, r in enumerate(sinks[m])
        for h, v in enumerate(r or [])
    ]
    download_csv(st, "sink per head", heads, "gates_sink_heads.csv", "sink_heads_csv")
    rows = [
        {"model": m, "layer": i, "sink": means[m][i], "max_activation": acts[m][i]}
        for m in order
        for i in range(len(means[m]))
    ]
    download_csv(st, "sink and largest activation", rows, "gates_sink.csv", "sink_csv")


def layer_map_section(report: dict) -> None:
    """Which token mixer and which MLP each layer has."""
    layer_map = report.get("layer_map") or []
    if not layer_map or len({(e["mixer"], e["mlp"]) for e in layer_map}) == 1:
        return
    st.subheader("Layer map")
    st.dataframe(
        [{"layer": e["index"], "token mixer": e["mixer"], "MLP": e["mlp"]} for e in layer_map],
        hide_index=True,
    )


def deltanet_section(report: dict) -> None:
    delta = report.get("deltanet")
    if delta is None:
        return
    st.subheader("Gated-DeltaNet gates")
    horizon = delta["retention_horizon"]
    cols = st.columns(2)
    cols[0].plotly_chart(
        _heatmap(horizon, "value head", "tokens to 50% retention", scale="Blues"),
        key="delta_horizon",
    )
    cols[0].caption(
        "Retention horizon: tokens until the product of per-token retentions exp(g) falls "
        "below 0.5 at the head's mean decay. Long horizons keep old tokens in the state."
    )
    cols[1].plotly_chart(
        _heatmap(delta["mean_beta"], "value head", "mean write strength β", 0.0, 1.0),
        key="delta_beta",
    )
    cols[1].caption("Write strength β = sigmoid(b): how strongly each token is written.")
    st.download_button(
        "DeltaNet figures (JSON)", json.dumps(delta), "deltanet.json", key="dl_delta"
    )


def router_section(report: dict) -> None:
    router = report.get("router")
    if router is None:
        return
    st.subheader(f"MoE routers (top-{router['top_k']})")
    n_experts = max(len(r) for r in router["load"] if r is not None)
    even = router["top_k"] / n_experts
    fig = _heatmap(router["load"], "expert", "fraction of tokens routed", 0.0, None, "Magma")
    st.plotly_chart(fig, key="router_load")
    dead = {i: d for i, d in enumerate(router["dead_experts"]) if d}
    verdict = (
        f"Dead experts (never chosen): {dead}."
        if dead
        else "Every expert is chosen by some token on every MoE layer."
    )
    st.caption(f"Load per layer and expert; an even split is {even:.3f}. {verdict}")
    shared = report.get("shared_gate")
    if shared is not None:
        layers = [i for i, v in enumerate(shared) if v is not None]
        bars = go.Figure(go.Bar(x=[f"layer {i}" for i in layers], y=[shared[i] for i in layers]))
        bars.update_layout(
            xaxis_title="layer",
            yaxis_title="mean shared-expert gate (0-1)",
            yaxis_range=[0, 1],
            height=260,
        )
        st.plotly_chart(bars, key="shared_gate")
    st.download_button("router figures (JSON)", json.dumps(router), "router.json", key="dl_rt")


def conv_section(report: dict) -> None:
    """Gated short convolutions: how often each linear gate is near 0, per conv layer."""
    conv = report.get("conv")
    if conv is None:
        return
    st.subheader("Gated short convolutions")
    names = {"conv_gate": "B (before the conv)", "conv_out_gate": "C (after the conv)"}
    fig = go.Figure()
    for kind, stats in conv.items():
        layers = [i for i, v in enumerate(stats["mean"]) if v is not None]
        below = stats["below"]["0.1"]
        fig.add_trace(
            go.Bar(name=names[kind], x=[f"layer {i}" for i in layers], y=[below[i] for i in layers])
        )
    fig.update_layout(
        barmode="group", yaxis_title="fraction of |gate| < 0.1", yaxis_range=[0, 1], height=280
    )
    st.plotly_chart(fig, key="conv_gates")
    st.caption(
        "The conv layer computes out_proj(C * conv(B * x)) with linear gates B and C: a value "
        "near 0 closes the channel at that token, the sign flips it."
    )
    st.download_button("conv figures (JSON)", json.dumps(conv), "conv.json", key="dl_conv")


def hybrid_sections(report: dict) -> None:
    """Every section this model's gates call for (nothing on a dense full-attention model)."""
    layer_map_section(report)
    deltanet_section(report)
    router_section(report)
    conv_section(report)
