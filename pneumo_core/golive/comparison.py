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

from pneumo_core.choices import label_name
from pneumo_core.evaluation.metrics import metrics_at
from pneumo_core.learn.store import read_json, test_predictions


@dataclass
class Comparison:
    active: str
    candidate: str
    n_common: int                      # test films both versions scored
    metrics: pd.DataFrame              # rows: roc_auc, sensitivity, specificity, accuracy, threshold, n; cols: ids
    films: pd.DataFrame                # common films: path, label, p_<id>, call_<id>
    own: dict[str, pd.DataFrame]       # each version's own test predictions (label, probability)
    note: str = ""

    @property
    def disagreements(self) -> pd.DataFrame:
        """Common films on which the two calls differ, the most confident disagreements first."""
        a, c = self.active, self.candidate
        differ = self.films[self.films[f"call_{a}"] != self.films[f"call_{c}"]]
        return differ.assign(gap=(differ[f"p_{a}"] - differ[f"p_{c}"]).abs()).sort_values(
            "gap", ascending=False).drop(columns="gap").reset_index(drop=True)

    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{id: (labels, probabilities)} for `figures.roc_figure`: the common films, else each one's own."""
        if self.n_common:
            y = self.films["label"].to_numpy()
            return {v: (y, self.films[f"p_{v}"].to_numpy()) for v in (self.active, self.candidate)}
        return {v: (f["label"].to_numpy(), f["probability"].to_numpy()) for v, f in self.own.items()}


def _film(path: str) -> str:
    """A film's place in its dataset (SPLIT/CLASS/file): the same film reached by another path matches."""
    return "/".join(Path(path).parts[-3:])


def _metrics(y, p, threshold: float) -> dict:
    m = metrics_at(y, p, threshold)
    auc = roc_auc_score(y, p) if len(set(y)) == 2 else float("nan")
    return {"roc_auc": auc, **{k: m[k] for k in ("sensitivity", "specificity", "accuracy", "threshold", "n")}}


def compare(models_dir: Path, active: str, candidate: str) -> Comparison:
    """Both versions at their own thresholds on the test films both scored, and where they disagree.

    Versions tested on different films (other data, other split) are compared on their own test
    sets instead, with a note saying so.
    """
    models_dir = Path(models_dir)
    versions = (active, candidate)
    thresholds = {v: read_json(models_dir / v, "metadata.json")["threshold"] for v in versions}
    own = {v: test_predictions(models_dir / v)[["path", "label", "probability"]] for v in versions}
    a, c = (own[v].assign(film=own[v]["path"].map(_film)) for v in versions)
    films = a.merge(c.drop(columns="path"), on=["film", "label"], suffixes=(f"_{active}", f"_{candidate}"))
    films = films.rename(columns={f"probability_{v}": f"p_{v}" for v in versions}).drop(columns="film")
    for v in versions:
        films[f"call_{v}"] = (films[f"p_{v}"] >= thresholds[v]).map(label_name)
    if len(films):
        note = "" if len(films) == max(len(a), len(c)) else (
            f"The versions were tested on partly different films; compared on the {len(films)} both scored.")
        rows = {v: _metrics(films["label"], films[f"p_{v}"], thresholds[v]) for v in versions}
    else:
        note = ("The versions share no test film (different data or split): each is shown on its own test set, "
                "so the numbers are not a like-for-like comparison.")
        rows = {v: _metrics(own[v]["label"], own[v]["probability"], thresholds[v]) for v in versions}
    return Comparison(active, candidate, len(films), pd.DataFrame(rows), films.reset_index(drop=True), own, note)
