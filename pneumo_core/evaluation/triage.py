"""Triage tiers: cut-offs on a site's own films with a finite-sample guarantee on how each tier errs.

A call the model makes at a new hospital is only as trustworthy as what was measured there. When a
version is validated at a site (`site validate`: the site films' probabilities) or adapted to one
(`site adapt`: the site films' out-of-fold probabilities), `fit_tiers` sets two cut-offs:

- *low* (p < low_cut): with `confidence` (95 %), at most `alpha` (5 %) of the site's pneumonias
  score this low; a low call is a likely-normal film, still read by a clinician;
- *high* (p >= high_cut): with `confidence`, at most `beta` (10 %) of the site's normal films score
  this high; a high call is a likely pneumonia;
- *uncertain* between the cuts: the model cannot vouch for the call; the film needs a full read.

Method (Learn-then-Test, Angelopoulos et al. 2021, with fixed-sequence testing): the share of
pneumonias below a cut, R(c) = P(p < c | pneumonia), only grows with c. For each candidate cut
(the sorted pneumonia scores) the null "R(c) > alpha" is rejected when the exact one-sided
Clopper–Pearson upper bound of the observed share k/n at level `confidence` is <= alpha; testing
the cuts in increasing order and stopping at the first null not rejected controls the chance of
any false rejection at 1 - confidence without a multiplicity correction, because R is monotone.
The low cut is the last cut rejected; the high cut is set the same way on the normal films, from
the top. Each guarantee holds with `confidence` on its own; both hold together with at least
1 - 2 (1 - confidence) (90 % at the default).

Assumptions: the site films are exchangeable with the films the tiers will be applied to, within
each class: the same scanners, protocols, patient population and disease spectrum, and the same
model version (the probabilities the cuts were set on are the ones served). The guarantee is on
the share of each class (a miss rate among pneumonias, a false-alarm rate among normals), not on
the predictive values, which also depend on prevalence; it does not need the site's prevalence
to match the clinic's.

Failure modes, in words the docs repeat (docs/trusting-a-call.md):
- a change of scanner, protocol, population or disease spectrum after the site set was taken
  breaks exchangeability, and the guarantee with it (the Monitor's drift test watches for it);
- films of one patient are not independent: several films per patient make the effective
  number of films smaller than counted, and the bound a little optimistic;
- for an adapted version, the cuts are set on out-of-fold probabilities of heads trained on four
  fifths of the site films, while the served head trained on all of them: its scores on new films
  are usually a little better separated, so the guarantee is, if anything, conservative;
- few films: with n pneumonias no cut can guarantee a miss share below 1 - (1 - confidence)^(1/n)
  (n = 59 for 5 %); with too few films of a class its tier is empty (every film is uncertain).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

TIERS = ("high", "uncertain", "low")            # worklist order: likely pneumonia first
SOURCES = ("site validation", "out-of-fold site predictions")
DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_CONFIDENCE = 0.05, 0.10, 0.95
LARGER_SETS = (2, 5)                            # "with 2x / 5x as many site films" in the site report
NOT_VALIDATED = "not validated at this site"


def upper_bound(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """Exact one-sided Clopper–Pearson upper bound of a share, k of n, at `confidence`.

    Args:
        k: films counted; n: films in all (0 films: the bound is 1).
        confidence: one-sided level (0.95: the true share is below the bound with 95 % confidence).
    Returns:
        The bound in [0, 1].
    """
    from scipy.stats import beta
    if n <= 0 or k >= n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def most_allowed(n: int, rate: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The most films out of `n` a tier may hold of the wrong class while keeping the bound <= rate (-1: none)."""
    k = -1
    while k + 1 < n and upper_bound(k + 1, n, confidence) <= rate:
        k += 1
    return k


def smallest_rate(n: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The smallest share n films of a class can guarantee at all (none of them in the wrong tier)."""
    return upper_bound(0, n, confidence)


@dataclass(frozen=True)
class TriageTiers:
    """Two cut-offs set on a site's films and the guarantee each rests on.

    Attributes:
        low_cut: p below it is *low* (None: the site set was too small for a low tier).
        high_cut: p at or above it is *high* (None: too small for a high tier).
        alpha, beta: the promised share of pneumonias in low, of normals in high.
        confidence: the one-sided confidence of each promise.
        n_pneumonia, n_normal: the site films each promise rests on.
        site: the site's name; source: "site validation" or "out-of-fold site predictions".
        missed, false_alarms: site pneumonias below low_cut, site normals at or above high_cut.
        definite_share: share of the site's films in low or high.
        smallest_alpha, smallest_beta: the smallest alpha / beta this many films could guarantee.
        larger_sets: [{"factor", "n_pneumonia", "n_normal", "alpha", "beta"}]: what the same observed
            shares would guarantee with `factor` times as many site films.
        created: when the cuts were set (ISO, UTC), if known.
    """
    low_cut: float | None
    high_cut: float | None
    alpha: float
    beta: float
    confidence: float
    n_pneumonia: int
    n_normal: int
    site: str = ""
    source: str = SOURCES[0]
    missed: int = 0
    false_alarms: int = 0
    definite_share: float = 0.0
    smallest_alpha: float = 1.0
    smallest_beta: float = 1.0
    larger_sets: tuple = field(default_factory=tuple)
    created: str = ""

    def tier(self, probability: float) -> str:
        """'low', 'uncertain' or 'high' for one probability of PNEUMONIA.

        A film both under the low cut and over the high cut (a model that separates the site's
        classes poorly can set crossing cuts) is 'uncertain': neither promise can be leaned on.
        """
        p = float(probability)
        low = self.low_cut is not None and p < self.low_cut
        high = self.high_cut is not None and p >= self.high_cut
        if low and not high:
            return "low"
        if high and not low:
            return "high"
        return "uncertain"

    def tiers(self, probabilities) -> np.ndarray:
        """`tier` of each probability, as an array of strings."""
        return np.array([self.tier(p) for p in np.asarray(probabilities, np.float64).reshape(-1)], dtype=object)

    def guarantee(self, tier: str) -> str:
        """The sentence shown to the reader with a call of this tier, naming the site and its films.

        Args:
            tier: 'low', 'uncertain' or 'high'.
        Returns:
            One sentence (no patient data).
        """
        basis = (f"{self.n_pneumonia} pneumonia and {self.n_normal} normal films of site {self.site} "
                 f"({self.source})")
        level = f"{self.confidence:.0%} confidence"
        if tier == "low":
            return (f"Low: at site {self.site} at most {self.alpha:.0%} of pneumonias score below "
                    f"{self.low_cut:.2f} ({level}, {self.n_pneumonia} pneumonia films); likely normal, "
                    f"still read by a clinician.")
        if tier == "high":
            return (f"High: at site {self.site} at most {self.beta:.0%} of normal films score at or above "
                    f"{self.high_cut:.2f} ({level}, {self.n_normal} normal films); likely pneumonia.")
        if tier == "uncertain":
            cuts = ", ".join(part for part in (
                f"low below {self.low_cut:.2f}" if self.low_cut is not None else "",
                f"high from {self.high_cut:.2f}" if self.high_cut is not None else "") if part) or "no tier set"
            return (f"Uncertain: between the cut-offs set on {basis} ({cuts}); the model cannot vouch for "
                    f"this call, it needs a full read.")
        raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")

    def summary(self) -> str:
        """The site report's paragraph: the cuts, what they rest on, and what a larger set would allow."""
        parts = [f"Triage tiers at site {self.site} ({self.source}, {self.confidence:.0%} confidence): "]
        parts.append(f"low below {self.low_cut:.2f}, at most {self.alpha:.0%} of pneumonias "
                     f"({self.missed} of {self.n_pneumonia} site pneumonias there)"
                     if self.low_cut is not None else
                     f"no low tier ({self.n_pneumonia} pneumonia films cannot guarantee {self.alpha:.0%}; "
                     f"they guarantee {self.smallest_alpha:.1%} at best)")
        parts.append("; ")
        parts.append(f"high from {self.high_cut:.2f}, at most {self.beta:.0%} of normals "
                     f"({self.false_alarms} of {self.n_normal} site normals there)"
                     if self.high_cut is not None else
                     f"no high tier ({self.n_normal} normal films cannot guarantee {self.beta:.0%}; "
                     f"they guarantee {self.smallest_beta:.1%} at best)")
        parts.append(f"; {self.definite_share:.0%} of the site films in a definite tier.")
        for larger in self.larger_sets:
            parts.append(f" With {larger['factor']}x as many films ({larger['n_pneumonia']} pneumonia, "
                         f"{larger['n_normal']} normal) and the same shares, the guarantees would be "
                         f"{larger['alpha']:.1%} and {larger['beta']:.1%}.")
        return "".join(parts)

    def to_dict(self) -> dict:
        """The tiers as JSON-ready values (stored under "triage" in a site report)."""
        out = asdict(self)
        out["larger_sets"] = [dict(x) for x in self.larger_sets]
        return out

    @classmethod
    def from_dict(cls, values: dict) -> TriageTiers:
        """Tiers from `to_dict`'s values (unknown keys ignored, so older reports still load)."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        known["larger_sets"] = tuple(dict(x) for x in known.get("larger_sets", ()))
        return cls(**known)


def fit_tiers(probabilities, labels, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
              confidence: float = DEFAULT_CONFIDENCE, site: str = "", source: str = SOURCES[0],
              created: str = "") -> TriageTiers:
    """Set the low and high cut-offs on a site's labelled films (see the module docstring).

    Args:
        probabilities: the served probability of PNEUMONIA of each site film (out-of-fold for an
            adapted version).
        labels: 1 PNEUMONIA, 0 NORMAL, per film.
        alpha: the largest share of pneumonias the low tier may hold (with `confidence`).
        beta: the largest share of normal films the high tier may hold (with `confidence`).
        confidence: one-sided confidence of each guarantee.
        site, source, created: recorded with the tiers and named in the guarantee sentences.
    Returns:
        TriageTiers. A class with too few films for its promise gets no tier (cut None).
    Raises:
        ValueError: alpha, beta or confidence outside (0, 1), or probabilities and labels of
            different lengths.
    """
    p = np.asarray(probabilities, np.float64).reshape(-1)
    y = np.asarray(labels).astype(int).reshape(-1)
    if len(p) != len(y):
        raise ValueError(f"{len(p)} probabilities but {len(y)} labels")
    for name, value in (("alpha", alpha), ("beta", beta), ("confidence", confidence)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    positives, negatives = np.sort(p[y == 1]), np.sort(p[y == 0])[::-1]
    n1, n0 = len(positives), len(negatives)
    k = most_allowed(n1, alpha, confidence)      # pneumonias the low tier may hold
    m = most_allowed(n0, beta, confidence)       # normals the high tier may hold
    # Low: p < the (k+1)-th lowest pneumonia score, so at most k site pneumonias are below it.
    low_cut = float(positives[k]) if k >= 0 else None
    # High: p >= just above the (m+1)-th highest normal score, so at most m site normals reach it.
    high_cut = float(np.nextafter(negatives[m], 2.0)) if m >= 0 else None
    draft = TriageTiers(low_cut, high_cut, alpha, beta, confidence, n1, n0, site, source, created=created)
    tiers = draft.tiers(p)
    missed, false_alarms = int(np.sum((tiers == "low") & (y == 1))), int(np.sum((tiers == "high") & (y == 0)))
    larger = tuple({"factor": f, "n_pneumonia": n1 * f, "n_normal": n0 * f,
                    "alpha": round(upper_bound(missed * f, n1 * f, confidence), 4),
                    "beta": round(upper_bound(false_alarms * f, n0 * f, confidence), 4)} for f in LARGER_SETS)
    return TriageTiers(low_cut, high_cut, alpha, beta, confidence, n1, n0, site, source, missed, false_alarms,
                       float(np.mean(tiers != "uncertain")) if len(p) else 0.0,
                       round(smallest_rate(n1, confidence), 4), round(smallest_rate(n0, confidence), 4),
                       larger, created)


def tiers_for(version_dir) -> TriageTiers | None:
    """The tiers of a version: from its newest site report that carries them ("triage" key).

    Args:
        version_dir: the model version folder (site reports in `site_reports/<site>.json`).
    Returns:
        TriageTiers, or None when the version has no site guarantee.
    """
    folder = Path(version_dir) / "site_reports"
    if not folder.is_dir():
        return None
    reports = []
    for path in folder.glob("*.json"):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue   # a report being written or damaged: the others still count
        if isinstance(report, dict) and report.get("triage"):
            reports.append(report)
    if not reports:
        return None
    newest = max(reports, key=lambda r: r.get("created", ""))
    return TriageTiers.from_dict({"site": newest.get("site", ""), "created": newest.get("created", ""),
                                  **newest["triage"]})
