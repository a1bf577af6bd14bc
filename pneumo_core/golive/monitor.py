"""Monitoring after go-live: are recent diagnoses still like the films the model was validated on?

Reads the audit trail (one row per diagnosis: time, model, probability, OOD flag) and compares the
probabilities of the recent window with the model version's reference distribution:

- the site's out-of-fold probabilities for a version adapted to a site (`predictions.csv`, split
  "site_cv"), else the newest site report's probabilities, else the internal validation split;
- PSI (population stability index) over 10 bins at the reference's deciles, and the two-sample
  Kolmogorov–Smirnov statistic with its p-value.

Warning lines (documented in the README, "Go-live at a site"): with at least MIN_RECENT diagnoses,
drift is flagged when PSI >= PSI_WARNING (0.25, the usual "major shift" line; 0.1–0.25 is moderate)
or the KS p-value < KS_P_WARNING (0.001); the OOD flag rate warns above OOD_WARNING (0.15, three times
the 5 % expected of validation films). A warning means: check the site's acquisition and case mix,
and validate the model again on recent labelled films (`site validate`).

Real-world figures (`reader`): the model's calls against the readers' own reads, from the latest
verdict per film (`records.verdicts`) that judged this version's call: sensitivity, specificity,
PPV and NPV with 95 % Wilson intervals (not-assessable reads are counted, and left out of the 2x2),
per triage tier the reads and, against the tier's guarantee, the miss rate of the *low* tier (its
pneumonias over all pneumonias read) and the false-alarm rate of the *high* tier (its normals over
all normals read). A guarantee is in alarm when the observed count is beyond chance for the
guaranteed rate: one-sided binomial p-value < GUARANTEE_P. PPV and NPV here are at the prevalence
the readers saw, the clinic's own.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_core.evaluate.track_record import site_reports

PSI_WARNING = 0.25
KS_P_WARNING = 0.001
OOD_WARNING = 0.15
MIN_RECENT = 30
BINS = 10
GUARANTEE_P = 0.05   # a tier's guarantee is in alarm when P(this many or more | the guaranteed rate) < 5 %
TIERS = ("high", "uncertain", "low", "none")   # "none": the call was shown without a tier


def psi(reference, recent, bins: int = BINS) -> float:
    """Population stability index of `recent` against `reference`, bins at the reference's quantiles.

    sum over bins of (recent share - reference share) * ln(recent share / reference share); shares
    are floored at 1e-4 so an empty bin counts as a large, finite change.
    """
    reference, recent = np.asarray(reference, np.float64), np.asarray(recent, np.float64)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, reference, "right"), minlength=len(edges) + 1) / len(reference)
    new_share = np.bincount(np.searchsorted(edges, recent, "right"), minlength=len(edges) + 1) / len(recent)
    ref_share, new_share = np.maximum(ref_share, 1e-4), np.maximum(new_share, 1e-4)
    return float(np.sum((new_share - ref_share) * np.log(new_share / ref_share)))


def ks(reference, recent) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov statistic and p-value."""
    from scipy.stats import ks_2samp
    result = ks_2samp(np.asarray(reference, np.float64), np.asarray(recent, np.float64))
    return float(result.statistic), float(result.pvalue)


def reference_distribution(version_dir: Path) -> tuple[np.ndarray, str]:
    """The probabilities a version is expected to produce where it is used, and what they are."""
    version_dir = Path(version_dir)
    predictions = pd.read_csv(version_dir / "predictions.csv") if (version_dir / "predictions.csv").is_file() \
        else pd.DataFrame(columns=["split", "probability"])
    site_cv = predictions[predictions["split"] == "site_cv"]
    if len(site_cv):
        return site_cv["probability"].to_numpy(), "the site's films, out-of-fold (site adaptation)"
    reports = [r for r in site_reports(version_dir) if r.get("probabilities")]
    if reports:
        return np.asarray(reports[0]["probabilities"]), f"site {reports[0]['site']} validation films"
    val = predictions[predictions["split"] == "val"]
    return val["probability"].to_numpy(), "internal validation split"


def compare(reference, recent, ood_flags=None) -> dict:
    """Drift figures and warnings of `recent` probabilities against `reference` ones."""
    recent = np.asarray(recent, np.float64)
    flags = [bool(f) for f in (ood_flags if ood_flags is not None else []) if f is not None]
    out = {"n": int(len(recent)), "psi": None, "ks": None, "ks_p": None,
           "ood_rate": float(np.mean(flags)) if flags else None, "drift": False, "warnings": []}
    if len(recent) and len(reference):
        out["psi"] = psi(reference, recent)
        out["ks"], out["ks_p"] = ks(reference, recent)
    if len(recent) < MIN_RECENT:
        out["warnings"].append(f"only {len(recent)} diagnoses in the window; drift is judged from {MIN_RECENT} on")
    elif out["psi"] is not None and (out["psi"] >= PSI_WARNING or out["ks_p"] < KS_P_WARNING):
        out["drift"] = True
        out["warnings"].append(
            f"the probabilities of recent diagnoses have shifted from the reference (PSI {out['psi']:.2f}, "
            f"warning at {PSI_WARNING}; KS {out['ks']:.2f}, p {out['ks_p']:.1g}, warning below {KS_P_WARNING}): "
            f"check acquisition and case mix, and validate the model again on recent labelled films")
    if out["ood_rate"] is not None and len(flags) >= MIN_RECENT and out["ood_rate"] > OOD_WARNING:
        out["drift"] = True
        out["warnings"].append(f"{out['ood_rate']:.0%} of recent films were flagged as unlike the training films "
                               f"(warning above {OOD_WARNING:.0%}; about 5% expected)")
    return out


def monitor(settings, days: int = 30, model: str | None = None, now: datetime | None = None,
            trail=None) -> dict:
    """Calls per day, recent vs reference probabilities, PSI, KS and OOD rate for one model version.

    Args:
        settings: Settings (audit trail and models dir).
        days: the recent window; model: version id (default: the active one).
        now: the end of the window (default: now, UTC); trail: an AuditTrail (default: the settings').
    Returns:
        {"model", "days", "n", "per_day": [{"day", "diagnoses", "pneumonia", "ood_flagged"}],
         "recent": [probabilities], "reference": {"label", "n", "probabilities"}, "psi", "ks", "ks_p",
         "ood_rate", "drift", "warnings", "lines": {"psi", "ks_p", "ood_rate", "min_recent"},
         "reader": `reader_figures` of the latest verdict per film on this version's calls (all time)}
    """
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.records.registry import resolve
    version_dir = resolve(settings.models_dir, model)
    version = version_dir.name
    trail = trail or AuditTrail(settings.audit_path)
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    rows = [r for r in trail.rows(model=version) if since <= _when(r["time"]) <= now]
    reference, label = reference_distribution(version_dir)
    frame = pd.DataFrame(rows, columns=["time", "probability", "call", "ood_flag"])
    per_day = []
    if len(frame):
        frame["day"] = [_when(t).date().isoformat() for t in frame["time"]]
        for day, group in frame.groupby("day"):
            per_day.append({"day": day, "diagnoses": int(len(group)),
                            "pneumonia": int((group["call"] == "PNEUMONIA").sum()),
                            "ood_flagged": int(group["ood_flag"].fillna(False).astype(bool).sum())})
    figures = compare(reference, frame["probability"].to_numpy(), frame["ood_flag"].tolist())
    from pneumo_core.records.verdicts import latest_verdicts
    reader = reader_figures(list(latest_verdicts(trail, model=version).values()), tier_guarantees(version_dir))
    return {"model": version, "days": days, "since": since.isoformat(timespec="seconds"), **figures,
            "reader": reader,
            "per_day": per_day, "recent": [float(v) for v in frame["probability"]],
            "reference": {"label": label, "n": int(len(reference)), "probabilities": [float(v) for v in reference]},
            "lines": {"psi": PSI_WARNING, "ks_p": KS_P_WARNING, "ood_rate": OOD_WARNING, "min_recent": MIN_RECENT}}


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Wilson score interval of `successes / n` (None when n is 0)."""
    if n <= 0:
        return None
    from statistics import NormalDist
    z = NormalDist().inv_cdf(0.5 + level / 2)
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - spread)), float(min(1.0, centre + spread))


def _proportion(successes: int, n: int) -> dict:
    return {"value": successes / n if n else None, "ci": wilson(successes, n), "k": int(successes), "n": int(n)}


def tier_guarantees(version_dir: Path) -> dict[str, float]:
    """The guaranteed rates of a version's triage tiers at its site: {"low": alpha, "high": beta}, or {}."""
    try:
        from pneumo_core.golive.triage import tiers_for
    except ImportError:    # a version of the library without triage tiers
        return {}
    tiers = tiers_for(version_dir)
    limits = {"low": getattr(tiers, "alpha", None), "high": getattr(tiers, "beta", None)} if tiers else {}
    return {tier: float(rate) for tier, rate in limits.items() if isinstance(rate, int | float)}


def reader_figures(latest: list, guarantees: dict[str, float] | None = None) -> dict:
    """The model's calls against readers' reads: 2x2 figures with 95 % CIs, per tier, disagreements.

    Args:
        latest: the latest `records.verdicts.Verdict` per film (one per film).
        guarantees: {"low": guaranteed miss rate, "high": guaranteed false-alarm rate} of the version's tiers.
    Returns:
        {"films", "n" (in the 2x2), "not_assessable", "tp", "fp", "tn", "fn", "sensitivity", "specificity",
         "ppv", "npv" (each {"value", "ci": [low, high], "k", "n"}), "prevalence", "first", "last",
         "by_tier": {tier: {"n", "pneumonia", "normal", and for "low" "miss_rate", for "high"
         "false_alarm_rate" ({"value", "ci", "k", "n"}), "guarantee", "p_value", "alarm"}},
         "disagreements": [{"sha256", "diagnosis_id", "call", "read", "probability", "tier", "who", "time",
         "zones", "note"}] newest first}
    """
    from scipy.stats import binom
    guarantees = guarantees or {}
    assessed = [v for v in latest if v.read in ("NORMAL", "PNEUMONIA")]
    count = {(call, read): sum(v.call == call and v.read == read for v in assessed)
             for call in ("NORMAL", "PNEUMONIA") for read in ("NORMAL", "PNEUMONIA")}
    tp, fn = count["PNEUMONIA", "PNEUMONIA"], count["NORMAL", "PNEUMONIA"]
    tn, fp = count["NORMAL", "NORMAL"], count["PNEUMONIA", "NORMAL"]
    pneumonias, normals = tp + fn, tn + fp
    by_tier = {}
    for tier in TIERS:
        group = [v for v in assessed if (v.tier or "none") == tier]
        if not group and tier not in guarantees:
            continue
        entry = {"n": len(group), "pneumonia": sum(v.read == "PNEUMONIA" for v in group),
                 "normal": sum(v.read == "NORMAL" for v in group), "alarm": False}
        rate_name, wrong, of = {"low": ("miss_rate", entry["pneumonia"], pneumonias),
                                "high": ("false_alarm_rate", entry["normal"], normals)}.get(tier, (None, 0, 0))
        if rate_name:
            limit = guarantees.get(tier)
            p_value = float(binom.sf(wrong - 1, of, limit)) if limit is not None and of else None
            entry |= {rate_name: _proportion(wrong, of), "guarantee": limit, "p_value": p_value,
                      "alarm": p_value is not None and p_value < GUARANTEE_P}
        by_tier[tier] = entry
    times = sorted(v.time for v in latest)
    return {"films": len(latest), "n": len(assessed), "not_assessable": len(latest) - len(assessed),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": _proportion(tp, pneumonias), "specificity": _proportion(tn, normals),
            "ppv": _proportion(tp, tp + fp), "npv": _proportion(tn, tn + fn),
            "prevalence": pneumonias / len(assessed) if assessed else None,
            "first": times[0] if times else None, "last": times[-1] if times else None, "by_tier": by_tier,
            "disagreements": [{"sha256": v.sha256, "diagnosis_id": v.diagnosis_id, "call": v.call, "read": v.read,
                               "probability": v.probability, "tier": v.tier, "who": v.who, "time": v.time,
                               "zones": list(v.zones), "note": v.note}
                              for v in sorted(assessed, key=lambda v: v.time, reverse=True) if v.agree is False]}


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)

