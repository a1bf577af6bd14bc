"""Validate a model version on a site's own labelled films: scores, figures with CIs, and a verdict.

`validate` scores a site's labelled films (NORMAL/ and PNEUMONIA/, or test/NORMAL and
test/PNEUMONIA; see `sites.load_site`) with a model version at its own stored threshold and writes
a site report into the version folder (`site_reports/<site>.json`, read by `track_record`): the
figures with patient-level bootstrap 95 % CIs, the reliability diagram, the OOD flag rate and a
verdict against the model's internal test split. `score_films` and `score_views` score films as
the version serves them (also used by `adaptation`).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pneumo_core.errors import DatasetError
from pneumo_core.evaluation.metrics import calibration_curve, evaluate_with_ci
from pneumo_core.evaluation.track_record import INTERNAL_LABEL, SITE_REPORTS
from pneumo_core.evaluation.triage import DEFAULT_ALPHA, DEFAULT_BETA, SOURCES, fit_tiers
from pneumo_core.files import new_file_mode
from pneumo_core.golive.sites import load_site
from pneumo_core.progress import Progress, Reporter

log = logging.getLogger(__name__)


def sigmoid(z) -> np.ndarray:
    """The logistic function in float64: a calibrated logit to a probability of PNEUMONIA."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def score_films(model, paths, label: str = "site films") -> tuple[np.ndarray, np.ndarray]:
    """(probability of PNEUMONIA, pooled backbone embedding) of each film, as the model serves it.

    One forward pass each, or 1 + k with the version's test-time augmentation (the plain view's embedding).
    """
    from pneumo_core.learn.model import score_files, scoring_model
    if model.tta_views:
        logits, embeddings = score_views(model, paths, model.tta_views, model.tta_seed, label)
        return sigmoid(logits.mean(1)), embeddings[0]
    return score_files(scoring_model(model.keras), paths, model.image_size, model.normalisation,
                       progress=Progress(f"scoring {label}", len(paths)))


def score_views(model, paths, views: int, seed: int = 0, label: str = "site films",
                reporter: Reporter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits and pooled embeddings of each film's plain view and `views` TTA views.

    The views are those the model's test-time augmentation scores (`model.tta_inputs`, seeds (seed, v)).

    Returns:
        (logits (N, 1 + views), embeddings (1 + views, N, D)), the plain view first.
    """
    from pneumo_core.imaging.films import read_image
    from pneumo_core.learn.model import scoring_model, tta_inputs
    scorer = scoring_model(model.keras, logit=True)
    progress = Progress(f"scoring {label} ({1 + views} views)", len(paths), reporter)
    logits, embeddings = [], []
    for path in paths:
        z, e = scorer.predict_on_batch(tta_inputs(read_image(str(path)), model.image_size, model.normalisation,
                                                  views, seed))
        logits.append(np.asarray(z, np.float64).reshape(-1))
        embeddings.append(np.asarray(e, np.float32))
        progress.update(1)
    return np.stack(logits), np.stack(embeddings, axis=1)


def _internal_figures(version_dir: Path) -> dict:
    path = Path(version_dir) / "metrics.json"
    return json.loads(path.read_text()).get("test", {}) if path.is_file() else {}


def findings(site: dict, internal: dict) -> list[str]:
    """What is worse at the site than on the internal test split, in words (empty: the figures hold).

    A figure is worse when the internal value lies beyond the site's 95 % interval; probabilities
    are called miscalibrated above ECE 0.05.
    """
    ci = site.get("ci", {})

    def worse(metric):
        low_high, ref = ci.get(metric), internal.get(metric)
        return bool(low_high and ref is not None and ref > low_high[1])

    found = [words for metric, words in (
        ("sensitivity", "the model misses pneumonia at this site"),
        ("specificity", "the model over-calls at this site (normal films called PNEUMONIA)"),
        ("roc_auc", "it ranks this site's films less well")) if worse(metric)]
    if (site.get("ece") or 0) > 0.05:
        found.append(f"its probabilities are miscalibrated here (ECE {site['ece']:.2f})")
    return found


def verdict(site: dict, internal: dict, name: str) -> str:
    """One plain paragraph: the site's figures against the internal test split, and what it means."""
    ci = site.get("ci", {})

    def text(metric, digits=2):
        low_high = ci.get(metric)
        return f"{site[metric]:.{digits}f}" + (f" [{low_high[0]:.{digits}f}–{low_high[1]:.{digits}f}]"
                                               if low_high else "")

    parts = []
    for metric, words in (("sensitivity", "sensitivity here"), ("specificity", "specificity here"),
                          ("roc_auc", "AUC")):
        if site.get(metric) is not None:
            ref = internal.get(metric)
            parts.append(f"{words} {text(metric)}" + (f" vs {ref:.2f} internal" if ref is not None else ""))
    head = f"Site {name}, {site['n']} films: " + "; ".join(parts) + "."
    found = "; ".join(findings(site, internal))
    if found:
        return (head + " " + found[0].upper() + found[1:] + ". Adapt the model to this site "
                "(python -m pneumo_core site adapt) and validate again before relying on its calls here.")
    return head + " The internal figures hold at this site within the 95 % intervals."


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.chmod(tmp, new_file_mode())   # mkstemp's 0600 -> a new file's usual mode (0600 under pneumo_core.files)
    os.replace(tmp, path)


def validate(version_dir, data_dir, name: str | None = None, n_boot: int = 1000, seed: int = 0,
             save: bool = True, model=None, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA) -> dict:
    """Score a site's labelled films with a model version at its own threshold; store the site report.

    Args:
        version_dir: the model version folder.
        data_dir: the site folder (see `load_site`).
        name: the site's name (default: the folder's name).
        n_boot, seed: bootstrap resamples (patients) and seed of the 95 % intervals.
        save: write `site_reports/<site>.json` into the version folder.
        model: the loaded PneumoModel of that version, if already loaded.
        alpha, beta: the site's triage promises (share of pneumonias in low, of normals in high).
    Returns:
        The report: `evaluate --json`'s keys (with "ppv" and "ci" for AUC, sensitivity, specificity,
        PPV, NPV, ECE) plus site, created, data, fingerprint, verdict, calibration (reliability
        diagram points), ood (flag rate), internal (its figures), labels and probabilities (per film,
        no names), triage (`TriageTiers.to_dict`) and triage_summary (its paragraph), seconds.
    Raises:
        DatasetError: the folder is unusable, or the version was adapted on these very films.
    """
    from pneumo_core.imaging.ood import OODDetector
    from pneumo_core.learn.model import PneumoModel
    start = time.perf_counter()
    version_dir = Path(version_dir)
    site = load_site(data_dir, name)
    if model is None:   # checked against the promotions record first (a swapped file is never scored)
        from pneumo_core.records.registry import check_version
        model = PneumoModel.load(version_dir, expected_sha256=check_version(version_dir, version_dir.parent)["sha256"])
    adapted_on = (model.metadata.get("site") or {}).get("fingerprint")
    if adapted_on == site.fingerprint:
        raise DatasetError(f"{model.id} was adapted on these very films (fingerprint {site.fingerprint}); scoring "
                           f"them again would overstate it. Its honest figures are the cross-validated ones in its "
                           f"model card; validate it on other films of the site.")
    p, embeddings = score_films(model, site.frame["path"])
    y = site.y
    detector = OODDetector.load(version_dir)
    flags = detector.score(embeddings) > 1.0 if detector is not None else None
    result = evaluate_with_ci(y, p, model.threshold, groups=site.frame["patient"], n_boot=n_boot, seed=seed)
    internal = _internal_figures(version_dir)
    report = {
        "model": model.id, "split": "site", "data": str(Path(data_dir).resolve()), **result,
        "site": site.name, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprint": site.fingerprint, "notes": site.notes,
        "verdict": verdict(result, internal, site.name), "holds": not findings(result, internal),
        "calibration": calibration_curve(y, p),
        "ood": {"available": flags is not None, "flagged": int(flags.sum()) if flags is not None else None,
                "rate": float(flags.mean()) if flags is not None else None,
                "expected_rate": 0.05 if flags is not None else None},
        "internal": {"label": INTERNAL_LABEL, **{k: internal.get(k) for k in (
            "roc_auc", "sensitivity", "specificity", "precision", "npv", "ece", "n")}},
        "labels": y.tolist(), "probabilities": [round(float(v), 6) for v in p],
    }
    tiers = fit_tiers(p, y, alpha, beta, site=site.name, source=SOURCES[0], created=report["created"])
    report.update(triage=tiers.to_dict(), triage_summary=tiers.summary())
    report["seconds"] = round(time.perf_counter() - start, 1)
    if save:
        write_json_atomic(version_dir / SITE_REPORTS / f"{site.name}.json", report)
        log.info("site report written to %s", version_dir / SITE_REPORTS / f"{site.name}.json")
    return report

