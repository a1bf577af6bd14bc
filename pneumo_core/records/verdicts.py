"""Reader verdicts: what the reader decided about a film, next to the call the model made.

A verdict is the reader's own read of a film (NORMAL, PNEUMONIA or not-assessable), optionally the
lung zones it concerns and a short note, recorded by a signed-in clinician, ML lead or admin (never
an auditor: `access.PERMISSIONS["record_verdict"]`). Agreement is derived, never typed: a read
equal to the judged call agrees, the other class disagrees, and not-assessable neither (it is
counted, and left out of the accuracy figures).

Where it is kept: an event of kind "verdict" in the audit trail's hash-chained `events` table
(`AuditTrail.event`), so `audit verify` covers it with the rest, and the append-only rules apply:
a later verdict on the same film supersedes an earlier one by appending (its `supersedes` names
the earlier event), never by rewriting. Each verdict names the film by its content hash and the
audit `diagnoses` row it judges (which model version, probability, call and tier were shown).
The note is free text in the audit trail: the form asks readers to keep patient details out of it.
"""
from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass

from pneumo_core.errors import PneumoError
from pneumo_core.records.access import Actor, require

KIND = "verdict"
READS = ("NORMAL", "PNEUMONIA", "not-assessable")
# The lung zones a reader may point at (right: upper, middle, lower; left: upper, lingula, lower).
ZONES = ("right-upper", "right-middle", "right-lower", "left-upper", "lingula", "left-lower")
ZONE_NAMES = {"right-upper": "right upper", "right-middle": "right middle", "right-lower": "right lower",
              "left-upper": "left upper", "lingula": "lingula", "left-lower": "left lower"}
NOTE_LIMIT = 1000   # characters: a note, not a report


class VerdictError(PneumoError, ValueError):
    """A verdict that cannot be recorded: unknown read or zone, a note too long, or no such diagnosis."""


@dataclass(frozen=True)
class Verdict:
    """One recorded verdict (an audit event) with what it judged."""
    id: int                    # the audit event's id
    time: str                  # when it was recorded (UTC ISO)
    who: str | None
    sha256: str                # the film's content hash
    diagnosis_id: int          # the audit diagnoses row it judges
    model: str                 # that row's model version
    call: str                  # that row's call
    probability: float
    tier: str | None           # that row's triage tier ("low", "uncertain", "high"), None when it had none
    read: str                  # the reader's read: one of READS
    zones: tuple[str, ...] = ()
    note: str = ""
    source: str = ""           # "dashboard", "cli", ...
    supersedes: int | None = None   # the event id of the film's previous verdict

    @property
    def agree(self) -> bool | None:
        """True when the read equals the call, False when it is the other class, None when not assessable."""
        return agreement(self.read, self.call)

    def summary(self) -> str:
        """'PNEUMONIA (disagrees with the call NORMAL), right lower' in words for a screen or report."""
        words = {True: "agrees with", False: "disagrees with", None: "no call judged against"}[self.agree]
        zones = ", ".join(ZONE_NAMES[z] for z in self.zones)
        return f"{self.read} ({words} the call {self.call})" + (f"; zones: {zones}" if zones else "")


def agreement(read: str, call: str) -> bool | None:
    """Whether a reader's read agrees with a call: None for not-assessable (neither)."""
    if read == "not-assessable":
        return None
    return read == call


def check_read(read: str, zones=(), note: str = "") -> tuple[str, tuple[str, ...], str]:
    """The read, zones and note as stored; raises VerdictError naming what is accepted."""
    names = {r.lower(): r for r in READS} | {"not assessable": "not-assessable"}
    clean = names.get(str(read).strip().lower())
    if clean is None:
        raise VerdictError(f"unknown read {read!r}; give one of {', '.join(READS)}")
    zones = tuple(dict.fromkeys(str(z).strip().lower().replace(" ", "-") for z in zones or ()))
    unknown = [z for z in zones if z not in ZONES]
    if unknown:
        raise VerdictError(f"unknown zone(s) {', '.join(unknown)}; zones are {', '.join(ZONES)}")
    note = (note or "").strip()
    if len(note) > NOTE_LIMIT:
        raise VerdictError(f"the note has {len(note)} characters; keep it under {NOTE_LIMIT}")
    return clean, zones, note


def diagnosis_row(trail, diagnosis_id: int) -> dict:
    """The audit `diagnoses` row `diagnosis_id` (all its columns); raises VerdictError when there is none."""
    with closing(trail.connection()) as db:
        row = db.execute("SELECT * FROM diagnoses WHERE id = ?", (int(diagnosis_id),)).fetchone()
    if row is None:
        raise VerdictError(f"no diagnosis {diagnosis_id} in the audit trail {trail.path}; score the film first")
    return dict(row)


def latest_diagnosis(trail, sha256: str, model: str | None = None) -> dict | None:
    """The newest audit `diagnoses` row of a film (of one model version when given), or None."""
    sql = "SELECT * FROM diagnoses WHERE sha256 = ?" + (" AND model = ?" if model else "") + " ORDER BY id DESC"
    with closing(trail.connection()) as db:
        row = db.execute(sql + " LIMIT 1", (sha256, model) if model else (sha256,)).fetchone()
    return None if row is None else dict(row)


def record_verdict(trail, actor: Actor | None, diagnosis_id: int, read: str, zones=(), note: str = "",
                   source: str = "dashboard") -> Verdict:
    """Append the reader's verdict on the call of audit diagnosis `diagnosis_id`.

    Args:
        trail: the AuditTrail; actor: the signed-in reader (clinician, ml_lead or admin).
        diagnosis_id: the audit `diagnoses` row shown to the reader.
        read: "NORMAL", "PNEUMONIA" or "not-assessable"; zones: any of ZONES; note: free text (no patient details).
        source: where it was given: "dashboard", "worklist", "cli".
    Returns:
        The recorded Verdict (it supersedes the film's previous verdict, if any).
    Raises:
        PermissionDenied for an auditor or nobody signed in; VerdictError for an unknown read or zone,
        a long note, or no such diagnosis.
    """
    require(actor, "record_verdict")
    read, zones, note = check_read(read, zones, note)
    row = diagnosis_row(trail, diagnosis_id)
    previous = history(trail, row["sha256"])
    details = {"sha256": row["sha256"], "diagnosis_id": int(row["id"]), "model": row["model"], "call": row["call"],
               "probability": float(row["probability"]), "tier": row.get("tier"), "read": read,
               "agree": agreement(read, row["call"]), "zones": list(zones), "note": note, "source": source,
               "supersedes": previous[-1].id if previous else None}
    event_id = trail.event(KIND, actor.name, **details)
    return _verdict({"id": event_id, "time": _event_time(trail, event_id), "who": actor.name, "details": details})


def verdicts(trail) -> list[Verdict]:
    """Every verdict ever recorded, oldest first (superseded ones included)."""
    return [_verdict(e) for e in reversed(trail.events(kind=KIND))]


def history(trail, sha256: str) -> list[Verdict]:
    """The verdicts on one film, oldest first; the last one is the one that counts."""
    return [v for v in verdicts(trail) if v.sha256 == sha256]


def latest_verdicts(trail, model: str | None = None) -> dict[str, Verdict]:
    """The latest verdict per film: {sha256: Verdict}, in the order they were given.

    Args:
        trail: the AuditTrail.
        model: keep only films whose latest verdict judged this model version's call (a film judged
            again after a re-score counts for the version judged last).
    """
    latest: dict[str, Verdict] = {}
    for verdict in verdicts(trail):
        latest.pop(verdict.sha256, None)
        latest[verdict.sha256] = verdict
    return {sha: v for sha, v in latest.items() if model is None or v.model == model}


def _event_time(trail, event_id: int) -> str:
    with closing(trail.connection()) as db:
        return db.execute("SELECT time FROM events WHERE id = ?", (int(event_id),)).fetchone()[0]


def _verdict(event: dict) -> Verdict:
    d = event["details"]
    return Verdict(id=int(event["id"]), time=event["time"], who=event["who"], sha256=d["sha256"],
                   diagnosis_id=int(d["diagnosis_id"]), model=d["model"], call=d["call"],
                   probability=float(d["probability"]), tier=d.get("tier"), read=d["read"],
                   zones=tuple(d.get("zones") or ()), note=d.get("note") or "", source=d.get("source") or "",
                   supersedes=d.get("supersedes"))
