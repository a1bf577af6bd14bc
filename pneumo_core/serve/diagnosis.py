"""One film in, one explained call out: what the Diagnose page and reports show, and in which words.

The words and numbers a clinician reads are decided here, once, for the screen and the report:

- `format_probability`: two decimals, and "< 0.01" / "> 0.99" at the ends (no model is 100 % sure);
- `strength_words` / `scale_position`: where the probability sits against the model's operating
  point, in log-odds, so "well above the threshold" means the same at a 0.87 threshold as at 0.5
  (probabilities are calibrated to a training set that is 74 % pneumonia: 0.8 can be a NORMAL call);
- `certainty`: clear / probable / borderline, and "not assessable" when the film is unlike the
  training films (the call is still shown, never relied on); a version with no site guarantee
  never says "clear" or "well above": its certainty is "not validated at this site";
- `tier` / `tier_guarantee`: the site's triage tier (low / uncertain / high, `evaluation.triage`) and
  the sentence naming the site films it rests on; None when the version has no site guarantee;
- `priority` / `order_key` / `worklist_order`: the one order of every list of calls (Diagnose's
  worklist and the PACS Worklist): with tiers, high, uncertain, low; without, check (not assessable
  or borderline) pinned to the top, then urgent (PNEUMONIA), then routine (NORMAL); highest
  probability first within each; films not scored last;
- `format_date` / `local_time`: dates in the reader's locale style, times with their zone;
- `shows_heatmap`: heatmaps are drawn for PNEUMONIA and borderline calls (on request for NORMAL).

Heatmaps always explain the PNEUMONIA logit (evidence *for pneumonia*, whatever the call), are
restricted to the chest (`heatmap.chest_mask`), scaled by the film's evidence (`heatmap.by_evidence`:
one scale for every film of a model) and are stored at model resolution as uint8.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from pneumo_core.evaluation.triage import NOT_VALIDATED, TIERS, TriageTiers, tiers_for
from pneumo_core.explain.heatmap import by_evidence, chest_mask, restrict, to_uint8
from pneumo_core.imaging.films import FilmInfo
from pneumo_core.imaging.ood import WARNING as OOD_WARNING
from pneumo_core.imaging.ood import OODDetector, assess

if TYPE_CHECKING:  # TensorFlow is imported only when a model is actually loaded
    from pneumo_core.explain.cam import BaseCAM, DeletionCurve
    from pneumo_core.learn.model import PneumoModel

NOTICE = "Decision support, not a diagnosis: a clinician must review every film."
# Log-odds distance from the threshold: under 1.0 is borderline ("just above/below"), under 2.5
# probable, beyond that clear ("well above/below"). 1.0 in log-odds is 0.87 -> 0.95 at a 0.87 threshold.
BORDERLINE, CLEAR = 1.0, 2.5
SCALE_SPAN = 5.0   # the strength scale runs from -5 to +5 log-odds around the threshold
BORDERLINE_TEXT = "borderline: close to the threshold, a second reading is advised"
NOT_ASSESSABLE_TEXT = ("not assessable: the film is unlike the training films, so the call is shown but must not "
                       "be relied on; a clinician must read this film")
NOT_VALIDATED_TEXT = (f"{NOT_VALIDATED}: how far a call can be trusted was measured on films of the training "
                      f"source only; validate this version on the site's films (site validate)")
# The tier of a film flagged as unlike the training films: the site's guarantee assumes films like the site's.
OOD_TIER_TEXT = ("Uncertain: the film is unlike the training films, so the site's guarantee does not cover it; "
                 "it needs a full read.")
PRIORITIES = ("check", "urgent", "routine")   # worklist order, top first
NOT_SCORED = "not scored"   # a film listed without a call (skipped, failed, waiting): after every call
PRIORITY_MEANING = {"check": "not assessable or borderline: read first, the model cannot vouch for it",
                    "urgent": "called PNEUMONIA", "routine": "called NORMAL",
                    "high": "site tier high: read first", "uncertain": "site tier uncertain: needs a full read",
                    "low": "site tier low", NOT_SCORED: "no call (skipped, failed or waiting)"}
ORDER_TEXT = ("Order: the site's triage tiers first (high, then uncertain: needs a full read, then low); without "
              "them, check (not assessable or borderline), then urgent (PNEUMONIA), then routine (NORMAL); "
              "highest probability first within each; films not scored last.")
# Date patterns by locale (language, or language-REGION): the order and separators a reader expects.
# Without a locale, ISO 8601 (unambiguous). Babel is not a runtime dependency; these cover the sites' locales.
DATE_PATTERNS = {"en-us": "%m/%d/%Y", "en": "%d/%m/%Y", "en-ca": "%Y-%m-%d", "de": "%d.%m.%Y", "fr": "%d/%m/%Y",
                 "es": "%d/%m/%Y", "it": "%d/%m/%Y", "pt": "%d/%m/%Y", "nl": "%d-%m-%Y", "da": "%d.%m.%Y",
                 "nb": "%d.%m.%Y", "no": "%d.%m.%Y", "fi": "%d.%m.%Y", "pl": "%d.%m.%Y", "cs": "%d.%m.%Y",
                 "ru": "%d.%m.%Y", "tr": "%d.%m.%Y", "sv": "%Y-%m-%d", "lt": "%Y-%m-%d", "ja": "%Y/%m/%d",
                 "zh": "%Y/%m/%d", "ko": "%Y. %m. %d."}


def _logit(q: float) -> float:
    q = min(max(float(q), 1e-6), 1 - 1e-6)
    return float(np.log(q / (1 - q)))


def margin(probability: float, threshold: float) -> float:
    """Signed log-odds distance of the probability from the threshold (> 0: above it)."""
    return _logit(probability) - _logit(threshold)


def format_probability(probability: float) -> str:
    """'0.42', and '< 0.01' / '> 0.99' at the ends: a model is never certain, so '1.000' is never shown."""
    p = float(probability)
    if p < 0.01:
        return "< 0.01"
    if p > 0.99:
        return "> 0.99"
    return f"{p:.2f}"


def probability_phrase(probability: float) -> str:
    """'= 0.42', '> 0.99', '< 0.01': what follows 'p' on every surface (page, PDF, SR, secondary capture)."""
    text = format_probability(probability)
    return text if text[0] in "<>" else f"= {text}"


def strength_words(probability: float, threshold: float, validated: bool = True) -> str:
    """'well above the threshold', 'just below the threshold', … (log-odds distance, see BORDERLINE, CLEAR).

    Without a site validation (`validated` False) there is no 'well': distance from a threshold set on
    the training source says little at a new site.
    """
    m = margin(probability, threshold)
    side = "above" if probability >= threshold else "below"
    size = abs(m)
    if size < BORDERLINE:
        return f"just {side} the threshold"
    if size < CLEAR or not validated:
        return f"{side} the threshold"
    return f"well {side} the threshold"


def scale_position(probability: float, threshold: float) -> float:
    """Where to mark the call on a scale from 0 (far below) through 0.5 (the threshold) to 1 (far above)."""
    return float(0.5 + np.clip(margin(probability, threshold), -SCALE_SPAN, SCALE_SPAN) / (2 * SCALE_SPAN))


def certainty(probability: float, threshold: float, ood_flag: bool | None = None, validated: bool = True) -> str:
    """How far the call is from the threshold, in words a clinician reads.

    Measured in log-odds, so 0.95 vs a 0.90 threshold counts as close as 0.10 vs 0.18. A film flagged
    as unlike the training films is 'not assessable' whatever its distance from the threshold.

    Args:
        probability: the model's probability of PNEUMONIA; threshold: its operating point.
        ood_flag: the out-of-distribution flag (None: the model version has no detector).
        validated: whether the version has a site guarantee (triage tiers); without one, no call is
            'probable' or 'clear' (a default model was 'clear' on normal films at p 0.95-0.99 at a new site).
    Returns:
        'not assessable: …', 'borderline: …', 'not validated at this site: …', 'probable' or 'clear'
        (the words before the colon are the short form).
    """
    if ood_flag:
        return NOT_ASSESSABLE_TEXT
    size = abs(margin(probability, threshold))
    if size < BORDERLINE:
        return BORDERLINE_TEXT
    if not validated:
        return NOT_VALIDATED_TEXT
    if size < CLEAR:
        return "probable"
    return "clear"


def format_date(value: str | None, locale: str | None = None) -> str:
    """A study date in the reader's locale style: '12/06/2026' (en-US), '06.12.2026' (de), ISO without a locale.

    Args:
        value: 'YYYYMMDD' (DICOM) or 'YYYY-MM-DD'; anything else is returned as it is, None as ''.
        locale: the reader's locale, e.g. the browser's 'en-US' or 'de-DE' (None: ISO 8601).
    Returns:
        The date as the reader writes it.
    """
    if not value:
        return ""
    digits = value.replace("-", "")
    try:
        day = datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        return value
    tag = (locale or "").strip().lower().replace("_", "-")
    pattern = DATE_PATTERNS.get(tag) or DATE_PATTERNS.get(tag.split("-")[0]) if tag else None
    return day.strftime(pattern or "%Y-%m-%d")


def local_time(when_iso: str) -> str:
    """An ISO time (UTC, as stored) in the server's local time with its zone: '2026-11-26 07:05 CET (UTC+01:00)'."""
    local = datetime.fromisoformat(when_iso).astimezone()
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} (UTC{offset[:3]}:{offset[3:]})"


@dataclass
class Diagnosis:
    name: str                        # the file name, for the screen only: never on a report
    probability: float
    label: str
    threshold: float
    certainty: str
    heatmap: np.ndarray | None       # evidence for PNEUMONIA inside the chest, (S, S) uint8 at model resolution
    method: str | None
    model_id: str
    sha256: str                      # the film's identity (content, not name)
    when: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    ood_score: float | None = None   # 1.0 = the flag line; None: the model version has no OOD detector
    ood_flag: bool | None = None
    info: FilmInfo | None = None     # format, and for DICOM modality, view, study date and study identifiers
    tier: str | None = None          # 'low' / 'uncertain' / 'high' (golive.triage); None: no site guarantee
    tier_guarantee: str | None = None   # the sentence shown with the tier, naming the site's films

    @property
    def warnings(self) -> list[str]:
        """Cautions that must be shown with the call (never instead of it)."""
        return [OOD_WARNING] if self.ood_flag else []

    @property
    def certainty_word(self) -> str:
        """'clear', 'probable', 'borderline', 'not assessable' or 'not validated at this site'."""
        return self.certainty.split(":")[0]

    @property
    def validated(self) -> bool:
        """Whether the version has a site guarantee (a tier) for this call."""
        return self.tier is not None

    @property
    def probability_text(self) -> str:
        return format_probability(self.probability)

    @property
    def strength(self) -> str:
        return strength_words(self.probability, self.threshold, self.validated)

    @property
    def priority(self) -> str:
        return priority(self)

    @property
    def shows_heatmap(self) -> bool:
        return shows_heatmap(self)


def is_borderline(d: Diagnosis) -> bool:
    return abs(margin(d.probability, d.threshold)) < BORDERLINE


def call_priority(label: str | None, probability: float | None, threshold: float | None,
                  ood_flag: bool | None, tier: str | None = None) -> str:
    """The priority word of one call, as every list shows it: its site tier, else check / urgent / routine.

    'check' (not assessable or borderline) comes first among calls without a tier: the model cannot
    vouch for these films, so their place in a list sorted by probability would be a guess.

    Args:
        label: the call (None: not scored); probability, threshold: the call's numbers.
        ood_flag: the out-of-distribution flag; tier: the site's triage tier (None: no site guarantee).
    Returns:
        'high', 'uncertain', 'low', 'check', 'urgent', 'routine' or 'not scored'.
    """
    if label is None or probability is None:
        return NOT_SCORED
    if tier in TIERS:
        return tier
    if ood_flag or abs(margin(probability, threshold)) < BORDERLINE:
        return "check"
    return "urgent" if label == "PNEUMONIA" else "routine"


def order_key(label: str | None, probability: float | None, threshold: float | None, ood_flag: bool | None,
              tier: str | None = None, study: str = "") -> tuple[int, float, str]:
    """The sort key of one call in every list of calls (Diagnose's worklist, the PACS Worklist).

    Tiers first (high, uncertain, low: the site's guarantee orders them), then calls without a tier by
    priority (check, urgent, routine), then films not scored; highest probability first within each;
    equal probabilities by `study` (the Study Instance UID where there is one), so that two pages
    listing the same films in different arrival orders still agree.
    """
    word = call_priority(label, probability, threshold, ood_flag, tier)
    groups = (*TIERS, *PRIORITIES, NOT_SCORED)
    return groups.index(word), -(probability or 0.0), study or ""


def priority(d: Diagnosis) -> str:
    """The call's priority word (`call_priority`): its tier, else 'check', 'urgent' or 'routine'."""
    return call_priority(d.label, d.probability, d.threshold, d.ood_flag, d.tier)


def worklist_order(diagnoses: list[Diagnosis]) -> list[int]:
    """Indices of `diagnoses` in worklist order (`order_key`; ties by Study Instance UID, else the film's hash)."""
    def key(d: Diagnosis):
        study = (d.info.study_instance_uid if d.info is not None else None) or d.sha256
        return order_key(d.label, d.probability, d.threshold, d.ood_flag, d.tier, study)
    return sorted(range(len(diagnoses)), key=lambda i: key(diagnoses[i]))


def tier_of(tiers: TriageTiers | None, probability: float, ood_flag: bool | None) -> tuple[str | None, str | None]:
    """(tier, guarantee sentence) of one call; (None, None) without tiers.

    A film flagged as unlike the training films is 'uncertain' whatever its probability: the site's
    guarantee holds for films like the site's.
    """
    if tiers is None:
        return None, None
    if ood_flag:
        return "uncertain", OOD_TIER_TEXT
    tier = tiers.tier(probability)
    return tier, tiers.guarantee(tier)


def shows_heatmap(d: Diagnosis) -> bool:
    """Whether the page draws the heatmap without being asked: PNEUMONIA and borderline calls.

    A NORMAL call's heatmap would show where the weak evidence for pneumonia is, which a reader
    easily takes for a lesion, so it is drawn only on request.
    """
    return d.heatmap is not None and (d.label == "PNEUMONIA" or is_borderline(d))


class Diagnoser:
    """A loaded model with its CAM objects and OOD detector; safe to share between sessions and threads."""

    def __init__(self, model: PneumoModel):
        self.model = model
        self.ood = OODDetector.load(model.path)
        self._cams: dict[str, BaseCAM] = {}
        self._lock = threading.Lock()

    @property
    def tiers(self) -> TriageTiers | None:
        """The version's triage tiers, read afresh (a site validation while the server runs counts at once)."""
        return tiers_for(self.model.path)

    def cam(self, method: str) -> BaseCAM:
        from pneumo_core.explain.cam import make_cam
        with self._lock:
            if method not in self._cams:
                self._cams[method] = make_cam(self.model.keras, method)
            return self._cams[method]

    def diagnose(self, gray: np.ndarray, name: str = "film", method: str | None = "gradcam",
                 data: bytes | None = None, info: FilmInfo | None = None) -> Diagnosis:
        """Call, probability, certainty, OOD score and (with a `method`) the heatmap of the evidence
        for PNEUMONIA inside the chest, all from one forward pass."""
        if method is None:
            probability, embeddings = self.model.predict_and_embed([gray])
            heatmap = None
        else:
            maps, probability, embeddings = self.cam(method).explain_and_embed(self.model.inputs([gray]), target=1)
            probability = self.model.tta_adjust([gray], probability)   # versions scored over augmented views
            # Where (restricted to the chest, peak 1) times how much (the call's distance from the threshold).
            heatmap = to_uint8(by_evidence(restrict(maps[0], chest_mask(gray, maps.shape[1])),
                                           float(probability[0]), self.model.threshold))
        p = float(probability[0])
        ((ood_score, ood_flag),) = assess(self.ood, embeddings)
        tier, guarantee = tier_of(self.tiers, p, ood_flag)
        return Diagnosis(name=name, probability=p, label=self.model.label(p), threshold=self.model.threshold,
                         certainty=certainty(p, self.model.threshold, ood_flag, validated=tier is not None),
                         heatmap=heatmap, method=method, model_id=self.model.id,
                         sha256=hashlib.sha256(data if data is not None else gray.tobytes()).hexdigest(),
                         ood_score=ood_score, ood_flag=ood_flag, info=info, tier=tier, tier_guarantee=guarantee)

    def faithfulness(self, gray: np.ndarray, heatmap: np.ndarray, method: str = "gradcam") -> DeletionCurve:
        """The deletion curve of a heatmap of this film (see `cam.BaseCAM.deletion_curve`)."""
        return self.cam(method).deletion_curve(self.model.inputs([gray])[0], heatmap)


def truth_and_call(truth: int | None, probability: float, threshold: float) -> str:
    """'truth: NORMAL, call: PNEUMONIA, p = 0.93' for a labelled film (truth None: 'call: …' only)."""
    call = "PNEUMONIA" if probability >= threshold else "NORMAL"
    known = "" if truth is None else f"truth: {'PNEUMONIA' if truth else 'NORMAL'}, "
    return f"{known}call: {call}, p {probability_phrase(probability)}"
