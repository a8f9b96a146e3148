"""SAEs: the SAEs found in a directory (or one trained here with the defaults
``gatescope sae train`` chooses, :func:`probe.sae.default_spec`: width and k from the site's
width, tokens from the texts), their SAEBench core metrics on held-out texts (with a
warning below 0.5 explained variance), a feature list (sortable, searchable: firing rate,
max activation; CSV download) and feature pages like Neuronpedia's (activation histogram,
top / bottom logits of the decoder direction through the final norm and unembedding,
de-duplicated top contexts, contexts across activation quantiles; JSON / CSV download),
linked by the query parameters ``?sae=<directory>&latent=N``, and steering with a feature.

The heavy work (evaluation, encoding the browsed texts once for every feature page) runs
behind the Run button with a progress bar and is cached; training shows its running
explained variance.
"""

import json
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
    corpus_dashboard,
    default_spec,
    encode_corpus,
    evaluate_sae,
    latent_direction,
    load_trained,
    site_width,
    train_from_model,
)

st.set_page_config(page_title="gatescope: SAEs", layout="wide")
st.title("Sparse autoencoders")
#: The bundled texts: the first EVAL_TEXTS are held out for evaluation, the rest train.
EVAL_TEXTS, ALL_TEXTS, BROWSE_TEXTS = 96, 600, 300
READING_HELP = (
    "code: the authors' released code (z = mu, KL over all latents, no AuxK). paper: the "
    "paper's text (reparameterised sampling; training warns when it collapses)"
)
ARCHS = ["topk", "vsae", "transcoder"]


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


def train_texts() -> list[str]:
    return bundled_texts(ALL_TEXTS)[EVAL_TEXTS:]


def eval_texts() -> list[str]:
    return bundled_texts(ALL_TEXTS)[:EVAL_TEXTS]


@st.cache_resource(show_spinner="Loading the SAE...")
def cached_sae(path: str, mtime: float):
    return load_trained(path)


@st.cache_resource
def results() -> dict:
    """Computed metrics and encoded corpora, shared by every session, keyed by (what, model,
    SAE path, weights' mtime). A plain dict rather than cached functions: computing them
    draws a progress bar, which Streamlit's cached functions cannot replay."""
    return {}


def computed(name: str, path: str, mtime: float) -> bool:
    return ("corpus", name, path, mtime) in results()


def compute(name: str, path: str, mtime: float) -> None:
    """Evaluate on the held-out texts and encode the browsed texts, with a progress bar,
    unless done before."""
    cache = results()
    model, trained = cached_model(name), cached_sae(path, mtime)
    bar = st.progress(0.0, text="evaluating...")
    if ("metrics", name, path, mtime) not in cache:
        m = evaluate_sae(model, trained, eval_texts(), callback=_progress(bar, "evaluating"))
        cache["metrics", name, path, mtime] = m.to_dict()
    if ("corpus", name, path, mtime) not in cache:
        texts = bundled_texts(BROWSE_TEXTS)
        update = _progress(bar, "encoding the browsed texts")
        cache["corpus", name, path, mtime] = encode_corpus(model, trained, texts, callback=update)
    bar.empty()


def metrics(name: str, path: str, mtime: float) -> dict:
    return results()["metrics", name, path, mtime]


def corpus(name: str, path: str, mtime: float):
    """Every latent's activations over the browsed texts, encoded once."""
    return results()["corpus", name, path, mtime]


@st.cache_data(show_spinner=False)
def feature_page(name: str, path: str, mtime: float, latent: int):
    model, trained = cached_model(name), cached_sae(path, mtime)
    return corpus_dashboard(model, trained, corpus(name, path, mtime), latent, top=6)


def _options(values: list[int], default: int) -> tuple[list[int], int]:
    opts = sorted({*values, default})
    return opts, opts.index(default)


def _training_progress(bar):
    def update(info: dict) -> None:
        text = f"step {info['step']} of {info['steps']}: explained variance "
        text += f"{info['explained_variance']:.3f}"
        if "mean_abs_mu" in info:
            text += (
                f", |mu| {info['mean_abs_mu']:.3g} vs sigma {info['mean_sigma']:.3g}, "
                f"{info['noise_fraction']:.0%} of selections by noise"
            )
        bar.progress(min(info["step"] / max(info["steps"], 1), 1.0), text=text)

    return update


def train_section(model, root: str) -> str | None:
    """A training run from the page with ``gatescope sae train``'s defaults for the chosen
    site (width, k and tokens follow the site); returns the new SAE's directory."""
    cols = st.columns(3)
    arch = cols[0].selectbox("architecture", ARCHS, key="train_arch")
    kinds = (
        ("resid_mid",)
        if arch == "transcoder"
        else ("resid_post", "resid_mid", "mlp_out", "mlp_gate", "attn_gate")
    )
    sites = [
        f"{kind}.{layer}"
        for kind in kinds
        if kind in model.kinds
        for layer in range(model.dims.n_layers)
    ]
    if not sites:
        st.info(f"this model has no {' or '.join(kinds)} site to train a {arch} on")
        return None
    site = cols[1].selectbox(
        "site (transcoder: input; its output is mlp_out of the layer)",
        sites,
        index=min(model.dims.n_layers // 2, len(sites) - 1),
        key=f"train_site_{arch}",
    )
    reading = cols[2].selectbox(
        "vSAE reading", ["code", "paper"], key="train_reading", help=READING_HELP,
        disabled=arch != "vsae",
    )  # fmt: skip
    texts = train_texts()
    available = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    d_in, _ = site_width(model, model.sites(site)[0])
    dflt = default_spec(d_in, available, arch=arch)
    st.caption(
        f"defaults for {site} ({d_in} wide) and the {available} tokens of the "
        f"{len(texts)} training texts, as `gatescope sae train` chooses them: "
        f"{dflt.width} latents, k = {dflt.k}, {dflt.tokens} training tokens in batches "
        f"of {dflt.batch_size} ({dflt.steps} steps; the texts are repeated). The first "
        f"{EVAL_TEXTS} bundled texts are held out for the metrics."
    )
    row = st.columns(4)
    tag = f"{arch}_{site}"  # the sizes follow the site: its own widgets, its own defaults
    w_opts, w_idx = _options([64, 128, 256, 512, 1024, 2048, 4096], dflt.width)
    width = row[0].selectbox("latents", w_opts, index=w_idx, key=f"width_{tag}")
    k = row[1].number_input("k (active latents)", 1, 256, dflt.k, key=f"k_{tag}")
    budgets = [dflt.batch_size * n for n in (20, 100, 300)] + [dflt.tokens]
    t_opts, t_idx = _options(budgets, dflt.tokens)
    tokens = row[2].selectbox("training tokens", t_opts, index=t_idx, key=f"tokens_{tag}")
    if not row[3].button("Train", key="train", width="stretch"):
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
        vsae_reading=reading,
        checkpoint_every=0,
        checkpoint_minutes=0,
    )
    bar = st.progress(0.0, text=f"training a {arch} on {site} for {tokens} tokens...")
    train_from_model(
        model, site, spec, out, texts=texts, progress=False, callback=_training_progress(bar)
    )
    st.success(f"trained {out}")
    return str(out)


def show_metrics(m: dict) -> None:
    cols = st.columns(5)
    cols[0].metric("L0", f"{m['l0']:.1f}")
    cols[1].metric("explained variance", f"{m['explained_variance']:.3f}")
    cols[2].metric("dead fraction", f"{m['dead_fraction']:.3f}")
    cols[3].metric("CE-loss score", f"{m['ce_loss_score']:.3f}")
    cols[4].metric("tokens", m["tokens"])
    where = f" of {m['out_site']} (the transcoder replaces it)" if m.get("out_site") else ""
    st.caption(f"on the {EVAL_TEXTS} held-out bundled texts{where}")
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
    """Top contexts as rows, tokens as cells (by position relative to the peak), coloured by
    the latent's activation."""
    ctxs = feature.top_contexts
    lo = min((-c.center for c in ctxs), default=0)
    hi = max((len(c.tokens) - 1 - c.center for c in ctxs), default=0)
    offsets = list(range(lo, hi + 1))

    def row(c, values, fill):
        at = {i - c.center: v for i, v in enumerate(values)}
        return [at.get(o, fill) for o in offsets]

    z = [row(c, c.acts, None) for c in ctxs]
    text = [row(c, [t.replace(" ", "·") for t in c.tokens], "") for c in ctxs]
    rows = [f"#{i + 1} ({c.activation:.2f})" for i, c in enumerate(ctxs)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=offsets,
            y=rows,
            text=text,
            texttemplate="%{text}",
            colorscale="Oranges",
            zmin=0,
            zmax=max(feature.max_activation, 1e-9),
            colorbar={"title": "activation"},
            hovertemplate="context %{y}, position %{x}: '%{text}' activation %{z:.3f}"
            "<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"latent {feature.latent}: top contexts, none repeating another's text (fires on "
        f"{feature.firing_rate:.2%} of tokens)",
        xaxis_title="token position relative to the peak (0)",
        yaxis_title="context (rank, peak activation)",
        yaxis={"autorange": "reversed"},
        height=120 + 45 * len(rows),
    )
    return fig


def feature_table(stats: dict):
    import pandas as pd

    return pd.DataFrame(
        {
            "latent": range(len(stats["firing_rate"])),
            "firing rate": stats["firing_rate"],
            "max activation": stats["max_activation"],
        }
    ).sort_values("firing rate", ascending=False)


def show_feature_list(stats: dict, sae: str) -> None:
    """Every latent with its firing rate and largest activation (sortable by column)."""
    df = feature_table(stats)
    cols = st.columns([3, 1])
    query = cols[0].text_input(
        "search latents (ids like 3,17 or a minimum firing rate like >0.01)", key="search"
    )
    cols[1].download_button(
        "feature list (CSV)",
        df.to_csv(index=False),
        file_name=f"{sae.replace('/', '_')}_features.csv",
        mime="text/csv",
        key="features_csv",
        on_click="ignore",
    )
    q = query.strip()
    try:
        if q.startswith(">"):
            df = df[df["firing rate"] > float(q[1:])]
        elif q:
            df = df[df["latent"].isin([int(x) for x in q.split(",") if x.strip()])]
    except ValueError:
        st.error(f"search {query!r}: expected ids like 3,17 or >0.01")
    st.caption(
        f"{int((df['firing rate'] > 0).sum())} of {len(df)} listed latents fire on the "
        f"{BROWSE_TEXTS} browsed texts"
    )
    st.dataframe(df, hide_index=True, height=240, key="feature_list")


def context_rows(feature) -> list[dict]:
    """The top contexts and those across activation intervals, one row each."""
    groups = [("top", feature.top_contexts)] + [
        (f"({q['low']:.2f}, {q['high']:.2f}]", q["contexts"]) for q in feature.quantile_contexts
    ]
    rows = []
    for interval, ctxs in groups:
        for c in ctxs:
            words = list(c.tokens)
            words[c.center] = f"[{words[c.center]}]"
            rows.append(
                {
                    "interval": interval,
                    "text": c.text_index,
                    "position": c.position,
                    "activation": c.activation,
                    "context": "".join(words),
                }
            )
    return rows


def show_feature_page(feature, sae: str) -> None:
    """A latent's page: histogram, logits, top contexts, contexts across quantiles."""
    import pandas as pd

    cols = st.columns(3)
    cols[0].metric("firing rate", f"{feature.firing_rate:.3%}")
    cols[1].metric("max activation", f"{feature.max_activation:.3f}")
    cols[2].metric("browsed tokens", feature.tokens)
    rows = context_rows(feature)
    dl = st.columns(2)
    dl[0].download_button(
        "feature page (JSON)",
        json.dumps(feature.to_dict(), indent=2),
        file_name=f"{sae.replace('/', '_')}_latent{feature.latent}.json",
        mime="application/json",
        key="page_json",
        on_click="ignore",
    )
    dl[1].download_button(
        "contexts (CSV)",
        pd.DataFrame(rows).to_csv(index=False),
        file_name=f"{sae.replace('/', '_')}_latent{feature.latent}_contexts.csv",
        mime="text/csv",
        key="page_csv",
        on_click="ignore",
    )
    if not feature.top_contexts:
        st.info(f"latent {feature.latent} never fires on the browsed texts; pick another one")
        return
    left, right = st.columns(2)
    h = feature.histogram
    centers = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:], strict=True)]
    hist = go.Figure(go.Bar(x=centers, y=h["counts"]))
    hist.update_layout(
        title="activation histogram (tokens where it fires)",
        xaxis_title="activation",
        yaxis_title="tokens",
        height=300,
    )
    left.plotly_chart(hist, width="stretch", key="histogram")
    if feature.top_logits:
        right.caption(
            "decoder direction through the final norm and the unembedding (logit per unit of "
            "the latent)"
        )
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
    st.caption("contexts sampled across activation intervals ([peak token])")
    quantiles = [r for r in rows if r["interval"] != "top"]
    st.dataframe(pd.DataFrame(quantiles), hide_index=True, key="quantiles")


def steer_with(model, trained, feature, m: dict) -> None:
    """Steering with the latent's decoder direction, in units of the latent's largest
    output at its peak (``max activation x ||W_dec[i]||``), the vector's norm shown against
    the site's typical norm."""
    d = latent_direction(trained, feature.latent)
    peak = (feature.max_activation or 1.0) * d.norm
    typical = m.get("l2_norm_in") if not trained.is_transcoder else None
    cols = st.columns([3, 1, 1])
    prompt = cols[0].text_input("prompt", "The weather today", key="steer_prompt")
    times = cols[1].slider(
        "strength (x the latent's peak output)", -4.0, 4.0, 1.0, 0.25, key="steer_times"
    )
    run = cols[2].button("Generate", key="steer_run", width="stretch")
    norm = abs(times) * peak
    scale = f"; the site's mean norm per token is {typical:.3g}" if typical else ""
    st.caption(
        f"decoder row norm {d.norm:.3g}, largest activation {feature.max_activation:.3g}: "
        f"1x = the latent's own peak output, norm {peak:.3g}. Added vector: {times:+g}x, "
        f"norm {norm:.3g} at {d.site}{scale}"
    )
    if not run:
        return
    if not prompt.strip():
        raise GatescopeError("the prompt is empty; type a prompt to steer")
    vec = SteeringVector(**d.steering_kwargs())
    left, right = st.columns(2)
    left.markdown(f"**unsteered**\n\n{prompt}{generate(model, prompt, None, max_new_tokens=16)}")
    steered = generate(model, prompt, vec, times * peak, max_new_tokens=16)
    right.markdown(f"**steered with latent {feature.latent} ({times:+g}x)**\n\n{prompt}{steered}")


def _progress(bar, what: str):
    def update(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"{what}: {done} of {total} texts")

    return update


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
with st.expander("Train an SAE here", expanded=not saes):
    try:
        trained_now = train_section(model, root)
    except GatescopeError as exc:
        st.error(str(exc))
        trained_now = None
base = Path(root).expanduser()


def label(path: str) -> str:
    """An SAE's name in the URL: its directory relative to the SAE directory."""
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


if trained_now:
    saes = sorted({*saes, trained_now})
    st.session_state["sae"] = label(trained_now)
if not saes:
    st.info(f"No SAEs in '{root}' yet: train one above, or with `gatescope sae train`.")
    st.stop()
by_label = {label(p): p for p in saes}
linked_sae = st.query_params.get("sae")
if st.session_state.get("sae") not in by_label:
    st.session_state["sae"] = linked_sae if linked_sae in by_label else next(iter(by_label))
chosen = st.selectbox("SAE", list(by_label), key="sae")
path = by_label[chosen]
if st.query_params.get("sae") != chosen:  # another SAE: its own latent, not the last one's
    st.query_params["sae"] = chosen
    if "latent" in st.query_params:
        del st.query_params["latent"]
try:
    trained = cached_sae(path, stamp(path))
    check_sae_site(model, trained)
    what = "SAE" if not trained.is_transcoder else f"transcoder -> {trained.out_site}"
    st.caption(
        f"{trained.architecture} {what} on {trained.site} of "
        f"{trained.model or 'unknown model'}, {trained.width} latents"
    )
    for w in trained.meta.get("warnings", []):
        st.warning(f"at training: {w}")
    key = (name, path, stamp(path))
    run = st.button(
        "Run", key="run", help="evaluate on the held-out texts and encode the browsed texts"
    )
    if run or (trained_now and path == trained_now):
        compute(*key)
    if not computed(*key):
        st.info(
            f"Run evaluates this SAE on {EVAL_TEXTS} held-out texts and encodes "
            f"{BROWSE_TEXTS} texts for the feature pages (once; cached)."
        )
        st.stop()
    m = metrics(*key)
    show_metrics(m)
    st.subheader("Feature browser")
    stats = corpus(*key).stats()
    show_feature_list(stats, chosen)
    freq = stats["firing_rate"]
    busiest = max(range(len(freq)), key=freq.__getitem__) if freq else 0
    linked = st.query_params.get("latent")
    ok = linked is not None and linked.isdigit() and int(linked) < trained.width
    start = int(linked) if ok else busiest
    latent = st.number_input("latent", 0, trained.width - 1, start, key=f"latent_{chosen}")
    st.query_params["latent"] = str(int(latent))
    st.caption(f"link to this feature page: `?sae={chosen}&latent={int(latent)}`")
    feature = feature_page(*key, int(latent))
    show_feature_page(feature, chosen)
    st.subheader("Steer with this feature")
    steer_with(model, trained, feature, m)
except GatescopeError as exc:
    st.error(str(exc))
