"""SAEs: the SAEs found in a directory (or one trained here on a small token budget), their
metrics, a feature browser with top-activating contexts, and steering with a feature."""

import math
import os
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from app.ui import bundled_texts, cached_model, model_name, pick_model
from interventions.steering import SteeringVector, generate
from probe.errors import GatescopeError
from probe.sae import (
    SAETrainSpec,
    check_sae_site,
    evaluate_sae,
    latent_direction,
    load_trained,
    top_contexts,
    train_from_model,
)

st.set_page_config(page_title="gatescope: SAEs", layout="wide")
st.title("Sparse autoencoders")
EVAL_TEXTS, BROWSE_TEXTS, TRAIN_TEXTS = 96, 300, 600


def find_saes(root: str) -> list[str]:
    """SAE directories (``cfg.json`` + ``sae_weights.safetensors``) under ``root``."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise GatescopeError(
            f"SAE directory '{root}' does not exist; type another one or train an SAE below"
        )
    found = path.rglob("sae_weights.safetensors")
    return sorted(str(p.parent) for p in found if (p.parent / "cfg.json").is_file())


def stamp(path: str) -> float:
    """Modification time of the weights: a retrained SAE is a new cache entry."""
    return (Path(path) / "sae_weights.safetensors").stat().st_mtime


@st.cache_resource(show_spinner="Loading the SAE...")
def cached_sae(path: str, mtime: float):
    return load_trained(path)


@st.cache_data(show_spinner="Evaluating the SAE (L0, explained variance, CE-loss score)...")
def metrics(name: str, path: str, mtime: float) -> dict:
    model, trained = cached_model(name), cached_sae(path, mtime)
    return evaluate_sae(model, trained, bundled_texts(EVAL_TEXTS)).to_dict()


@st.cache_data(show_spinner="Finding top-activating contexts...")
def contexts(name: str, path: str, mtime: float, latent: int):
    model, trained = cached_model(name), cached_sae(path, mtime)
    report = top_contexts(model, trained, bundled_texts(BROWSE_TEXTS), top=6, latents=[latent])
    return report.features[0]


def train_form(model, root: str) -> str | None:
    """A small training run from the page; returns the new SAE's directory."""
    sites = [
        f"{kind}.{layer}"
        for kind in ("resid_post", "resid_mid", "mlp_out", "attn_gate")
        if kind in model.kinds
        for layer in range(model.dims.n_layers)
    ]
    with st.form("train_sae"):
        cols = st.columns(5)
        site = cols[0].selectbox("site", sites, index=model.dims.n_layers // 2, key="train_site")
        arch = cols[1].selectbox("architecture", ["topk", "vsae"], key="train_arch")
        width = cols[2].selectbox("latents", [64, 128, 256, 512, 1024], index=2, key="width")
        k = cols[3].number_input("k (active latents)", 1, 128, 16, key="train_k")
        tokens = cols[4].selectbox("tokens", [2000, 5000, 10000, 20000], index=2, key="tokens")
        submitted = st.form_submit_button("train")
    if not submitted:
        return None
    out = Path(root).expanduser() / f"{arch}_{site}_{width}"
    n = 1
    while out.exists():
        n += 1
        out = out.with_name(f"{arch}_{site}_{width}_{n}")
    spec = SAETrainSpec(
        arch=arch,
        width=int(width),
        k=int(k),
        tokens=int(tokens),
        batch_size=min(500, int(tokens)),
        checkpoint_every=0,
    )
    with st.spinner(f"Training a {arch} SAE on {site} for {tokens} tokens..."):
        train_from_model(model, site, spec, out, texts=bundled_texts(TRAIN_TEXTS), progress=False)
    st.success(f"trained {out}")
    return str(out)


def show_metrics(m: dict) -> None:
    cols = st.columns(5)
    cols[0].metric("L0", f"{m['l0']:.1f}")
    cols[1].metric("explained variance", f"{m['explained_variance']:.3f}")
    cols[2].metric("dead fraction", f"{m['dead_fraction']:.3f}")
    cols[3].metric("CE-loss score", f"{m['ce_loss_score']:.3f}")
    cols[4].metric("tokens", m["tokens"])
    live = [f for f in m["feature_frequency"] if f > 0]
    fig = go.Figure(go.Histogram(x=[math.log10(f) for f in live], nbinsx=40))
    fig.update_layout(
        title=f"firing rate of the {len(live)} live latents of {m['width']} (log10)",
        xaxis_title="log10 fraction of tokens",
        yaxis_title="latents",
        height=300,
    )
    st.plotly_chart(fig, width="stretch", key="frequency")


def context_figure(feature) -> go.Figure:
    """Top contexts as rows, tokens as cells, coloured by the latent's activation."""
    width = max((len(c.tokens) for c in feature.contexts), default=1)
    pad = lambda xs, fill: list(xs) + [fill] * (width - len(xs))  # noqa: E731
    z = [pad(c.acts, None) for c in feature.contexts]
    text = [pad([t.replace(" ", "·") for t in c.tokens], "") for c in feature.contexts]
    rows = [f"#{i + 1} ({c.activation:.2f})" for i, c in enumerate(feature.contexts)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            y=rows,
            text=text,
            texttemplate="%{text}",
            colorscale="Oranges",
            zmin=0,
            colorbar={"title": "activation"},
            hovertemplate="%{text}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"latent {feature.latent}: top contexts (fires on {feature.firing_rate:.2%} "
        "of tokens)",
        yaxis={"autorange": "reversed"},
        xaxis={"showticklabels": False},
        height=90 + 45 * len(rows),
    )
    return fig


def steer_with(model, trained, feature) -> None:
    d = latent_direction(trained, feature.latent)
    scale = (feature.max_activation or 1.0) * d.norm
    cols = st.columns([3, 1])
    prompt = cols[0].text_input("prompt", "The weather today", key="steer_prompt")
    times = cols[1].slider("strength (x the feature's largest output)", -10.0, 10.0, 4.0, 0.5)
    vec = SteeringVector(**d.steering_kwargs())
    left, right = st.columns(2)
    left.markdown(f"**unsteered**\n\n{prompt}{generate(model, prompt, None, max_new_tokens=16)}")
    steered = generate(model, prompt, vec, times * scale, max_new_tokens=16)
    right.markdown(f"**steered with latent {feature.latent} ({times:+g}x)**\n\n{prompt}{steered}")


model = pick_model()
if model is None:
    st.stop()
name = model_name(model)
root = st.text_input(
    "SAE directory", os.environ.get("GATESCOPE_SAE_DIR", "runs/saes"), key="sae_dir"
)
try:
    saes = find_saes(root)
except GatescopeError as exc:
    st.warning(str(exc))
    saes = []
with st.expander("Train an SAE here on a small token budget", expanded=not saes):
    try:
        trained_now = train_form(model, root)
    except GatescopeError as exc:
        st.error(str(exc))
        trained_now = None
if trained_now:
    saes = sorted({*saes, trained_now})
    st.session_state["sae"] = trained_now
if not saes:
    st.info(f"No SAEs in '{root}' yet: train one above, or with `gatescope sae train`.")
    st.stop()
if st.session_state.get("sae") not in saes:
    st.session_state["sae"] = saes[0]
path = st.selectbox("SAE", saes, key="sae")
try:
    trained = cached_sae(path, stamp(path))
    check_sae_site(model, trained)
    st.caption(
        f"{trained.architecture} SAE on {trained.site} of {trained.model or 'unknown model'}, "
        f"{trained.width} latents"
    )
    m = metrics(name, path, stamp(path))
    show_metrics(m)
    st.subheader("Feature browser")
    freq = m["feature_frequency"]
    busiest = max(range(len(freq)), key=freq.__getitem__) if freq else 0
    latent = st.number_input("latent", 0, trained.width - 1, busiest, key="latent")
    feature = contexts(name, path, stamp(path), int(latent))
    if feature.contexts:
        st.plotly_chart(context_figure(feature), width="stretch", key="contexts")
    else:
        st.info(f"latent {latent} never fires on the bundled texts; pick another one")
    st.subheader("Steer with this feature")
    steer_with(model, trained, feature)
except GatescopeError as exc:
    st.error(str(exc))
