"""One film in, one explained call out: what the Diagnose page and reports show."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from .cam import BaseCAM, make_cam, to_original_size
from .io import FilmInfo
from .model import PneumoModel
from .ood import WARNING as OOD_WARNING
from .ood import OODDetector, assess

NOTICE = "Decision support, not a diagnosis: a clinician must review every film."


def certainty(probability: float, threshold: float) -> str:
    """How far the call is from the threshold, in words a clinician reads.

    Measured in log-odds, so 0.95 vs a 0.90 threshold counts as close as 0.10 vs 0.18.
    """
    def logit(q):
        q = min(max(q, 1e-6), 1 - 1e-6)
        return np.log(q / (1 - q))

    margin = abs(logit(probability) - logit(threshold))
    if margin < 1.0:
        return "borderline: close to the threshold, a second reading is advised"
    if margin < 2.5:
        return "probable"
    return "clear"


@dataclass
class Diagnosis:
    name: str
    probability: float
    label: str
    threshold: float
    certainty: str
    heatmap: np.ndarray | None   # original film size, values in [0, 1]; None when no method was asked
    method: str | None
    model_id: str
    sha256: str
    when: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    ood_score: float | None = None   # 1.0 = the flag line; None: the model version has no OOD detector
    ood_flag: bool | None = None
    info: FilmInfo | None = None     # format, and for DICOM modality, view and study date

    @property
    def warnings(self) -> list[str]:
        """Cautions that must be shown with the call (never instead of it)."""
        return [OOD_WARNING] if self.ood_flag else []


class Diagnoser:
    """A loaded model with its CAM objects and OOD detector; safe to share between sessions and threads."""

    def __init__(self, model: PneumoModel):
        self.model = model
        self.ood = OODDetector.load(model.path)
        self._cams: dict[str, BaseCAM] = {}
        self._lock = threading.Lock()

    def cam(self, method: str) -> BaseCAM:
        with self._lock:
            if method not in self._cams:
                self._cams[method] = make_cam(self.model.keras, method)
            return self._cams[method]

    def diagnose(self, gray: np.ndarray, name: str = "film", method: str | None = "gradcam",
                 data: bytes | None = None, info: FilmInfo | None = None) -> Diagnosis:
        """Call, probability, certainty, OOD score and (with a `method`) the heatmap of the evidence
        for that call, all from one forward pass."""
        if method is None:
            probability, embeddings = self.model.predict_and_embed([gray])
            heatmap = None
        else:
            maps, probability, embeddings = self.cam(method).explain_and_embed(
                self.model.inputs([gray]), threshold=self.model.threshold)
            heatmap = to_original_size(maps[0], gray.shape)
        p = float(probability[0])
        ((ood_score, ood_flag),) = assess(self.ood, embeddings)
        return Diagnosis(name=name, probability=p, label=self.model.label(p), threshold=self.model.threshold,
                         certainty=certainty(p, self.model.threshold), heatmap=heatmap, method=method,
                         model_id=self.model.id,
                         sha256=hashlib.sha256(data if data is not None else gray.tobytes()).hexdigest(),
                         ood_score=ood_score, ood_flag=ood_flag, info=info)
