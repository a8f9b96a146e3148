"""Shared pieces of the Streamlit pages: the model picker, cached loading, error display.

Pages call only the public API of ``probe``, ``interventions`` and ``circuits``. The model
shown is chosen in the sidebar (default: the bundled ``reference`` model, or the
``GATESCOPE_MODEL`` environment variable) and loaded once (``st.cache_resource``).
"""

from __future__ import annotations

import os

# plotly imports pandas lazily; two script runs doing that at once (a rerun while the first
# run still draws) saw a half-initialised module, so it is imported whole before any page runs
import pandas  # noqa: F401
import streamlit as st

from probe.errors import GatescopeError

CHOICES = ["reference", "reference-plain", "reference-hybrid", "other (local directory or hub id)"]


def default_model() -> str:
    """The model the app opens on: ``GATESCOPE_MODEL`` if set, else ``reference``."""
    return os.environ.get("GATESCOPE_MODEL", "reference")


@st.cache_resource(show_spinner="Loading model...")
def cached_model(name: str):
    from probe import load_model

    return load_model(name)


def pick_model():
    """Sidebar model picker; returns the loaded Model, or None after showing an error."""
    st.sidebar.header("Model")
    wanted = default_model()
    default = wanted if wanted in CHOICES else CHOICES[-1]
    choice = st.sidebar.selectbox(
        "model", CHOICES, index=CHOICES.index(default), key="model_choice"
    )
    name = choice
    if choice == CHOICES[-1]:
        fallback = "" if wanted in CHOICES else wanted
        name = st.sidebar.text_input("directory or hub id", value=fallback, key="model_path")
        if not name.strip():
            st.info("Type a local model directory or a hub id in the sidebar.")
            return None
    try:
        return cached_model(name.strip())
    except GatescopeError as exc:
        st.error(str(exc))
    except (OSError, ValueError) as exc:
        st.error(f"could not load '{name}': {exc}")
    return None


def show_error(exc: Exception) -> None:
    st.error(str(exc))


def model_name(model) -> str:
    """The name the current model was loaded under (the cache key for results)."""
    choice = st.session_state.get("model_choice", default_model())
    if choice in CHOICES[:2]:
        return choice
    return st.session_state.get("model_path") or model.name


def bundled_texts(n: int = 200) -> list[str]:
    """Up to ``n`` sentences from the bundled random text sets (prose, topic and sentiment
    sentences); a few built-in ones when data/tasks is absent."""
    from probe.tasks import load_texts

    texts: list[str] = []
    for i in range(12):
        try:
            texts += load_texts(f"random_{i}")
        except GatescopeError:
            break
        if len(texts) >= n:
            break
    return texts[:n] or [
        "When Mary and John went to the store, John gave a drink to Mary.",
        "The weather today is cold and wet.",
        "I loved the film and its music.",
    ]
