"""gatescope: explore a gated transformer. Pick a model; the pages show gates and circuits."""

import streamlit as st

from app.ui import pick_model
from probe.sites import SITE_KINDS

st.set_page_config(page_title="gatescope", layout="wide")
st.title("gatescope")
st.caption("Gates, circuits and steering for gated transformers")

model = pick_model()
if model is not None:
    d = model.dims
    st.markdown(f"**Family `{model.family.name}`**: {model.family.description}")
    # two rows of short metrics: five in one row truncated their values at 800 px
    cols = st.columns(3) + st.columns(3)
    cols[0].metric("layers", d.n_layers)
    cols[1].metric("heads", f"{d.n_heads} x {d.d_head}")
    cols[2].metric("d_model", d.d_model)
    cols[3].metric("attention gate", "yes" if model.is_gated else "no")
    cols[4].metric("parameters", f"{sum(p.numel() for p in model.hf.parameters()) / 1e6:.2f} M")
    rows = []
    for kind, meaning in SITE_KINDS.items():
        rows.append(
            {
                "site kind": kind,
                "here": "yes" if kind in model.kinds else "-",
                "per token": meaning.split(":")[0],
                "meaning": meaning.split(": ", 1)[1],
            }
        )
    st.subheader("Sites")
    st.dataframe(rows, hide_index=True, width="stretch")
    st.markdown(
        "Open **Gates** in the sidebar to see gate values per token, gate sparsity and "
        "the attention sink of this model next to its ungated twin."
    )
