"""The one-page report: the film and its heatmap side by side, the call in its colour, cautions never
dropped, PNG and PDF. Compared page against page, so the test holds whatever the exact layout."""
import numpy as np
import pytest

from pneumo_core.diagnosis import Diagnosis
from pneumo_core.report import report_bytes, report_page

RED, GREEN = (196, 69, 54), (45, 106, 79)   # the PNEUMONIA and NORMAL colours (#c44536, #2d6a4f)


def diagnosis(label="PNEUMONIA", flagged=False, heat=0.0, shape=(90, 120)) -> Diagnosis:
    return Diagnosis(name="film.png", probability=0.9 if label == "PNEUMONIA" else 0.1, label=label,
                     threshold=0.5, certainty="clear", heatmap=np.full(shape, heat, np.float32), method="gradcam",
                     model_id="v1", sha256="0" * 64, ood_score=1.5 if flagged else 0.5, ood_flag=flagged)


def page(gray=None, **kwargs) -> np.ndarray:
    gray = np.full((90, 120), 100, np.uint8) if gray is None else gray
    return np.asarray(report_page(gray, diagnosis(**kwargs)))


def pixels_of(image: np.ndarray, colour) -> int:
    return int((np.abs(image.astype(int) - colour).max(axis=2) <= 10).sum())


@pytest.fixture(scope="module")
def pneumonia():
    return page()


def test_a_page_is_an_rgb_image_with_the_film_on_it(pneumonia):
    assert pneumonia.shape[2] == 3 and pneumonia.shape[1] >= 1000
    dark = page(np.zeros((90, 120), np.uint8))
    assert (dark != pneumonia).any(axis=2).sum() > 50_000          # a film panel: large, so readable


def test_the_heatmap_changes_only_the_overlay_panel(pneumonia):
    hot = page(heat=1.0)
    changed = np.nonzero((hot != pneumonia).any(axis=2))
    half = pneumonia.shape[1] // 2
    assert changed[1].size > 50_000 and changed[1].min() >= half   # the right-hand panel, not the film


def test_the_call_has_its_colour(pneumonia):
    normal = page(label="NORMAL")
    assert pixels_of(normal, GREEN) > 100 and pixels_of(pneumonia, GREEN) == 0
    assert pixels_of(pneumonia, RED) > pixels_of(normal, RED)


def test_a_flagged_film_carries_its_caution(pneumonia):
    assert pixels_of(page(flagged=True), RED) > pixels_of(pneumonia, RED) + 100


def test_png_and_pdf(pneumonia):
    image = report_page(np.full((90, 120), 100, np.uint8), diagnosis())
    assert report_bytes(image).startswith(b"\x89PNG") and report_bytes(image, "pdf").startswith(b"%PDF")
