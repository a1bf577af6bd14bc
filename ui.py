"""Streamlit glue shared by the pages: cached model loading and the first-run message.

Everything here is about the screen; computing stays in pneumo_core.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from pneumo_core import registry
from pneumo_core.io import DecodeBudget, read_film
from pneumo_core.jobs import JobQueue, params_from_model
from pneumo_core.lru import ByteLRU
from pneumo_core.settings import load_settings

TRAIN_COMMAND = "python -m pneumo_core train --data DATA_DIR"
# The memory budget (README "Memory budget"). The cache sizes are read once, when this module is
# imported (decorators take them then); the per-request limits are read on each call.
BUDGET = load_settings().budget


def settings():
    return load_settings()


def versions() -> list[dict]:
    return registry.list_versions(settings().models_dir)


@st.cache_resource(show_spinner="Loading model…", max_entries=BUDGET.models_loaded)
def diagnoser_for(version_dir: str):
    """One loaded model per version for the whole server (shared by every session); at most
    `models_loaded` versions at once, the least recently used unloaded first."""
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


def decode_budget() -> DecodeBudget:
    """A fresh per-request pixel budget: one per page run, passed to every `diagnosis` of the run."""
    return DecodeBudget(settings().budget.request_pixels)


def check_upload_count(uploads: list) -> None:
    """Stop the page with a message when one upload holds more files than the budget allows."""
    limit = settings().budget.files_per_upload
    if len(uploads) > limit:
        st.error(f"{len(uploads)} files in one upload; at most {limit} are scored at a time. "
                 f"Remove some and upload the rest as a second batch.")
        st.stop()


def for_display(gray: np.ndarray, d, side: int = BUDGET.display_side):
    """(film, Diagnosis) shrunk for the screen: longest side <= `side`, a float heatmap resized with it
    and kept as float16 (a uint8 heatmap is already model-sized and kept as it is)."""
    scale = side / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    heat = d.heatmap
    if heat is not None and heat.dtype != np.uint8:
        if heat.shape != gray.shape:
            heat = cv2.resize(heat.astype(np.float32), (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_AREA)
        heat = heat.astype(np.float16)
    return gray, dataclasses.replace(d, heatmap=heat)


@st.cache_resource(show_spinner=False)
def _diagnosis_cache() -> ByteLRU:
    return ByteLRU(BUDGET.cache_bytes, ttl_s=BUDGET.cache_ttl_s)


def diagnosis(version_path: str, data: bytes, name: str, method: str = "gradcam",
              budget: DecodeBudget | None = None):
    """(grayscale film, Diagnosis) of raw file bytes, both display-sized (`for_display`), cached by
    content, name, model and method.

    The cache is one byte-bounded LRU for the server (`cache_bytes`, `cache_ttl_s`): each entry holds
    <= ~3 MB (1024 px film + float16 heatmap), never the full-size film or a full-size float map.

    Args:
        version_path, data, name, method: the model version's folder, the file's bytes and name, the CAM method.
        budget: the request's `DecodeBudget` (charged only when the film is decoded, not on a cache hit).
    Raises ImageError for files that are not usable films, or over a limit.
    """
    key = (version_path, hashlib.sha256(data).hexdigest(), name, method)
    cache = _diagnosis_cache()
    hit = cache.get(key)
    if hit is not None:
        return hit
    film = read_film(data, name, max_pixels=settings().budget.max_film_pixels, budget=budget)
    gray, d = for_display(film.gray, diagnoser_for(version_path).diagnose(film.gray, name, method, data, film.info))
    cache.put(key, (gray, d), gray.nbytes + (d.heatmap.nbytes if d.heatmap is not None else 0) + 4096)
    return gray, d


@st.cache_data(show_spinner=False, max_entries=BUDGET.browser_entries, ttl=BUDGET.cache_ttl_s)
def error_overlay(version_path: str, film_path: str, side: int = 384) -> np.ndarray:
    """The Metrics error browser's picture of a test film: its Grad-CAM overlay, <= `side` px (~0.4 MB).

    Its own small cache (`browser_entries`, a few pages' worth), so paging through the errors never
    fills the diagnosis cache.
    """
    from pneumo_core.cam import overlay  # imports TensorFlow: only where a model is used
    film = read_film(film_path, max_pixels=settings().budget.max_film_pixels)
    gray, d = for_display(film.gray, diagnoser_for(version_path).diagnose(film.gray, film_path), side)
    return overlay(gray, d.heatmap, 0.4)


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


def diagnose_and_record(version_path: str, data: bytes, name: str, method: str = "gradcam",
                        budget: DecodeBudget | None = None):
    """`diagnosis`, plus one audit row the first time this session is shown that call.

    Reruns (a slider moved, another film picked) show the cached call again and add no row; the
    same film shown in another session, or with another heatmap method, is a new row.
    """
    gray, d = diagnosis(version_path, data, name, method, budget)
    key = (d.sha256, d.model_id, d.method)
    recorded = st.session_state.setdefault("_audit_recorded", set())
    if key not in recorded:
        audit_trail().record(d, source="dashboard", who=current_user())
        recorded.add(key)
    return gray, d
