"""Monitoring after go-live: are recent diagnoses still like the films the model was validated on?

Reads the audit trail (one row per diagnosis: time, model, probability, OOD flag) and compares the
probabilities of the recent window with the model version's reference distribution:

- the site's out-of-fold probabilities for a version adapted to a site (`predictions.csv`, split
  "site_cv"), else the newest site report's probabilities, else the internal validation split;
- PSI (population stability index) over 10 bins at the reference's deciles, and the two-sample
  Kolmogorov–Smirnov statistic with its p-value.

Drift that survives a change of case mix: a clinic day of mostly normal children is not drift,
though its scores look nothing like a go-live set of 67 % pneumonia (PSI 1.11 was raised on such a
day). When the reference films are labelled, the recent share of pneumonia is estimated from the
scores alone (`estimate_prevalence`: the EM of Saerens, Latinne & Decaestecker 2002, with the
class-conditional score densities taken from the reference's own labelled films, binned at its
deciles), the reference is re-weighted to that share (`reweighted_reference`), and PSI and KS are
computed against the re-weighted reference: what is left is a change in how films of each class
score (acquisition, population, disease spectrum), which is what drift means. The prevalence change
is reported on its own (`prevalence`), with a 95 % interval, as a finding and not an alarm; it is
also the prevalence at which `predictive_values` gives PPV and NPV when the clinic set none.
Limit: a change that moves films of one class to where the other class scores (e.g. every film
scored as a typical pneumonia) looks like a prevalence change; the OOD rate and the reader's
verdicts catch what this cannot.

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

from pneumo_core.evaluation.track_record import site_reports

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
    probabilities, _, label = labelled_reference(version_dir)
    return probabilities, label


def labelled_reference(version_dir: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(probabilities, labels or None, what they are) of a version's reference films (see the docstring)."""
    version_dir = Path(version_dir)
    predictions = pd.read_csv(version_dir / "predictions.csv") if (version_dir / "predictions.csv").is_file() \
        else pd.DataFrame(columns=["split", "probability", "label"])

    def labels_of(frame):
        return frame["label"].to_numpy().astype(int) if "label" in frame and frame["label"].notna().all() else None

    site_cv = predictions[predictions["split"] == "site_cv"]
    if len(site_cv):
        return (site_cv["probability"].to_numpy(), labels_of(site_cv),
                "the site's films, out-of-fold (site adaptation)")
    reports = [r for r in site_reports(version_dir) if r.get("probabilities")]
    if reports:
        labels = reports[0].get("labels")
        return (np.asarray(reports[0]["probabilities"]), np.asarray(labels, int) if labels else None,
                f"site {reports[0]['site']} validation films")
    val = predictions[predictions["split"] == "val"]
    return val["probability"].to_numpy(), labels_of(val), "internal validation split"


def _bins(reference) -> np.ndarray:
    return np.unique(np.quantile(np.asarray(reference, np.float64), np.linspace(0, 1, BINS + 1)[1:-1]))


def class_densities(reference, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin edges, share of the reference's normals per bin, of its pneumonias per bin), bins at its deciles.

    Shares are smoothed by half a film per bin, so a bin one class never reached is unlikely, not impossible.
    """
    reference, labels = np.asarray(reference, np.float64), np.asarray(labels).astype(int)
    edges = _bins(reference)
    shares = []
    for c in (0, 1):
        counts = np.bincount(np.searchsorted(edges, reference[labels == c], "right"), minlength=len(edges) + 1) + 0.5
        shares.append(counts / counts.sum())
    return edges, shares[0], shares[1]


def _em_prevalence(f0, f1, bins, start: float, iterations: int = 200) -> float:
    a, b = f1[bins], f0[bins]
    pi = start
    for _ in range(iterations):
        new = float(np.mean(pi * a / (pi * a + (1 - pi) * b)))
        if abs(new - pi) < 1e-7:
            return new
        pi = new
    return pi


def estimate_prevalence(reference, labels, recent, n_boot: int = 200, seed: int = 0) -> dict:
    """The share of pneumonia among `recent` films, estimated from their scores (EM, Saerens et al. 2002).

    Each recent film's chance of being a pneumonia under a prevalence pi is pi f1 / (pi f1 + (1 - pi) f0),
    f0 and f1 the reference's class-conditional score densities (`class_densities`); pi is updated to
    the mean of those chances until it settles. The 95 % interval is a percentile bootstrap over the
    recent films and the reference films (within each class): with a go-live set of ~200 films the
    reference's own noise counts (an interval from the recent films alone covered 89 % in simulation).

    Args:
        reference, labels: the reference films' probabilities and labels (1 PNEUMONIA).
        recent: the recent films' probabilities.
        n_boot, seed: bootstrap resamples and their seed.
    Returns:
        {"reference", "recent", "ci": [low, high], "n", "changed"}: `changed` when the reference's
        prevalence lies outside the recent interval (judged from MIN_RECENT films on).
    """
    reference, recent = np.asarray(reference, np.float64), np.asarray(recent, np.float64)
    labels = np.asarray(labels).astype(int)
    pi_ref = float(np.mean(labels))
    if not len(recent):
        return {"reference": pi_ref, "recent": None, "ci": None, "n": 0, "changed": False}
    edges, f0, f1 = class_densities(reference, labels)
    pi = _em_prevalence(f0, f1, np.searchsorted(edges, recent, "right"), pi_ref)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    draws = []
    for _ in range(n_boot):
        rows = np.concatenate([rng.choice(idx, len(idx)) for idx in by_class])
        boot_edges, g0, g1 = class_densities(reference[rows], labels[rows])
        sample = rng.choice(recent, len(recent))
        draws.append(_em_prevalence(g0, g1, np.searchsorted(boot_edges, sample, "right"), pi))
    ci = [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]
    return {"reference": pi_ref, "recent": pi, "ci": ci, "n": int(len(recent)),
            "changed": bool(len(recent) >= MIN_RECENT and not ci[0] <= pi_ref <= ci[1])}


def reweighted_reference(reference, labels, prevalence: float) -> np.ndarray:
    """Weights (summing to 1) that give the reference films a share `prevalence` of pneumonia."""
    labels = np.asarray(labels).astype(int)
    n1, n0 = int(labels.sum()), int((labels == 0).sum())
    if n1 == 0 or n0 == 0:
        return np.full(len(labels), 1 / max(len(labels), 1))
    return np.where(labels == 1, prevalence / n1, (1 - prevalence) / n0)


def weighted_psi(reference, weights, recent) -> float:
    """PSI of `recent` against the reference films weighted by `weights` (bins at the reference's deciles)."""
    reference, recent = np.asarray(reference, np.float64), np.asarray(recent, np.float64)
    edges = _bins(reference)
    ref_share = np.bincount(np.searchsorted(edges, reference, "right"), weights=weights, minlength=len(edges) + 1)
    new_share = np.bincount(np.searchsorted(edges, recent, "right"), minlength=len(edges) + 1) / len(recent)
    ref_share, new_share = np.maximum(ref_share / ref_share.sum(), 1e-4), np.maximum(new_share, 1e-4)
    return float(np.sum((new_share - ref_share) * np.log(new_share / ref_share)))


def weighted_ks(reference, weights, recent) -> tuple[float, float]:
    """KS statistic of `recent` against the weighted reference, and its p-value.

    The p-value is the two-sample one at the effective sizes: the recent count, and the reference's
    Kish effective size (sum w)^2 / sum w^2, which re-weighting lowers.
    """
    from scipy.stats import kstwo
    reference, recent = np.asarray(reference, np.float64), np.sort(np.asarray(recent, np.float64))
    weights = np.asarray(weights, np.float64) / np.sum(weights)
    order = np.argsort(reference)
    points = np.concatenate([reference, recent])
    cumulative = np.concatenate([[0.0], np.cumsum(weights[order])])
    ref_cdf = cumulative[np.searchsorted(reference[order], points, "right")]   # the weighted ECDF
    new_cdf = np.searchsorted(recent, points, "right") / len(recent)
    statistic = float(np.max(np.abs(new_cdf - ref_cdf)))
    n_ref = 1.0 / np.sum(weights ** 2)
    n = max(1, int(round(n_ref * len(recent) / (n_ref + len(recent)))))
    return statistic, float(kstwo.sf(statistic, n))


def psi_p_value(value: float, n_recent: int, n_reference: float, bins: int) -> float:
    """The chance of a PSI this large between two samples of one distribution (chi-square approximation).

    Args:
        value: the PSI; n_recent: recent films; n_reference: the reference's (effective) size; bins: PSI bins.
    """
    from scipy.stats import chi2
    return float(chi2.sf(value / (1.0 / n_recent + 1.0 / n_reference), bins - 1))


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """(PPV, NPV) of a call with this sensitivity and specificity where `prevalence` of films are pneumonia.

    Args:
        sensitivity, specificity: measured on the site's films (they do not depend on prevalence).
        prevalence: the clinic's share of pneumonia, 0..1 (name where it comes from wherever it is shown).
    """
    true_pos, false_pos = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    false_neg, true_neg = (1 - sensitivity) * prevalence, specificity * (1 - prevalence)
    ppv = true_pos / (true_pos + false_pos) if true_pos + false_pos > 0 else float("nan")
    npv = true_neg / (true_neg + false_neg) if true_neg + false_neg > 0 else float("nan")
    return float(ppv), float(npv)


def compare(reference, recent, ood_flags=None, reference_labels=None) -> dict:
    """Drift figures and warnings of `recent` probabilities against `reference` ones.

    Args:
        reference: the reference films' probabilities; recent: the recent diagnoses' probabilities.
        ood_flags: the recent films' OOD flags (None entries: no detector).
        reference_labels: the reference films' labels; with them, PSI and KS are computed against
            the reference re-weighted to the recent prevalence estimated from the scores, and
            "prevalence" reports the case-mix change (see the module docstring).
    Returns:
        {"n", "psi", "ks", "ks_p", "psi_unadjusted", "prevalence", "ood_rate", "drift", "warnings", "findings"},
        and "psi_p" with labels (the PSI's p-value; a PSI over its line is drift only when psi_p < KS_P_WARNING).
    """
    recent = np.asarray(recent, np.float64)
    flags = [bool(f) for f in (ood_flags if ood_flags is not None else []) if f is not None]
    out = {"n": int(len(recent)), "psi": None, "ks": None, "ks_p": None, "psi_unadjusted": None,
           "prevalence": None, "ood_rate": float(np.mean(flags)) if flags else None, "drift": False,
           "warnings": [], "findings": []}
    labelled = reference_labels is not None and len(set(np.asarray(reference_labels).astype(int))) == 2
    if len(recent) and len(reference):
        out["psi_unadjusted"] = out["psi"] = psi(reference, recent)
        out["ks"], out["ks_p"] = ks(reference, recent)
        if labelled:
            prevalence = estimate_prevalence(reference, reference_labels, recent)
            weights = reweighted_reference(reference, reference_labels, prevalence["recent"])
            out["psi"] = weighted_psi(reference, weights, recent)
            out["ks"], out["ks_p"] = weighted_ks(reference, weights, recent)
            # A re-weighted go-live set leans on few films of the rare class (33 normals carried 90 % of the
            # weight at a 10 % day): its PSI is noisy, so a PSI over the line counts only when sampling
            # noise cannot explain it (PSI ~ chi-square(bins - 1) * (1/n + 1/n_ref_effective) without drift).
            out["psi_p"] = psi_p_value(out["psi"], len(recent), 1.0 / float(np.sum(weights ** 2)),
                                       len(_bins(reference)) + 1)
            out["prevalence"] = prevalence
            if prevalence["changed"]:
                low, high = prevalence["ci"]
                out["findings"].append(
                    f"case mix: about {prevalence['recent']:.0%} of recent films look like pneumonia "
                    f"(95 % interval {low:.0%}–{high:.0%}) against {prevalence['reference']:.0%} in the reference "
                    f"films; a change of case mix, not drift (drift is judged against the reference re-weighted "
                    f"to it)")
    if len(recent) < MIN_RECENT:
        out["warnings"].append(f"only {len(recent)} diagnoses in the window; drift is judged from {MIN_RECENT} on")
    elif out["psi"] is not None and ((out["psi"] >= PSI_WARNING and out.get("psi_p", 0.0) < KS_P_WARNING)
                                     or out["ks_p"] < KS_P_WARNING):
        out["drift"] = True
        out["warnings"].append(
            f"the probabilities of recent diagnoses have shifted from the reference"
            f"{' re-weighted to the recent case mix' if out['prevalence'] else ''} (PSI {out['psi']:.2f}, "
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
         "ood_rate", "drift", "warnings", "findings", "psi_unadjusted",
         "prevalence": {"reference", "recent", "ci", "n", "changed"} or None (unlabelled reference),
         "lines": {"psi", "ks_p", "ood_rate", "min_recent"},
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
    reference, labels, label = labelled_reference(version_dir)
    frame = pd.DataFrame(rows, columns=["time", "probability", "call", "ood_flag"])
    per_day = []
    if len(frame):
        frame["day"] = [_when(t).date().isoformat() for t in frame["time"]]
        for day, group in frame.groupby("day"):
            per_day.append({"day": day, "diagnoses": int(len(group)),
                            "pneumonia": int((group["call"] == "PNEUMONIA").sum()),
                            "ood_flagged": int(group["ood_flag"].fillna(False).astype(bool).sum())})
    figures = compare(reference, frame["probability"].to_numpy(), frame["ood_flag"].tolist(), labels)
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
        from pneumo_core.evaluation.triage import tiers_for
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


def clinic_prevalence(settings, version_dir, days: int = 30, trail=None) -> tuple[float | None, str]:
    """The clinic's share of pneumonia for PPV/NPV, and where it comes from (always shown with it).

    The clinic's own setting (PNEUMO_CLINIC_PREVALENCE) first; else the share observed in readers' verdicts
    (from MIN_RECENT films on); else estimated from the scores of the
    version's diagnoses of the last `days` days (`estimate_prevalence`, from MIN_RECENT on); else the
    share among the version's reference films, named as such.

    Returns:
        (prevalence or None when nothing is known, the words naming its source).
    """
    if settings.clinic_prevalence is not None:
        return settings.clinic_prevalence, "set for this clinic (PNEUMO_CLINIC_PREVALENCE)"
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.records.verdicts import latest_verdicts
    version_dir = Path(version_dir)
    trail = trail or AuditTrail(settings.audit_path)
    reads = [v.read for v in latest_verdicts(trail).values() if v.read in ("NORMAL", "PNEUMONIA")]
    if len(reads) >= MIN_RECENT:   # what readers found beats what the scores suggest
        return (sum(r == "PNEUMONIA" for r in reads) / len(reads),
                f"observed in readers' verdicts on {len(reads)} films")
    reference, labels, label = labelled_reference(version_dir)
    if labels is None or len(set(labels.tolist())) < 2:
        return None, "unknown (no labelled reference films)"
    since = datetime.now(UTC) - timedelta(days=days)
    recent = [r["probability"] for r in trail.rows(model=version_dir.name) if _when(r["time"]) >= since]
    if len(recent) >= MIN_RECENT:
        estimate = estimate_prevalence(reference, labels, recent)
        return estimate["recent"], f"estimated from the scores of {len(recent)} diagnoses of the last {days} days"
    return float(np.mean(labels)), f"of the {label} (too few recent diagnoses to estimate the clinic's)"


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)

