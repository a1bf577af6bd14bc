"""One film in, one explained call out: what the Diagnose page and reports show."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from .cam import BaseCAM, make_cam, to_original_size
from .model import PneumoModel

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
    heatmap: np.ndarray          # original film size, values in [0, 1]
    method: str
    model_id: str
    sha256: str
    when: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class Diagnoser:
    """A loaded model with its CAM objects; safe to share between dashboard sessions."""

    def __init__(self, model: PneumoModel):
        self.model = model
        self._cams: dict[str, BaseCAM] = {}
        self._lock = threading.Lock()

    def cam(self, method: str) -> BaseCAM:
        with self._lock:
            if method not in self._cams:
                self._cams[method] = make_cam(self.model.keras, method)
            return self._cams[method]

    def diagnose(self, gray: np.ndarray, name: str = "film", method: str = "gradcam",
                 data: bytes | None = None) -> Diagnosis:
        """Call, probability, certainty and heatmap of the evidence for that call (one forward pass)."""
        maps, probability = self.cam(method).explain(self.model.inputs([gray]), threshold=self.model.threshold)
        p = float(probability[0])
        return Diagnosis(name=name, probability=p, label=self.model.label(p), threshold=self.model.threshold,
                         certainty=certainty(p, self.model.threshold),
                         heatmap=to_original_size(maps[0], gray.shape), method=method, model_id=self.model.id,
                         sha256=hashlib.sha256(data if data is not None else gray.tobytes()).hexdigest())
