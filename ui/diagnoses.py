"""Diagnoses for the screen: the active model, calls cached by content for every session, each shown
call recorded once per session, the error browser's overlays and the heatmaps' deletion curves."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import streamlit as st

from pneumo_core.errors import IntegrityError
from pneumo_core.imaging.films import DecodeBudget, read_film
from pneumo_core.learn.store import read_json
from pneumo_core.records import registry
from ui.cache import ByteLRU
from ui.images import for_display
from ui.loaders import BUDGET, audit_trail, diagnoser_for, settings
from ui.session import who
from ui.text import literal
from ui.widgets import first_run


@dataclasses.dataclass(frozen=True)
class Card:
    """What a page says of a model version before loading it: its id and threshold, from its card."""
    id: str
    threshold: float


def _version_dir(version_id: str | None):
    """The folder of `version_id` (None: the active version), or the first-run message and stop."""
    try:
        return registry.resolve(settings().models_dir, version_id)
    except registry.RegistryError:
        first_run()
        st.stop()


def active_card() -> Card:
    """The active version's card, read without TensorFlow (its files are checked when it loads, `diagnoser`), or
    the first-run message and stop."""
    path = _version_dir(None)
    return Card(path.name, float(read_json(path, "metadata.json")["threshold"]))


def diagnoser(version_id: str | None = None):
    """The model for `version_id` (default: the active one), or the first-run message and stop."""
    path = _version_dir(version_id)
    try:
        return diagnoser_for(str(path))
    except IntegrityError as error:   # a swapped or unsigned model is never served: the page says why
        st.error(literal(error))
        st.stop()


def decode_budget() -> DecodeBudget:
    """A fresh per-request pixel budget: one per page run, passed to every `diagnosis` of the run."""
    return DecodeBudget(settings().budget.request_pixels)


@st.cache_resource(show_spinner=False)
def diagnosis_cache() -> ByteLRU:
    """The server's one cache of display-sized diagnoses (`cache_bytes`, `cache_ttl_s`), shared by every session."""
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
    cache = diagnosis_cache()
    hit = cache.get(key)
    if hit is not None:
        return hit
    film = read_film(data, name, max_pixels=settings().budget.max_film_pixels, budget=budget)
    gray, d = for_display(film.gray, diagnoser_for(version_path).diagnose(film.gray, name, method, data, film.info))
    cache.put(key, (gray, d), gray.nbytes + (d.heatmap.nbytes if d.heatmap is not None else 0) + 4096)
    return gray, d


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
        # The time it is shown to this user, not the cached result's: the same film shown later or to
        # someone else is a new row with its own time. Never the file name (it often holds the patient's).
        audit_trail().record(dataclasses.replace(d, name=""), source="dashboard", who=who())   # `shown`: now
        recorded.add(key)
    return gray, d


@st.cache_data(show_spinner=False, max_entries=BUDGET.browser_entries, ttl=BUDGET.cache_ttl_s)
def error_overlay(version_path: str, film_path: str, side: int = 384) -> np.ndarray:
    """The Metrics error browser's picture of a test film: its Grad-CAM overlay, <= `side` px (~0.4 MB).

    The map is the Diagnose page's (`Diagnoser.diagnose`): restricted to the same chest mask and on the
    same evidence scale, and `overlay` colours nothing outside it (no tint on the side marker).
    Its own small cache (`browser_entries`, a few pages' worth), so paging through the errors never
    fills the diagnosis cache.
    """
    from pneumo_core.explain.heatmap import overlay
    film = read_film(film_path, max_pixels=settings().budget.max_film_pixels)
    gray, d = for_display(film.gray, diagnoser_for(version_path).diagnose(film.gray, film_path), side)
    return overlay(gray, d.heatmap, 0.4)


@st.cache_data(show_spinner=False, max_entries=64)
def faithfulness(version_path: str, data: bytes, name: str, method: str = "gradcam"):
    """The deletion curve of the film's stored heatmap (cached like `diagnosis`)."""
    gray, d = diagnosis(version_path, data, name, method)
    return diagnoser_for(version_path).faithfulness(gray, d.heatmap, method)
