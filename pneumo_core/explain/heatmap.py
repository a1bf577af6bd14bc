"""Heatmaps as a clinician sees them: restricted to the chest, stored small, drawn with a scale.

No TensorFlow here (the pages import this before the model has loaded).

Restriction to the chest (`chest_mask`), on the film squashed to the model's input size, the
way the model saw it:

1. Body outline: Otsu's threshold splits the (lightly blurred) film into body and background
   air; the largest connected bright component is the body, and its convex hull closes the dark
   lungs and the concavities of the chest wall into one region. A film with no clear background
   (the body fills the frame, as in most paediatric exports) keeps the whole frame.
2. Lower cutoff (the diaphragm): the lung fields are the dark pixels inside that outline (a
   second Otsu threshold, inside the body only, away from its blurred edge), counted over the
   central columns (flank air at the edges is left out). The cutoff is the row above which 99.5 %
   of them lie, plus a margin of 5 % of the height, kept between 45 % and 92 % of the height (an
   anatomical prior: a frontal film never has its diaphragm above the upper 45 % or at the very
   bottom). It was 97 % plus 4 %, which cut the lung bases of adult films: their bases, overlapped
   by the breasts and the posterior recesses, are barely darker than the abdomen, so the last 3 %
   of the lung fields were the bases themselves (issue 24).

   Measured by `bench/chest_mask.py` (share of the lung area inside the mask, at 224 px): six
   paediatric films of the shared data with hand-outlined lungs (tests/fixtures/lung_outlines.json),
   min 98.5 %, mean 99.6 %; 20 synthetic adult-like films with exact lungs (tests/helpers.py
   `adult_chest_film`; no outlined adult film was available), min 99.7 %, mean 99.9 % (97 % plus 4 %:
   min 96.1 %). Tests keep both >= 95 %, and the synthetic diaphragms at 45, 55 and 70 % are cut.

The mediastinum (and a tube over it) is not masked: a lung mask made of dark pixels would also
drop consolidation, which is bright, i.e. the very evidence for pneumonia.

Everything outside the outline or below the cutoff is set to zero and the rest is rescaled so
that its strongest point is 1 (`restrict`): the map says *where* the evidence is, inside the chest only.

Scale by evidence (`by_evidence`): *how much* evidence the film holds is the call's log-odds distance
from the model's threshold, so the restricted map is multiplied by `evidence_weight` (0 at
EVIDENCE_SPAN log-odds or more below the threshold, 0.5 at it, 1 at EVIDENCE_SPAN above). Stored maps
of one model are then on one scale: a prior film's and the current film's colours compare, and a film
called clearly NORMAL (p < 0.01 is 4.6 log-odds below a 0.5 threshold) is drawn nearly blue. The outline
(`top_region`) is drawn only where the weighted map reaches OUTLINE_FLOOR: a film 2.5 log-odds or more
below its threshold (the 'clear' NORMAL calls) has no region. Per-film scaling to the film's own peak
drew a region on every film, including NORMAL films at p < 0.01 (issue 24).
"""
from __future__ import annotations

import cv2
import numpy as np

LOWER_LIMITS = (0.45, 0.92)   # the diaphragm cutoff is kept between these fractions of the height
LUNG_SHARE = 0.995            # share of lung-field pixels above the cutoff
MARGIN = 0.05                 # added below the lung fields (costophrenic angles are faint)
TOP_REGION = 0.6              # 'top region' outline: where the evidence is >= 60 % of its peak
EVIDENCE_SPAN = 5.0           # log-odds from the threshold to no evidence (weight 0) and to full (weight 1)
# Weight of a call 2.5 log-odds below the threshold (serve.diagnosis.CLEAR: a 'clear' NORMAL call):
# nothing weaker is outlined.
OUTLINE_FLOOR = 0.5 - 2.5 / (2 * EVIDENCE_SPAN)
SCALE_TEXT = ("No colour: no evidence (or outside the chest) · blue: weak · red: strong evidence for pneumonia "
              "(a call 5 log-odds above the threshold); "
              "one scale for every film of this model, so films compare.")
NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}


def display_name(method: str | None) -> str:
    """'Grad-CAM' for 'gradcam' (and so on); the method itself when unknown."""
    return NAMES.get(method or "", method or "")


def _otsu(values: np.ndarray) -> float:
    threshold, _ = cv2.threshold(values.reshape(-1, 1).astype(np.uint8), 0, 255,
                                 cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(threshold)


def body_outline(small: np.ndarray) -> np.ndarray:
    """Boolean mask of the body (convex hull of the largest bright component) of a small film."""
    blurred = cv2.GaussianBlur(small, (5, 5), 0)
    bright = (blurred > _otsu(blurred)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if count < 2:
        return np.ones(small.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    points = cv2.findNonZero((labels == largest).astype(np.uint8))
    hull = np.zeros(small.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
    if hull.mean() < 0.15:  # a speck, not a body: keep the frame rather than hide the evidence
        return np.ones(small.shape, bool)
    return hull.astype(bool)


def diaphragm_row(small: np.ndarray, body: np.ndarray) -> int:
    """Row index of the lower cutoff (see the module docstring)."""
    height, width = small.shape
    low, high = int(LOWER_LIMITS[0] * height), int(LOWER_LIMITS[1] * height)
    inside = small[body]
    if inside.size < 16:
        return high
    # Inside the outline only, away from its edge (blurred edges are dark too).
    edge = max(3, height // 20) | 1
    core = cv2.erode(body.astype(np.uint8), np.ones((edge, edge), np.uint8)).astype(bool)
    dark = core & (cv2.GaussianBlur(small, (5, 5), 0) < _otsu(inside))
    columns = np.flatnonzero(body.any(axis=0))
    left, right = columns[0], columns[-1]
    trim = (right - left) // 10
    dark[:, : left + trim] = False
    dark[:, right - trim + 1:] = False
    per_row = dark.sum(axis=1)
    if per_row.sum() == 0:
        return high
    row = int(np.searchsorted(np.cumsum(per_row) / per_row.sum(), LUNG_SHARE)) + int(MARGIN * height)
    return int(np.clip(row, low, high))


def chest_mask(gray: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32 mask, 1 inside the chest and 0 outside the body or below the diaphragm.

    Args:
        gray: the film (any size, uint8), squashed to size x size as the model sees it.
        size: the model's input size (the heatmap's resolution).
    """
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    small = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    body = body_outline(small)
    mask = body.copy()
    mask[diaphragm_row(small, body) + 1:, :] = False
    return mask.astype(np.float32)


def restrict(heatmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The heatmap ([0, 1]) inside the mask, rescaled so that its peak there is 1 (all zero if none)."""
    inside = heatmap * mask
    peak = float(inside.max())
    return inside / peak if peak > 0 else inside


def _logit(q: float) -> float:
    q = min(max(float(q), 1e-6), 1 - 1e-6)
    return float(np.log(q / (1 - q)))


def evidence_weight(probability: float, threshold: float) -> float:
    """How much evidence for pneumonia a film holds, 0..1: its log-odds distance from the threshold mapped
    linearly from -EVIDENCE_SPAN (0) through the threshold (0.5) to +EVIDENCE_SPAN (1).

    Args:
        probability: the film's probability of PNEUMONIA; threshold: the model's operating point.
    Returns:
        The weight, e.g. 0.0 for p = 0.003 at a 0.5 threshold, 0.5 at the threshold, 1.0 for p = 0.999.
    """
    margin = _logit(probability) - _logit(threshold)
    return float(np.clip(0.5 + margin / (2 * EVIDENCE_SPAN), 0.0, 1.0))


def by_evidence(heatmap: np.ndarray, probability: float, threshold: float) -> np.ndarray:
    """A restricted map ([0, 1], peak 1) scaled by the film's `evidence_weight`: one scale for every film
    of a model, so a film with no evidence shows none (see the module docstring)."""
    return (as_float(heatmap) * evidence_weight(probability, threshold)).astype(np.float32)


def to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 0..255: a 224 x 224 map is 50 kB, the film-size float32 was ~200 MB at 7000 px."""
    return np.round(np.clip(heatmap, 0, 1) * 255).astype(np.uint8)


def as_float(heatmap: np.ndarray) -> np.ndarray:
    """A stored heatmap (uint8 0..255 or float [0, 1]) as float32 [0, 1]."""
    if heatmap.dtype == np.uint8:
        return heatmap.astype(np.float32) / 255.0
    return np.clip(heatmap, 0, 1).astype(np.float32)


def to_original_size(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Stretch a square map back over a film of `shape` (the model saw the whole film squashed)."""
    return cv2.resize(as_float(heatmap), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR).clip(0, 1)


def for_display(gray: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """The film shrunk so that its longer side is at most `max_side` (screens and reports need no more)."""
    scale = max_side / max(gray.shape)
    if scale >= 1:
        return gray
    return cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


def top_region(heatmap: np.ndarray, level: float = TOP_REGION, floor: float = OUTLINE_FLOOR) -> np.ndarray:
    """Boolean mask of where the evidence is at least `level` of its peak and at least `floor` (a map
    scaled `by_evidence` whose peak is under `floor` has no top region: the film holds no evidence)."""
    values = as_float(heatmap)
    peak = float(values.max())
    if peak <= 0 or peak < floor:
        return np.zeros(values.shape, bool)
    return values >= max(level * peak, floor)


def overlay(gray: np.ndarray, heatmap: np.ndarray | None, alpha: float = 0.4, outline_only: bool = False) -> np.ndarray:
    """RGB uint8 film with the heatmap blended on top where it is above zero (JET: blue = weak, red = strong).

    Args:
        gray: the film, uint8 (the heatmap is stretched to its size).
        heatmap: uint8 or [0, 1] float map of any size; None gives the plain film.
        alpha: opacity of the colours (0..1).
        outline_only: draw only the outline of the top region (`top_region`), no colours.
    """
    film = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    if heatmap is None:
        return film
    values = to_original_size(heatmap, gray.shape)
    if outline_only:
        contours, _ = cv2.findContours(top_region(values).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        thickness = max(2, round(max(gray.shape) / 300))
        return cv2.drawContours(film.copy(), contours, -1, (255, 215, 0), thickness)
    colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * values), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(colour, float(alpha), film, 1 - float(alpha), 0)
    # Colours only where the map holds evidence: outside the chest mask (zero) the film stays as it is,
    # so no surface tints the side marker or the air beside the body (issue 24, item 10). cv2.copyTo, not
    # np.where: the same pixels, 0.6 instead of 10 ms for a 768x640 capture (measured).
    return cv2.copyTo(blended, (values > 0).astype(np.uint8), film)


def colour_bar(width: int = 512, height: int = 18) -> np.ndarray:
    """RGB uint8 strip of the heatmap colours, from no evidence (left) to the strongest (right)."""
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    return cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
