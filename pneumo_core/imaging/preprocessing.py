"""From a grayscale image to the model's input: resize, intensity normalisation, three channels.

Intensity normalisation is what makes a model travel between hospitals: exposure, windowing and
detector response differ between acquisition batches, and a classifier happily learns them.
Histogram equalisation maps every image to the same grey-level distribution, so any monotonic
change of intensities (gamma, brightness, contrast, a different window) leaves the input unchanged.
"""
from __future__ import annotations

import cv2
import numpy as np

from pneumo_core.choices import NORMALISATIONS
from pneumo_core.errors import ConfigError


def normalise_intensity(gray: np.ndarray, method: str = "equalize") -> np.ndarray:
    """Grey levels that no longer depend on exposure or windowing.

    Args:
        gray: (H, W) uint8 film; method: one of choices.NORMALISATIONS.
    Returns:
        (H, W) uint8.
    """
    if method == "equalize":
        return cv2.equalizeHist(gray)
    if method == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
    if method == "stretch":
        low, high = np.percentile(gray, (1, 99))
        scaled = (gray.astype(np.float32) - low) * (255.0 / max(high - low, 1.0))
        return np.clip(scaled, 0, 255).astype(np.uint8)
    if method == "none":
        return gray
    raise ConfigError(f"unknown intensity normalisation {method!r}; choose one of {', '.join(NORMALISATIONS)}")


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Squash the whole image to size x size (no crop, so a heatmap maps back by a plain resize).

    Args:
        gray: (H, W) uint8; size: the side S.
    Returns:
        (S, S) uint8.
    """
    if gray.shape == (size, size):
        return gray
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def to_model_input(gray: np.ndarray, normalisation: str) -> np.ndarray:
    """A resized (S, S) uint8 gray image -> (S, S, 3) float32 in 0..255, what every model takes."""
    normalised = normalise_intensity(gray, normalisation)
    return np.repeat(normalised[:, :, None], 3, axis=2).astype(np.float32)


def prepare(gray: np.ndarray, size: int, normalisation: str) -> np.ndarray:
    """Original grayscale film -> model input.

    Args:
        gray: (H, W) uint8 film of any size; size: the model's input side S; normalisation: see normalise_intensity.
    Returns:
        (S, S, 3) float32 in 0..255.
    """
    return to_model_input(resize(gray, size), normalisation)
