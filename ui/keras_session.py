"""Keras's global session kept across the dashboard's runs (app.py calls `keep_keras_session` after each)."""
from __future__ import annotations

import sys


def _keras_session_kept(*args, **kwargs) -> None:
    """Stands in for `keras.backend.clear_session` in the dashboard process (`keep_keras_session`)."""


def keep_keras_session() -> None:
    """Stop Streamlit clearing Keras's global session after every run; nothing to do before Keras is imported.

    Streamlit ends every script and fragment run with `keras.backend.clear_session()` (not configurable):
    a full garbage collection over TensorFlow's objects plus an emptied kernel cache, so the next diagnosis
    re-instantiates its TensorFlow functions, and one session's clear can race another's model build. Under
    bench/load.py (11 sessions, 70 films) py-spy put 23 % of the dashboard's busy time there (15 % the
    collection, 7 % re-instantiating). The dashboard's models live in `st.cache_resource` for the server's
    life: it keeps no per-run Keras state that would need clearing.
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session = _keras_session_kept
