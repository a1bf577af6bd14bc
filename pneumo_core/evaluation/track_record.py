"""The figures that apply to a model version where it is used: what every screen and report shows.

A model's own internal test split (carved from its training data) overstates how it does at a
new site: the default model measured specificity 0.98 there and 0.63 on later films of the same
hospital. So every figure a clinician sees names the data it was measured on:

- a version with a site report (`site validate`) or adapted to a site (`site adapt`, with
  patient-grouped cross-validated figures in its card) shows the site's figures with 95 % CIs;
- otherwise its internal test split, labelled "internal test split, same source as training;
  not validated at this site".

Site reports live in the version folder: `site_reports/<site>.json` (see `pneumo_core.golive.validation`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SITE_REPORTS = "site_reports"
INTERNAL_LABEL = "internal test split, same source as training; not validated at this site"
FIGURES = ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "ece")


@dataclass(frozen=True)
class TrackRecord:
    """Measured figures of one model version and the data they were measured on.

    Attributes:
        source: "site" (validated or cross-validated on a site's films) or "internal".
        label: the words shown beside every figure, naming the data (site name, films, method).
        figures: metric name (FIGURES) -> value at the version's stored threshold.
        ci: metric name -> (low, high) 95 % bootstrap interval, where measured.
        n: films the figures were measured on; prevalence: share of PNEUMONIA among them.
        site: the site's name (None for internal figures).
    """
    source: str
    label: str
    figures: dict
    ci: dict = field(default_factory=dict)
    n: int = 0
    prevalence: float | None = None
    site: str | None = None

    def text(self, metric: str, digits: int = 2) -> str:
        """'0.63 [0.51–0.74]' (or '0.63' without an interval; '–' when not measured)."""
        value = self.figures.get(metric)
        if value is None:
            return "–"
        low_high = self.ci.get(metric)
        interval = f" [{low_high[0]:.{digits}f}–{low_high[1]:.{digits}f}]" if low_high else ""
        return f"{value:.{digits}f}{interval}"


def site_reports(version_dir: Path) -> list[dict]:
    """Every stored site report of a version, newest first."""
    folder = Path(version_dir) / SITE_REPORTS
    reports = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(reports, key=lambda r: r.get("created", ""), reverse=True)


def _from_metrics(source: str, label: str, metrics: dict, site: str | None = None) -> TrackRecord:
    figures = {"roc_auc": metrics.get("roc_auc"), "sensitivity": metrics.get("sensitivity"),
               "specificity": metrics.get("specificity"), "ppv": metrics.get("precision", metrics.get("ppv")),
               "npv": metrics.get("npv"), "ece": metrics.get("ece")}
    ci = {k: tuple(v) for k, v in (metrics.get("ci") or {}).items() if k in FIGURES and v}
    return TrackRecord(source, label, figures, ci, int(metrics.get("n", 0)), metrics.get("prevalence"), site)


def track_record(version_dir: Path, metadata: dict | None = None) -> TrackRecord:
    """The figures that apply to the version in `version_dir`: its site's where measured, else internal.

    Args:
        version_dir: the version folder (holds metadata.json, metrics.json, site_reports/).
        metadata: the version's metadata.json if already read.
    Returns:
        A TrackRecord whose `label` must be shown with its figures.
    """
    version_dir = Path(version_dir)
    metadata = metadata if metadata is not None else json.loads((version_dir / "metadata.json").read_text())
    reports = site_reports(version_dir)
    if reports:
        r = reports[0]
        label = r.get("label") or f"site {r['site']}: {r['n']} labelled films, validated {r.get('created', '')[:10]}"
        return _from_metrics("site", label, r, r["site"])
    adapted = (metadata.get("site") or {}).get("cross_validated")
    if adapted:
        site = metadata["site"].get("name", "site")
        label = (f"site {site}: {adapted['n']} labelled films, patient-grouped "
                 f"{adapted.get('folds', 5)}-fold cross-validation")
        return _from_metrics("site", label, adapted, site)
    metrics_file = version_dir / "metrics.json"
    test = json.loads(metrics_file.read_text()).get("test", {}) if metrics_file.is_file() else {}
    return _from_metrics("internal", INTERNAL_LABEL, test)
