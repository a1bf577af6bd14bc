"""Streamlit glue shared by the pages: cached model loading and the first-run message.

Everything here is about the screen; computing stays in pneumo_core.
"""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from pneumo_core import registry
from pneumo_core.jobs import JobQueue, params_from_model
from pneumo_core.settings import load_settings

TRAIN_COMMAND = "python -m pneumo_core train --data DATA_DIR"


def settings():
    return load_settings()


def versions() -> list[dict]:
    return registry.list_versions(settings().models_dir)


@st.cache_resource(show_spinner="Loading model…")
def diagnoser_for(version_dir: str):
    """One loaded model per version for the whole server (shared by every session)."""
    from pneumo_core.diagnosis import Diagnoser
    from pneumo_core.model import PneumoModel
    return Diagnoser(PneumoModel.load(version_dir))


def diagnoser(version_id: str | None = None):
    """The model for `version_id` (default: the active one), or the first-run message and stop."""
    models_dir = settings().models_dir
    try:
        path = registry.resolve(models_dir, version_id)
    except registry.RegistryError:
        first_run()
        st.stop()
    return diagnoser_for(str(path))


def first_run() -> None:
    st.info("No model has been trained yet. Start one on the **Retrain** page, or from a terminal (about five "
            "minutes on a laptop), then reload this page:")
    st.code(TRAIN_COMMAND, language="bash")


def job_queue() -> JobQueue:
    return JobQueue(settings())


def current_train_params():
    """TrainConfig for 'Retrain with current settings': the configured data dir and the active
    model's options (the library's defaults before the first model)."""
    s = settings()
    active = registry.active_version(s.models_dir)
    if active:
        return params_from_model(registry.read_json(s.models_dir / active, "metadata.json"), str(s.data_dir))
    return params_from_model({"backbone": s.backbone, "image_size": s.image_size, "weights": "auto",
                              "training": {"seed": s.seed}}, str(s.data_dir))


def user() -> str:
    """Who is at the screen, for the record: the signed-in user if the server has log-in, else the
    name typed in the sidebar, else 'dashboard user'."""
    return current_user() or st.session_state.get("user_name") or "dashboard user"


def actor():
    """The acting user for library calls (`access.Actor`): the signed-in one, else (until sign-in is
    set up) the sidebar name with the admin role, as the dashboard allowed everything before."""
    from pneumo_core.access import Actor
    return st.session_state.get("actor") or Actor(user(), "admin")


def user_box() -> None:
    st.sidebar.text_input("Your name", key="user_name", placeholder="recorded with promotions and jobs")


def version_picker(label: str = "Model version", key: str | None = None, index_of_active: bool = True) -> str | None:
    """A select box over the registry; None (and the first-run message) when it is empty."""
    rows = versions()
    if not rows:
        first_run()
        return None
    ids = [r["id"] for r in rows]
    active = next((i for i, r in enumerate(rows) if r["active"]), 0)
    return st.selectbox(label, ids, index=active if index_of_active else min(1, len(ids) - 1), key=key,
                        format_func=lambda i: f"{i} (active)" if rows[ids.index(i)]["active"] else i)


def version_dir(version_id: str):
    return settings().models_dir / version_id


def thumbnail_uri(gray: np.ndarray, size: int = 96) -> str:
    """A small PNG data URI for tables."""
    scale = size / max(gray.shape)
    small = cv2.resize(gray, (max(1, int(gray.shape[1] * scale)), max(1, int(gray.shape[0] * scale))))
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", small)[1].tobytes()).decode()


def test_predictions(version_id: str) -> pd.DataFrame:
    return registry.test_predictions(version_dir(version_id))


@st.cache_data(show_spinner=False, max_entries=512)
def diagnosis(version_path: str, data: bytes, name: str, method: str = "gradcam"):
    """(grayscale film, Diagnosis) of raw file bytes, cached by content, model and method.

    Raises ImageError for files that are not usable films.
    """
    from pneumo_core.io import read_film
    film = read_film(data, name)
    return film.gray, diagnoser_for(version_path).diagnose(film.gray, name, method, data, film.info)


@st.cache_resource(show_spinner=False)
def _audit_trail_at(path: str):
    from pneumo_core.audit import AuditTrail
    return AuditTrail(path)


def audit_trail():
    """The audit database in PNEUMO_HOME, opened once per server."""
    return _audit_trail_at(str(settings().audit_path))


def current_user() -> str | None:
    """The signed-in user when the dashboard has authentication set up, else None."""
    try:
        return (st.user.get("email") or st.user.get("name")) if st.user.is_logged_in else None
    except Exception:  # no authentication configured
        return None


def diagnose_and_record(version_path: str, data: bytes, name: str, method: str = "gradcam"):
    """`diagnosis`, plus one audit row the first time this session is shown that call.

    Reruns (a slider moved, another film picked) show the cached call again and add no row; the
    same film shown in another session, or with another heatmap method, is a new row.
    """
    gray, d = diagnosis(version_path, data, name, method)
    key = (d.sha256, d.model_id, d.method)
    recorded = st.session_state.setdefault("_audit_recorded", set())
    if key not in recorded:
        audit_trail().record(d, source="dashboard", who=current_user())
        recorded.add(key)
    return gray, d
