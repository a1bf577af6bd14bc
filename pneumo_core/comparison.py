"""Candidate vs active: the evidence someone needs before promoting a new model version.

Both versions are compared on the films they were both tested on (their stored test predictions,
joined by file), each at its own operating threshold, so the numbers are about the same patients.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from .data import CLASSES
from .evaluation import metrics_at
from .registry import read_json, test_predictions


@dataclass
class Comparison:
    active: str
    candidate: str
    n_common: int                      # test films both versions scored
    metrics: pd.DataFrame              # rows: roc_auc, sensitivity, specificity, accuracy, threshold; cols: ids
    films: pd.DataFrame                # path, label, p_<id>, call_<id> for every common film
    note: str = ""

    @property
    def disagreements(self) -> pd.DataFrame:
        """Films on which the two calls differ, the most confident disagreements first."""
        a, c = self.active, self.candidate
        differ = self.films[self.films[f"call_{a}"] != self.films[f"call_{c}"]]
        return differ.assign(gap=(differ[f"p_{a}"] - differ[f"p_{c}"]).abs()).sort_values(
            "gap", ascending=False).drop(columns="gap").reset_index(drop=True)

    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{id: (labels, probabilities)} on the common films, for `figures.roc_figure`."""
        y = self.films["label"].to_numpy()
        return {v: (y, self.films[f"p_{v}"].to_numpy()) for v in (self.active, self.candidate)}


def compare(models_dir: Path, active: str, candidate: str) -> Comparison:
    """Metrics of both versions at their own thresholds on their common test films, and where they disagree."""
    models_dir = Path(models_dir)
    thresholds = {v: read_json(models_dir / v, "metadata.json")["threshold"] for v in (active, candidate)}
    a, c = (test_predictions(models_dir / v)[["path", "label", "probability"]] for v in (active, candidate))
    films = a.merge(c, on=["path", "label"], suffixes=(f"_{active}", f"_{candidate}"))
    films = films.rename(columns={f"probability_{v}": f"p_{v}" for v in (active, candidate)})
    note = ""
    if len(films) < max(len(a), len(c)):
        note = (f"The versions were tested on different films (data or split changed); compared on the "
                f"{len(films)} films both scored.")
    rows = {}
    for v in (active, candidate):
        films[f"call_{v}"] = np.where(films[f"p_{v}"] >= thresholds[v], CLASSES[1], CLASSES[0])
        m = metrics_at(films["label"], films[f"p_{v}"], thresholds[v])
        both_classes = films["label"].nunique() == 2
        rows[v] = {"roc_auc": roc_auc_score(films["label"], films[f"p_{v}"]) if both_classes else float("nan"),
                   **{k: m[k] for k in ("sensitivity", "specificity", "accuracy", "threshold")}}
    return Comparison(active, candidate, len(films), pd.DataFrame(rows), films.reset_index(drop=True), note)
