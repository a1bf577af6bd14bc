"""The prior film: the same patient's earlier scored film beside the current one (issue 24, item 20).

- Who is the same patient: the DICOM PatientID. It is never kept in clear: films are filed under
  `patient_key`, an HMAC-SHA256 of the ID with a secret made once per installation
  (`PNEUMO_HOME/prior.key`, owner-only), so the index cannot be searched by guessing IDs.
- Local history (`PriorIndex`, `PNEUMO_HOME/priors.sqlite`): every DICOM film with a PatientID that
  Diagnose scores is filed with its study date, call, probability, heatmap and a small copy of the film
  (<= 512 px JPEG), so the next film of that patient finds it without the archive. The PACS side (a
  QIDO-RS search on PatientID) is `pneumo_core.pacs.prior`'s: a layer above this one.
- Both heatmaps are on one scale: maps are scaled by evidence (`explain.heatmap.by_evidence`), so two
  films scored by the same model version compare; a prior scored by another version is shown without a
  change word.
- What changed (`compare`): the date gap, the change in probability and a word only where the model's
  measured test-retest spread supports it: "unchanged" when the change is within the spread, "new"
  (prior NORMAL, now PNEUMONIA) or "resolving" (prior PNEUMONIA, now lower) when it is beyond it.
- The test-retest spread (`retest_spread`): the same film re-acquired is not available, so a re-take is
  imitated by training-style augmentation views (`imaging.augment.random_view`: small rotation, shift,
  zoom, gamma, contrast, blur, noise) of the version's test films. For each film, 8 views are scored;
  the spread is the 95th percentile of the absolute difference in probability between two views of the
  same film. Computed once per version and cached in the version folder (`retest_spread.json`).
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np

from pneumo_core.files import private_folder

SPREAD_FILE = "retest_spread.json"
SPREAD_FILMS, SPREAD_VIEWS, SPREAD_QUANTILE = 40, 8, 0.95
FILM_SIDE = 512          # px: the film kept in the local history (enough for a side-by-side view)
WORDS = ("new", "resolving", "unchanged")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS priors (
    patient TEXT NOT NULL, study_date TEXT NOT NULL, sha256 TEXT NOT NULL, model TEXT NOT NULL,
    probability REAL NOT NULL, threshold REAL NOT NULL, label TEXT NOT NULL, heatmap BLOB, film BLOB NOT NULL,
    scored TEXT NOT NULL, PRIMARY KEY (patient, sha256, model));
"""


def patient_id_of(data: bytes) -> str | None:
    """The PatientID of DICOM bytes (header only), or None for other files or an empty ID."""
    from pneumo_core.imaging.dicom import is_dicom
    if not is_dicom(data):
        return None
    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["PatientID"], force=True)
    except Exception:   # noqa: BLE001 - a header we cannot read has no usable patient
        return None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def _secret(home: Path) -> bytes:
    path = private_folder(Path(home)) / "prior.key"
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def patient_key(home: Path, patient_id: str) -> str:
    """The de-identified key of a PatientID in this installation: HMAC-SHA256 with its secret, hex.

    Args:
        home: PNEUMO_HOME (where the secret lives); patient_id: the DICOM PatientID.
    """
    return hmac.new(_secret(home), patient_id.strip().encode(), hashlib.sha256).hexdigest()


def study_day(value: str | None) -> date | None:
    """A DICOM date ('20261206' or '2026-12-06') as a date; None when absent or not a date."""
    text = (value or "").replace("-", "").strip()
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


@dataclass
class ScoredFilm:
    """One scored film of a patient, as the comparison shows it."""
    study_date: date | None
    probability: float
    threshold: float
    label: str
    model: str
    gray: np.ndarray              # the film (display size)
    heatmap: np.ndarray | None    # uint8 at model resolution, scaled by evidence
    source: str = "local history"   # or "archive"


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def _decode(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)


class PriorIndex:
    """The local history of scored films by patient key (SQLite at `home/priors.sqlite`, owner-only folder)."""

    def __init__(self, home: Path):
        self.home = private_folder(Path(home))
        self.path = self.home / "priors.sqlite"
        with closing(sqlite3.connect(self.path)) as db:
            db.executescript(_SCHEMA)

    def remember(self, patient: str, d, gray: np.ndarray) -> None:
        """File a scored film (a `Diagnosis` with its study date in `d.info`) under a patient key."""
        scale = FILM_SIDE / max(gray.shape)
        small = gray if scale >= 1 else cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)),
                                                   interpolation=cv2.INTER_AREA)
        when = study_day(d.info.study_date if d.info else None)
        with closing(sqlite3.connect(self.path)) as db, db:
            db.execute("INSERT OR REPLACE INTO priors VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                patient, when.isoformat() if when else "", d.sha256, d.model_id, float(d.probability),
                float(d.threshold), d.label, None if d.heatmap is None else _png(d.heatmap),
                cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), d.when))

    def earlier(self, patient: str, before: date | None, sha256: str, model: str | None = None) -> ScoredFilm | None:
        """The patient's latest film dated before `before` (another film than `sha256`); that of `model`
        when there is one, else of any version. None when the patient has no earlier film here."""
        if before is None:
            return None
        with closing(sqlite3.connect(self.path)) as db:
            rows = db.execute("SELECT study_date, probability, threshold, label, model, film, heatmap FROM priors "
                              "WHERE patient = ? AND sha256 != ? AND study_date != '' AND study_date < ? "
                              "ORDER BY study_date DESC, model = ? DESC LIMIT 1",
                              (patient, sha256, before.isoformat(), model or "")).fetchall()
        if not rows:
            return None
        when, probability, threshold, label, version, film, heatmap = rows[0]
        return ScoredFilm(date.fromisoformat(when), probability, threshold, label, version, _decode(film),
                          _decode(heatmap))


@dataclass(frozen=True)
class Comparison:
    """The current film against the prior: gap, change and (where the spread supports it) a word."""
    days: int | None
    change: float                 # current probability minus the prior's
    spread: float | None          # the model's test-retest spread (probability); None: not measured
    word: str | None              # 'new', 'resolving', 'unchanged' or None
    same_model: bool

    def sentence(self) -> str:
        """E.g. 'Prior film 42 days earlier · probability +0.35 (test-retest spread 0.08): new'."""
        gap = "date of the prior not given" if self.days is None else f"{self.days} days earlier"
        if not self.same_model:
            return f"Prior film {gap}, scored by another model version: change not assessed"
        if self.spread is None:
            tail = " (test-retest spread not measured, so no word)"
        else:
            tail = f" (test-retest spread ±{self.spread:.2f})" + (f": {self.word}" if self.word else "")
        return f"Prior film {gap} · change in probability {self.change:+.2f}{tail}"


def compare(prior: ScoredFilm, current_probability: float, current_label: str, current_date: date | None,
            model: str, spread: float | None) -> Comparison:
    """How the current call differs from the prior one.

    Args:
        prior: the earlier film; current_*: this film's probability, call and study date.
        model: the version that scored this film; spread: its test-retest spread (None: not measured).
    Returns:
        A Comparison whose word is 'unchanged' when |change| <= spread, 'new' when the probability rose by
        more than the spread from a NORMAL call to a PNEUMONIA one, 'resolving' when it fell by more than the
        spread from a PNEUMONIA call; otherwise (or without a spread, or across versions) None.
    """
    days = (current_date - prior.study_date).days if current_date and prior.study_date else None
    change = float(current_probability) - float(prior.probability)
    same = prior.model == model
    word = None
    if same and spread is not None:
        if abs(change) <= spread:
            word = "unchanged"
        elif change > 0 and prior.label == "NORMAL" and current_label == "PNEUMONIA":
            word = "new"
        elif change < 0 and prior.label == "PNEUMONIA":
            word = "resolving"
    return Comparison(days, change, spread, word, same)


def retest_spread(model, films_limit: int = SPREAD_FILMS, views: int = SPREAD_VIEWS) -> float | None:
    """The version's test-retest spread of the probability, measured once and cached (see the module docstring).

    Args:
        model: a loaded `learn.model.PneumoModel` (its folder holds predictions.csv and the cache).
        films_limit: test films used; views: augmentation views per film.
    Returns:
        The 95th percentile of |p(view a) - p(view b)| over pairs of views of the same film, or None when the
        version's test films cannot be read here.
    """
    cache = Path(model.path) / SPREAD_FILE
    if cache.exists():
        return float(json.loads(cache.read_text())["spread"])
    import pandas as pd

    from pneumo_core.imaging.films import read_film
    from pneumo_core.learn.model import tta_inputs
    table = Path(model.path) / "predictions.csv"
    if not table.exists():
        return None
    rows = pd.read_csv(table)
    rows = rows[rows["split"] == "test"] if (rows["split"] == "test").any() else rows
    differences, used = [], 0
    for path in rows["path"]:
        if used >= films_limit:
            break
        try:
            gray = read_film(path).gray
        except Exception:   # noqa: BLE001 - a test film moved or unreadable here: skip it
            continue
        inputs = tta_inputs(gray, model.image_size, model.normalisation, views, seed=used)[1:]
        p = model.predict_inputs(inputs)
        differences += [abs(a - b) for a, b in combinations(p.tolist(), 2)]
        used += 1
    if not used:
        return None
    spread = float(np.quantile(differences, SPREAD_QUANTILE))
    partial = cache.with_suffix(".tmp")   # whole files only: a reader never sees half a cache
    partial.write_text(json.dumps({"spread": spread, "films": used, "views": views, "quantile": SPREAD_QUANTILE,
                                 "method": "augmentation views (imaging.augment.random_view) of test films; "
                                           "quantile of |p(a) - p(b)| over pairs of views of one film"}, indent=1))
    partial.replace(cache)
    return spread
