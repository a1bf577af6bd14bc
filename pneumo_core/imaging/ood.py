"""Out-of-distribution score: how unlike the training films is this film, to the backbone?

A film's pooled backbone embedding is compared with the training films' embeddings by the
Mahalanobis distance under a Ledoit-Wolf shrunk covariance (1280 dimensions from a few thousand
films: the plain sample covariance is singular, shrinkage makes it invertible and stable). The
flag line is the 95th percentile of the validation films' distances (`method="higher"`), so at
most 5 % of validation films are flagged. The score is reported relative to that line: 1.0 is
the line, above it the film is flagged. The flag never hides the call; it travels with it.
"""
from __future__ import annotations

import io as _io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_FILE = "ood.npz"
QUANTILE = 0.95
WARNING = ("This image differs from the children's X-rays the model learned from: "
           "treat the result with caution.")


@dataclass
class OODDetector:
    mean: np.ndarray          # (D,)
    precision: np.ndarray     # (D, D), inverse of the shrunk covariance
    threshold: float          # distance at the flag line
    fitted: dict              # what it was fitted and calibrated on, for the model card

    @classmethod
    def fit(cls, train: np.ndarray, val: np.ndarray, quantile: float = QUANTILE) -> OODDetector:
        """Fit on (N, D) training embeddings; put the flag line at the `quantile` of the (M, D) validation ones."""
        from sklearn.covariance import LedoitWolf
        # store_precision=False: scikit-learn would invert by eigendecomposition (pinvh), 5-10x the CPU of
        # the Cholesky inverse below on a busy 2-core machine (6.4 vs 0.65 s at 1280 dimensions).
        estimator = LedoitWolf(store_precision=False, assume_centered=False).fit(np.asarray(train, np.float64))
        precision = _spd_inverse(estimator.covariance_)
        detector = cls(estimator.location_.astype(np.float32), precision.astype(np.float32), 1.0, {})
        distances = detector.distance(val)
        detector.threshold = float(np.quantile(distances, quantile, method="higher"))
        detector.fitted = {"method": "mahalanobis (Ledoit-Wolf shrinkage) on pooled backbone features",
                           "train": int(len(train)), "val": int(len(val)), "quantile": quantile,
                           "shrinkage": float(estimator.shrinkage_),
                           "val_flagged": float(np.mean(distances > detector.threshold))}
        return detector

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `features` (N, D) from the training mean."""
        centred = np.atleast_2d(np.asarray(features, np.float32)) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, self.precision, centred), 0))

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N,) distances of (N, D) embeddings relative to the flag line (above 1.0: unlike the training films)."""
        return self.distance(features) / self.threshold

    def save(self, path: Path) -> None:
        buffer = _io.BytesIO()
        np.savez(buffer, mean=self.mean, precision=self.precision, threshold=self.threshold,
                 fitted=json.dumps(self.fitted))
        Path(path).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, version_dir: Path | None) -> OODDetector | None:
        """The detector saved with a model version, or None for versions made before it existed."""
        path = Path(version_dir) / OOD_FILE if version_dir else None
        if path is None or not path.is_file():
            return None
        with np.load(path) as f:
            return cls(f["mean"], f["precision"], float(f["threshold"]), json.loads(str(f["fitted"])))


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix by its Cholesky factor; the pseudo-inverse if it is
    singular (a shrunk covariance is singular only when every training embedding is the same)."""
    from scipy import linalg
    try:
        factor = linalg.cho_factor(matrix, lower=True, check_finite=False)
    except linalg.LinAlgError:
        return linalg.pinvh(matrix, check_finite=False)
    return linalg.cho_solve(factor, np.eye(len(matrix)), check_finite=False)


def assess(detector: OODDetector | None, features: np.ndarray) -> list[tuple[float | None, bool | None]]:
    """(score, flag) per film; (None, None) when the model version has no detector."""
    if detector is None:
        return [(None, None)] * len(features)
    return [(float(s), bool(s > 1.0)) for s in detector.score(features)]
