"""A one-page report per film (PNG or PDF): film, overlay, call, probability, threshold, model,
date, the model's test-set sensitivity/specificity, and the decision-support notice."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .cam import overlay
from .diagnosis import NOTICE, Diagnosis

PAGE_WIDTH, PANEL = 1240, 560


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _panel(rgb: np.ndarray) -> Image.Image:
    h, w = rgb.shape[:2]
    scale = PANEL / max(h, w)
    resized = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    canvas = Image.new("RGB", (PANEL, PANEL), "white")
    canvas.paste(Image.fromarray(resized), ((PANEL - resized.shape[1]) // 2, (PANEL - resized.shape[0]) // 2))
    return canvas


def report_page(gray: np.ndarray, diagnosis: Diagnosis, test_metrics: dict | None = None,
                alpha: float = 0.4) -> Image.Image:
    """The report as an image."""
    page = Image.new("RGB", (PAGE_WIDTH, 1080), "white")
    draw = ImageDraw.Draw(page)
    draw.rectangle([0, 0, PAGE_WIDTH, 70], fill="#2a6f97")
    draw.text((40, 20), "Pneumo — chest X-ray report", fill="white", font=_font(30))
    film = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    page.paste(_panel(film), (40, 100))
    page.paste(_panel(overlay(gray, diagnosis.heatmap, alpha)), (PAGE_WIDTH - 40 - PANEL, 100))
    draw.text((40, 670), "Film", fill="#555", font=_font(18))
    draw.text((PAGE_WIDTH - 40 - PANEL, 670), f"Heatmap ({diagnosis.method})", fill="#555", font=_font(18))
    colour = "#c44536" if diagnosis.label == "PNEUMONIA" else "#2d6a4f"
    draw.text((40, 710), f"Call: {diagnosis.label}", fill=colour, font=_font(34))
    lines = [f"Probability of pneumonia: {diagnosis.probability:.3f} (threshold {diagnosis.threshold:.3f}); "
             f"{diagnosis.certainty}",
             # Never the file name: exports often carry the patient's name or record number.
             f"Model version: {diagnosis.model_id}    Date: {diagnosis.when}    Film SHA-256: {diagnosis.sha256[:16]}"]
    if diagnosis.info is not None or diagnosis.ood_score is not None:
        lines.append("    ".join(filter(None, [
            f"Source: {diagnosis.info.summary()}" if diagnosis.info else "",
            f"Out-of-distribution score: {diagnosis.ood_score:.2f} (flagged above 1.00)"
            if diagnosis.ood_score is not None else ""])))
    if test_metrics:
        lines.append(f"Model track record on its test split: sensitivity {test_metrics['sensitivity']:.3f}, "
                     f"specificity {test_metrics['specificity']:.3f}, ROC-AUC {test_metrics['roc_auc']:.3f} "
                     f"(n = {test_metrics['n']})")
    for i, line in enumerate(lines):
        draw.text((40, 770 + 34 * i), line, fill="#222", font=_font(20))
    for i, caution in enumerate(diagnosis.warnings):  # a report never carries the call without its caution
        draw.text((40, 770 + 34 * (len(lines) + i)), "Caution: " + caution, fill="#c44536", font=_font(20))
    draw.rectangle([40, 980, PAGE_WIDTH - 40, 1040], outline="#c44536", width=3)
    draw.text((60, 995), NOTICE, fill="#c44536", font=_font(22))
    return page


def report_bytes(page: Image.Image, fmt: str = "PNG") -> bytes:
    """Encode a report page as PNG or PDF bytes."""
    buffer = io.BytesIO()
    page.save(buffer, format=fmt.upper(), **({"resolution": 150.0} if fmt.upper() == "PDF" else {}))
    return buffer.getvalue()
