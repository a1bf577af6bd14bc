"""Films with a reader's verdict become the site's labelled set: kept de-identified, adapted from.

When a reader records a verdict (`review`), the film's pixels are kept as
`PNEUMO_HOME/reviewed/<read>/<sha256>.png`: a PNG of the decoded grey film (no DICOM header, no
file name, nothing that names the patient; the name is the content hash of the film as received,
the same hash the audit trail holds). A later verdict moves the film to its new read's folder; a
not-assessable read removes it (no label to learn from). The folder is a site folder
(`NORMAL/`, `PNEUMONIA/`), so `site adapt --reviewed` is `sites.adapt` on it.

Retention: `Settings.reviewed_retention_days` (PNEUMO_REVIEWED_RETENTION_DAYS, default 365; 0 keeps
nothing). Older films are deleted each time a film is kept, and on demand with
`python -m pneumo_core reviewed delete --older-than DAYS | --film SHA256`. The verdicts themselves
stay in the audit trail (which holds no pixels).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from pneumo_core.errors import PneumoError
from pneumo_core.records.verdicts import Verdict, record_verdict

LABELS = ("NORMAL", "PNEUMONIA")
SITE_NAME = "reviewed"


def review(settings, trail, actor, gray: np.ndarray, diagnosis_id: int, read: str, zones=(), note: str = "",
           source: str = "dashboard") -> Verdict:
    """Record a reader's verdict (`verdicts.record_verdict`) and keep the film for adaptation.

    Args:
        settings: Settings (PNEUMO_HOME, retention); trail: the AuditTrail; actor: the reader.
        gray: the decoded film (2-D uint8), the pixels kept; diagnosis_id: the audit row judged.
        read, zones, note, source: as `record_verdict`.
    Returns:
        The recorded Verdict.
    """
    verdict = record_verdict(trail, actor, diagnosis_id, read, zones, note, source)
    keep_film(settings, gray, verdict.sha256, verdict.read)
    return verdict


def keep_film(settings, gray: np.ndarray, sha256: str, read: str) -> Path | None:
    """Store the film under its read's folder (moving it from another one), then apply the retention.

    Returns:
        The PNG's path, or None when nothing is kept (not-assessable read, or retention 0).
    """
    _check_sha(sha256)
    for path in _copies(settings, sha256):
        path.unlink(missing_ok=True)
    if read not in LABELS or settings.reviewed_retention_days <= 0:
        return None
    folder = settings.reviewed_dir / read
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{sha256}.png"
    pixels = np.asarray(gray)
    if pixels.ndim != 2:
        raise PneumoError(f"a reviewed film must be a grey 2-D image, got shape {pixels.shape}")
    ok, encoded = cv2.imencode(".png", pixels.astype(np.uint8))
    if not ok:
        raise PneumoError(f"could not encode film {sha256[:12]}… as PNG")
    partial = target.with_suffix(".part")
    partial.write_bytes(encoded.tobytes())
    os.replace(partial, target)   # never a half-written film in the labelled set
    delete(settings, older_than_days=settings.reviewed_retention_days)
    return target


def reviewed_films(settings) -> list[dict]:
    """The kept films: [{"sha256", "label", "path", "kept" (epoch seconds)}], oldest first."""
    films = []
    for label in LABELS:
        folder = settings.reviewed_dir / label
        for path in folder.glob("*.png") if folder.is_dir() else ():
            films.append({"sha256": path.stem, "label": label, "path": path, "kept": path.stat().st_mtime})
    return sorted(films, key=lambda f: f["kept"])


def counts(settings) -> dict[str, int]:
    """{"NORMAL": n, "PNEUMONIA": n} of the kept films."""
    films = reviewed_films(settings)
    return {label: sum(f["label"] == label for f in films) for label in LABELS}


def delete(settings, older_than_days: float | None = None, sha256: str | None = None,
           now: float | None = None) -> list[str]:
    """Delete kept films kept more than `older_than_days` ago, or the film `sha256`.

    Returns:
        The content hashes deleted.
    """
    if (older_than_days is None) == (sha256 is None):
        raise PneumoError("give either an age in days or one film's SHA-256")
    if sha256 is not None:
        _check_sha(sha256)
        gone = _copies(settings, sha256)
    else:
        cutoff = (now or time.time()) - float(older_than_days) * 86400
        gone = [f["path"] for f in reviewed_films(settings) if f["kept"] < cutoff]
    for path in gone:
        path.unlink(missing_ok=True)
    return [p.stem for p in gone]


def adapt_from_reviewed(settings, model_ref: str | None = None) -> str:
    """A candidate adapted to the reviewed films (`sites.adapt` with them as the site's data).

    Raises DatasetError (from `sites.load_site`) while there are too few reviewed films of a class.
    """
    from pneumo_core.golive.adaptation import adapt
    return adapt(settings, settings.reviewed_dir, SITE_NAME, model_ref)


def _copies(settings, sha256: str) -> list[Path]:
    return [p for label in LABELS if (p := settings.reviewed_dir / label / f"{sha256}.png").is_file()]


def _check_sha(sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise PneumoError(f"{sha256!r} is not a film's SHA-256 (64 lower-case hex digits)")
