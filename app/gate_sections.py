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
            yaxis_title="mean shared-expert gate (0-1)", yaxis_range=[0, 1], height=260
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
