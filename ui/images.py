"""Pictures for the screen: display-sized copies, JPEG and thumbnail encodings, each made once per session."""
from __future__ import annotations

import base64
import dataclasses

import cv2
import numpy as np
import streamlit as st

from ui.loaders import BUDGET

DISPLAY_SIDE = 800   # px: a film column is at most ~600 px wide; more only costs encoding time on every rerun


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


def thumbnail_uri(gray: np.ndarray, size: int = 96) -> str:
    """A small PNG data URI for tables."""
    scale = size / max(gray.shape)
    small = cv2.resize(gray, (max(1, int(gray.shape[1] * scale)), max(1, int(gray.shape[0] * scale))))
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", small)[1].tobytes()).decode()


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Gray or RGB uint8 -> JPEG bytes (for the screen: ~5x faster to encode than PNG at 800 px)."""
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _session_cache(name: str, key: str, make):
    """A per-session memo (film key -> small display data), so a rerun re-encodes nothing it has shown."""
    memo = st.session_state.setdefault(name, {})
    if key not in memo:
        memo[key] = make()
    return memo[key]


def display_film(key: str, gray: np.ndarray) -> np.ndarray:
    """The film shrunk for the screen (longer side DISPLAY_SIDE), computed once per session."""
    from pneumo_core.explain.heatmap import for_display as shrink
    return _session_cache("_display_films", key, lambda: shrink(gray, DISPLAY_SIDE))


def film_jpeg(key: str, gray: np.ndarray) -> bytes:
    """The plain film for st.image, encoded once per session."""
    return _session_cache("_film_jpegs", key, lambda: jpeg(display_film(key, gray)))


def film_thumbnail(key: str, gray: np.ndarray) -> str:
    """`thumbnail_uri` of a film, made once per session."""
    return _session_cache("_thumbnails", key, lambda: thumbnail_uri(gray))
