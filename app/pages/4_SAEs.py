"""SAEs: the SAEs found in a directory (or one trained here with defaults chosen from the
site width and the tokens available), their SAEBench core metrics (with a warning below 0.5
explained variance), a feature list (sortable, searchable: firing rate, max activation) and
feature pages like Neuronpedia's (activation histogram, top / bottom logits of the decoder
direction, de-duplicated top contexts, contexts across activation quantiles), linked by the
query parameter ``?latent=N``, and steering with a feature."""

import math
import os
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from app.ui import bundled_texts, cached_model, model_name, pick_model
from interventions.steering import SteeringVector, generate
from probe.errors import GatescopeError
from probe.sae import (
    check_sae_site,
    default_spec,
    evaluate_sae,
    latent_dashboard,
    latent_direction,
    latent_stats,
    load_trained,
    site_width,
    train_from_model,
)

st.set_page_config(page_title="gatescope: SAEs", layout="wide")
st.title("Sparse autoencoders")
EVAL_TEXTS, BROWSE_TEXTS, TRAIN_TEXTS = 96, 300, 600
APP_BATCH = 256
READING_HELP = (
    "code: the authors' released code (z = mu, KL over all latents, no AuxK; reproduces the "
    "paper's direction). paper: the paper's text (reparameterised sampling; can collapse)"
)


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


@st.cache_data(show_spinner="Firing rates and largest activations of every latent...")
def feature_list(name: str, path: str, mtime: float) -> dict:
    model, trained = cached_model(name), cached_sae(path, mtime)
    return latent_stats(model, trained, bundled_texts(BROWSE_TEXTS))


@st.cache_data(show_spinner="Building the feature page...")
def contexts(name: str, path: str, mtime: float, latent: int):
    model, trained = cached_model(name), cached_sae(path, mtime)
    return latent_dashboard(model, trained, bundled_texts(BROWSE_TEXTS), latent, top=6)


def _options(values: list[int], default: int) -> tuple[list[int], int]:
    opts = sorted({*values, default})
    return opts, opts.index(default)


def train_form(model, root: str) -> str | None:
    """A small training run from the page; returns the new SAE's directory."""
    sites = [
        f"{kind}.{layer}"
        for kind in ("resid_post", "resid_mid", "mlp_out", "attn_gate")
        if kind in model.kinds
        for layer in range(model.dims.n_layers)
    ]
    texts = bundled_texts(TRAIN_TEXTS)
    available = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    chosen_site = st.session_state.get("train_site", sites[model.dims.n_layers // 2])
    d_in, _ = site_width(model, model.sites(chosen_site)[0])
    dflt = default_spec(d_in, available, batch_size=APP_BATCH)
    st.caption(
        f"defaults for {chosen_site} ({d_in} wide) and the {available} bundled tokens: "
        f"{dflt.width} latents, k = {dflt.k}, {dflt.tokens} training tokens "
        "(as `gatescope sae train` chooses them)"
    )
    with st.form("train_sae"):
        cols = st.columns(6)
        site = cols[0].selectbox("site", sites, index=model.dims.n_layers // 2, key="train_site")
        arch = cols[1].selectbox("architecture", ["topk", "vsae"], key="train_arch")
        reading = cols[2].selectbox(
            "vSAE reading", ["code", "paper"], key="train_reading", help=READING_HELP
        )
        w_opts, w_idx = _options([64, 128, 256, 512, 1024, 2048], dflt.width)
        width = cols[3].selectbox("latents", w_opts, index=w_idx, key="width")
        k = cols[4].number_input("k (active latents)", 1, 256, dflt.k, key="train_k")
        t_opts, t_idx = _options([2000, 5000, 10000, 20000, 50000, 100000], dflt.tokens)
        tokens = cols[5].selectbox("tokens", t_opts, index=t_idx, key="tokens")
        submitted = st.form_submit_button("train")
    if not submitted:
        return None
    out = Path(root).expanduser() / f"{arch}_{site}_{width}"
    n = 1
    while out.exists():
        n += 1
        out = out.with_name(f"{arch}_{site}_{width}_{n}")
    spec = default_spec(
        d_in,
        available,
        arch=arch,
        width=int(width),
        k=int(k),
        tokens=int(tokens),
        batch_size=min(APP_BATCH, int(tokens)),
        vsae_reading=reading,
        checkpoint_every=0,
        checkpoint_minutes=0,
    )
    with st.spinner(f"Training a {arch} SAE on {site} for {tokens} tokens..."):
        train_from_model(model, site, spec, out, texts=texts, progress=False)
    st.success(f"trained {out}")
    return str(out)


def show_metrics(m: dict) -> None:
    cols = st.columns(5)
    cols[0].metric("L0", f"{m['l0']:.1f}")
    cols[1].metric("explained variance", f"{m['explained_variance']:.3f}")
    cols[2].metric("dead fraction", f"{m['dead_fraction']:.3f}")
    cols[3].metric("CE-loss score", f"{m['ce_loss_score']:.3f}")
    cols[4].metric("tokens", m["tokens"])
    if m["explained_variance"] < 0.5:
        st.warning(
            f"explained variance {m['explained_variance']:.3f} < 0.5: this SAE reconstructs "
            "its site poorly (its features and CE-loss score say little); train on more "
            "tokens or with a larger width or k"
        )
    with st.expander("SAEBench core metrics"):
        sb = {g: v for g, v in m["saebench"].items() if g != "feature_density_histogram"}
        st.json(sb)
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
    ctxs = feature.top_contexts
    width = max((len(c.tokens) for c in ctxs), default=1)
    pad = lambda xs, fill: list(xs) + [fill] * (width - len(xs))  # noqa: E731
    z = [pad(c.acts, None) for c in ctxs]
    text = [pad([t.replace(" ", "·") for t in c.tokens], "") for c in ctxs]
    rows = [f"#{i + 1} ({c.activation:.2f})" for i, c in enumerate(ctxs)]
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
        title=f"latent {feature.latent}: top contexts, no two alike (fires on "
        f"{feature.firing_rate:.2%} of tokens)",
        yaxis={"autorange": "reversed"},
        xaxis={"showticklabels": False},
        height=90 + 45 * len(rows),
    )
    return fig


def show_feature_list(stats: dict) -> None:
    """Every latent with its firing rate and largest activation (sortable by column)."""
    import pandas as pd

    df = pd.DataFrame(
        {
            "latent": range(len(stats["firing_rate"])),
            "firing rate": stats["firing_rate"],
            "max activation": stats["max_activation"],
        }
    ).sort_values("firing rate", ascending=False)
    query = st.text_input(
        "search latents (ids like 3,17 or a minimum firing rate like >0.01)", key="search"
    )
    q = query.strip()
    try:
        if q.startswith(">"):
            df = df[df["firing rate"] > float(q[1:])]
        elif q:
            df = df[df["latent"].isin([int(x) for x in q.split(",") if x.strip()])]
    except ValueError:
        st.error(f"search {query!r}: expected ids like 3,17 or >0.01")
    st.caption(f"{int((df['firing rate'] > 0).sum())} of {len(df)} listed latents fire")
    st.dataframe(df, hide_index=True, height=240, key="feature_list")


def show_feature_page(feature) -> None:
    """A latent's page: histogram, logits, top contexts, contexts across quantiles."""
    import pandas as pd

    cols = st.columns(3)
    cols[0].metric("firing rate", f"{feature.firing_rate:.3%}")
    cols[1].metric("max activation", f"{feature.max_activation:.3f}")
    cols[2].metric("browsed tokens", feature.tokens)
    if not feature.top_contexts:
        st.info(f"latent {feature.latent} never fires on the bundled texts; pick another one")
        return
    left, right = st.columns(2)
    h = feature.histogram
    centers = [round((a + b) / 2, 3) for a, b in zip(h["edges"][:-1], h["edges"][1:], strict=True)]
    left.caption("activation histogram (non-zero activations)")
    left.bar_chart(pd.DataFrame({"activation": centers, "tokens": h["counts"]}), x="activation")
    if feature.top_logits:
        right.caption("decoder direction through the unembedding")
        right.dataframe(
            pd.DataFrame(
                {
                    "top token": [t for t, _ in feature.top_logits],
                    "logit +": [v for _, v in feature.top_logits],
                    "bottom token": [t for t, _ in feature.bottom_logits],
                    "logit -": [v for _, v in feature.bottom_logits],
                }
            ),
            hide_index=True,
        )
    else:
        right.caption("top / bottom logits: only for residual-stream sites")
    st.plotly_chart(context_figure(feature), width="stretch", key="contexts")
    rows = []
    for q in feature.quantile_contexts:
        for c in q["contexts"]:
            words = list(c["tokens"] if isinstance(c, dict) else c.tokens)
            center = c["center"] if isinstance(c, dict) else c.center
            words[center] = f"[{words[center]}]"
            act = c["activation"] if isinstance(c, dict) else c.activation
            rows.append(
                {
                    "interval": f"({q['low']:.2f}, {q['high']:.2f}]",
                    "activation": act,
                    "context": "".join(words),
                }
            )
    st.caption("contexts sampled across activation intervals")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="quantiles")


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
    for w in trained.meta.get("warnings", []):
        st.warning(f"at training: {w}")
    st.subheader("Feature browser")
    freq = m["feature_frequency"]
    busiest = max(range(len(freq)), key=freq.__getitem__) if freq else 0
    show_feature_list(feature_list(name, path, stamp(path)))
    linked = st.query_params.get("latent")
    start = int(linked) if linked and linked.isdigit() and int(linked) < trained.width else busiest
    latent = st.number_input("latent", 0, trained.width - 1, start, key="latent")
    st.query_params["latent"] = str(int(latent))
    st.caption(f"link to this feature page: `?latent={int(latent)}`")
    feature = contexts(name, path, stamp(path), int(latent))
    show_feature_page(feature)
    st.subheader("Steer with this feature")
    steer_with(model, trained, feature)
except GatescopeError as exc:
    st.error(str(exc))
