"""PACS round trip over DICOMweb: new chest films in, results back as DICOM, and a worklist.

- `PacsClient`: QIDO-RS search, WADO-RS retrieve and STOW-RS store through `dicomweb-client`,
  with HTTP basic auth or a bearer token from the settings (none configured: no auth is sent).
- `PacsState`: what the watcher knows, in SQLite (`PNEUMO_HOME/pacs.sqlite`): one row per
  (film SOP Instance UID, model version) with its status (new, scored, stored, skipped, failed),
  the call and where the results went; plus the last poll and the last error. No patient name
  is kept: films are named by their UIDs.
- `Watcher`: one poll = find CR/DX/DR films of recent studies (QIDO-RS on study date, from the
  day before the last poll), score each new frontal film with the heatmap, write the SR and the
  heatmap Secondary Capture (`dicom_out`) to an outbox in PNEUMO_HOME, record the call in the
  audit trail, then STOW-RS both to the film's study and empty the outbox.

Why it is idempotent and loses nothing: a film is scored only if no row for (film, model) says
it was; a scored film's results wait in the outbox until the archive has accepted them, and their
UIDs are derived from (film, model), so storing them again after a failure replaces the same
instances instead of adding copies. When the archive cannot be reached the poll stops where it
is and the watcher retries with exponential back-off; the next poll starts with what is left.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import requests

from pneumo_core.errors import ConfigError, ImageError, PacsError, PacsUnavailable

log = logging.getLogger(__name__)

MODALITIES = ("CR", "DX", "DR")
FIELDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "ViewPosition",
          "BodyPartExamined", "StudyDate", "AccessionNumber"]
MAX_ATTEMPTS = 3          # a film whose scoring fails (not a skip, not the archive) is tried this often
BUSY_MS = 30_000
PRIORITY = {0: "PNEUMONIA", 1: "borderline", 2: "NORMAL", 3: "not scored"}


@dataclass(frozen=True)
class FilmRef:
    """Where a film is in the archive, and the header facts the search returned (no patient data)."""
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""
    view: str = ""
    study_date: str = ""
    accession: str = ""


class PacsClient:
    """A DICOMweb archive at `url` (e.g. `http://pacs:8042/dicom-web`).

    Args:
        url: the DICOMweb root.
        user, password: HTTP basic auth; token: a bearer token (used when no user is given).
        timeout: seconds per request.
        compression: ask the archive to gzip its answers (worth it only on slow links).
    """

    def __init__(self, url: str, user: str = "", password: str = "", token: str = "", timeout: float = 30,
                 compression: bool = False):
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session, create_session_from_user_pass
        if not url:
            raise ConfigError("no PACS URL: pass --url or set PNEUMO_PACS_URL to the archive's DICOMweb root, "
                              "e.g. http://pacs:8042/dicom-web")
        self.url = url.rstrip("/")
        session = create_session_from_user_pass(user, password) if user else create_session()
        if not compression:
            # Measured on Orthanc 1.10 (gzip on by default): a 3.4 Mpx CR took 450 ms to retrieve
            # gzipped and 45 ms plain over localhost; the archive's CPU pays the difference for every film.
            session.headers["Accept-Encoding"] = "identity"
        headers = {"Authorization": f"Bearer {token}"} if token and not user else None
        self._client = DICOMwebClient(self.url, session=session, headers=headers, timeout=timeout)
        # One retry policy, the watcher's back-off, instead of a second one hidden in each request.
        self._client.set_http_retry_params(retry=False)

    @classmethod
    def from_settings(cls, settings, url: str | None = None) -> PacsClient:
        """The archive named by `url` or the settings, with the settings' credentials."""
        return cls(url or settings.pacs_url, settings.pacs_user, settings.pacs_password, settings.pacs_token)

    def _call(self, what: str, function, *args, **kwargs):
        """Run one DICOMweb request; archive down -> PacsUnavailable, refused -> PacsError."""
        try:
            return function(*args, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise PacsUnavailable(f"the archive at {self.url} cannot be reached ({type(error).__name__}) "
                                  f"during {what}") from None
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            if status in (401, 403):
                raise PacsError(f"the archive at {self.url} refused the credentials ({status}) during {what}; check "
                                f"PNEUMO_PACS_USER / PNEUMO_PACS_PASSWORD or PNEUMO_PACS_TOKEN", status) from None
            if status >= 500 or status in (408, 429):
                raise PacsUnavailable(f"the archive at {self.url} answered {status} during {what}", status) from None
            raise PacsError(f"the archive at {self.url} answered {status} during {what}: "
                            f"{error.response.text[:200] if error.response is not None else ''}", status) from None

    def search_films(self, since: date | None = None, study_uid: str | None = None,
                     modalities: tuple[str, ...] = MODALITIES) -> list[FilmRef]:
        """Instances of `modalities` (default: radiographs, CR DX DR) of studies dated `since` or
        later, or of one study (QIDO-RS).

        Args:
            since: earliest study date (None: any date).
            study_uid: only this study.
            modalities: e.g. ("SR",) to find the results.
        Returns:
            One FilmRef per instance, in the archive's order.
        """
        filters = {"Modality": ",".join(modalities)}
        if since:
            filters["StudyDate"] = f"{since:%Y%m%d}-"
        if study_uid:
            filters["StudyInstanceUID"] = study_uid
        found = self._call("a search (QIDO-RS)", self._client.search_for_instances, search_filters=filters,
                           fields=FIELDS, get_remaining=True)
        return [_film_ref(item) for item in found]

    def retrieve(self, film: FilmRef):
        """The film's pydicom Dataset (WADO-RS)."""
        return self._call("a retrieve (WADO-RS)", self._client.retrieve_instance, film.study_uid, film.series_uid,
                          film.sop_uid)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str):
        """Any instance's pydicom Dataset (WADO-RS)."""
        return self.retrieve(FilmRef(study_uid, series_uid, sop_uid))

    def store(self, datasets, study_uid: str) -> None:
        """Store instances into a study (STOW-RS); raises PacsError if the archive refuses any."""
        datasets = list(datasets)
        for ds in datasets:
            # dicomweb-client writes what it is given; without a preamble some archives (Orthanc 1.10)
            # keep a file that WADO-RS clients then refuse as not DICOM. Every instance goes out as a file.
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\0" * 128
        answer = self._call("a store (STOW-RS)", self._client.store_instances, datasets, study_uid)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = ", ".join(str(item.get("FailureReason", "?")) for item in failed)
            raise PacsError(f"the archive at {self.url} refused {len(failed)} instance(s) (reasons {reasons})")


def _film_ref(item: dict) -> FilmRef:
    def value(keyword_tag: str) -> str:
        values = item.get(keyword_tag, {}).get("Value") or [""]
        return str(values[0])
    return FilmRef(value("0020000D"), value("0020000E"), value("00080018"), value("00080060"), value("00185101"),
                   value("00080020"), value("00080050"))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS films (
    sop_uid TEXT NOT NULL, model TEXT NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
    modality TEXT, view TEXT, study_date TEXT, accession TEXT, status TEXT NOT NULL, reason TEXT,
    label TEXT, probability REAL, threshold REAL, certainty TEXT, ood_score REAL, ood_flag INTEGER,
    sr_uid TEXT, sc_uid TEXT, sc_series TEXT, audit_id INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    discovered TEXT, scored TEXT, stored TEXT, PRIMARY KEY (sop_uid, model));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class PacsState:
    """The watcher's SQLite state at `path` (WAL; one short connection per call, safe across processes)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _execute(self, sql: str, args=()) -> list[dict]:
        with closing(self._connect()) as db:
            return [dict(r) for r in db.execute(sql, args).fetchall()]

    def add(self, films: list[FilmRef], model: str) -> int:
        """Record films not yet known for `model`; returns how many were new."""
        with closing(self._connect()) as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO films (sop_uid, model, study_uid, series_uid, modality, view, "
                           "study_date, accession, status, discovered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'new', ?)",
                           [(f.sop_uid, model, f.study_uid, f.series_uid, f.modality, f.view, f.study_date,
                             f.accession, _now()) for f in films])
            return db.total_changes - before

    def update(self, sop_uid: str, model: str, **values) -> None:
        names = ", ".join(f"{k} = ?" for k in values)
        self._execute(f"UPDATE films SET {names} WHERE sop_uid = ? AND model = ?", [*values.values(), sop_uid, model])

    def films(self, model: str | None = None, statuses: tuple[str, ...] | None = None,
              study_uid: str | None = None) -> list[dict]:
        """Rows, oldest discovered first, optionally of one model, some statuses, one study."""
        where, args = [], []
        if model:
            where.append("model = ?")
            args.append(model)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        if study_uid:
            where.append("study_uid = ?")
            args.append(study_uid)
        return self._execute("SELECT * FROM films" + (f" WHERE {' AND '.join(where)}" if where else "")
                             + " ORDER BY discovered, rowid", args)

    def get_meta(self, key: str) -> str | None:
        rows = self._execute("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, **values) -> None:
        with closing(self._connect()) as db:
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           [(k, None if v is None else str(v)) for k, v in values.items()])

    def status(self) -> dict:
        """Last poll, backlog (films found but not yet in the archive with a result), counts, recent errors."""
        counts = {r["status"]: r["n"] for r in self._execute("SELECT status, COUNT(*) n FROM films GROUP BY status")}
        errors = self._execute("SELECT sop_uid, study_uid, model, status, reason, attempts FROM films "
                               "WHERE status = 'failed' ORDER BY discovered DESC LIMIT 20")
        return {"url": self.get_meta("url"), "model": self.get_meta("model"), "last_poll": self.get_meta("last_poll"),
                "last_error": self.get_meta("last_error"), "last_error_time": self.get_meta("last_error_time"),
                "backlog": counts.get("new", 0) + counts.get("scored", 0), "counts": counts, "errors": errors}


def priority(row: dict) -> int:
    """0 PNEUMONIA, 1 borderline NORMAL, 2 NORMAL, 3 not scored (skipped, failed, waiting)."""
    if row.get("label") is None:
        return 3
    if row["label"] == "PNEUMONIA":
        return 0
    return 1 if str(row.get("certainty") or "").startswith("borderline") else 2


def worklist(state: PacsState, limit: int = 500) -> list[dict]:
    """The watcher's films, most urgent first: PNEUMONIA, then borderline, then NORMAL (each by
    probability, highest first), then films not scored with the reason.

    Returns:
        Rows of the state plus `priority` (0..3), `priority_name` and `in_archive` (the SR was stored).
    """
    rows = state._execute("SELECT * FROM films ORDER BY discovered DESC, rowid DESC LIMIT ?", (int(limit),))
    for row in rows:
        row["priority"] = priority(row)
        row["priority_name"] = PRIORITY[row["priority"]]
        row["in_archive"] = row["status"] == "stored"
        row["ood_flag"] = None if row["ood_flag"] is None else bool(row["ood_flag"])
    return sorted(rows, key=lambda r: (r["priority"], -(r["probability"] or 0.0)))


class Watcher:
    """Scores the archive's new chest films with one model version and sends the results back.

    Args:
        client: the archive.
        diagnoser: a `diagnosis.Diagnoser` (its model version is the one recorded).
        state: the watcher's `PacsState`.
        audit: an `audit.AuditTrail`.
        outbox: folder where results wait until the archive accepts them.
        who: recorded with each audit row.
        method: heatmap method.
        lookback_days: how far back the first poll looks (later polls start the day before the last one).
    """

    def __init__(self, client: PacsClient, diagnoser, state: PacsState, audit, outbox: Path,
                 who: str | None = None, method: str = "gradcam", lookback_days: int = 7):
        self.client, self.diagnoser, self.state, self.audit = client, diagnoser, state, audit
        self.outbox, self.who, self.method, self.lookback_days = Path(outbox), who, method, lookback_days
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.model = diagnoser.model.id
        self.timings: dict[str, float] = {}   # seconds per step, summed (bench/pacs.py reads them)

    def _timed(self, step: str, function, *args):
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - start

    def _since(self) -> date:
        last = self.state.get_meta("last_poll")
        if last:
            return datetime.fromisoformat(last).date() - timedelta(days=1)
        return datetime.now(UTC).date() - timedelta(days=self.lookback_days)

    def poll(self, study_uid: str | None = None) -> dict:
        """Find new films (of recent studies, or of `study_uid`), score them, store the results.

        Raises PacsUnavailable when the archive cannot be reached; what was done stays done.
        Returns:
            {"found", "new", "scored", "stored", "skipped", "failed"} counts of this poll.
        """
        started = _now()
        self.state.set_meta(url=self.client.url, model=self.model)
        films = self.client.search_films(None if study_uid else self._since(), study_uid)
        summary = {"found": len(films), "new": self.state.add(films, self.model),
                   "scored": 0, "stored": 0, "skipped": 0, "failed": 0}
        todo = [r for r in self.state.films(self.model, ("new", "failed"), study_uid)
                if r["status"] == "new" or r["attempts"] < MAX_ATTEMPTS]
        for row in todo:
            outcome = self._refusal_is_a_failure(row, self._score, "failed")
            summary[outcome] += 1
            if outcome == "scored" and self._refusal_is_a_failure(row, self._store, False):
                summary["stored"] += 1
        for row in self.state.films(self.model, ("scored",), study_uid):   # left from an earlier failure
            summary["stored"] += self._refusal_is_a_failure(row, self._store, False)
        if not study_uid:
            self.state.set_meta(last_poll=started)
        return summary

    def _refusal_is_a_failure(self, row: dict, step, failed):
        """Run `step(row)`; the archive refusing this one film (not down, not our credentials) makes
        it a failure of that film, retried up to MAX_ATTEMPTS times, instead of stopping the watcher."""
        try:
            return step(row)
        except PacsUnavailable:
            raise
        except PacsError as error:
            if error.status in (401, 403):
                raise
            attempts = row["attempts"] + 1
            status = row["status"] if row["status"] == "scored" and attempts < MAX_ATTEMPTS else "failed"
            self.state.update(row["sop_uid"], self.model, status=status, attempts=attempts, reason=str(error)[:500])
            log.warning("%s: %s", row["sop_uid"], error)
            return failed

    def _paths(self, sop_uid: str) -> tuple[Path, Path]:
        return self.outbox / f"{sop_uid}.sr.dcm", self.outbox / f"{sop_uid}.sc.dcm"

    def _score(self, row: dict) -> str:
        from pneumo_core.imaging.dicom import read_dataset
        from pneumo_core.serve import dicom_out
        film_ref = FilmRef(row["study_uid"], row["series_uid"], row["sop_uid"])
        ds = self._timed("retrieve", self.client.retrieve, film_ref)
        try:
            film = self._timed("decode", read_dataset, ds, row["sop_uid"])
        except ImageError as error:
            reason = str(error).removeprefix(f"{row['sop_uid']}: ")
            self.state.update(row["sop_uid"], self.model, status="skipped", reason=reason)
            log.info("skipped %s: %s", row["sop_uid"], reason)
            return "skipped"
        try:
            d = self._timed("score", lambda: self.diagnoser.diagnose(film.gray, row["sop_uid"], self.method,
                                                                      info=film.info))
            sr, sc = self._timed("encode", lambda: (dicom_out.structured_report(ds, d),
                                                    dicom_out.heatmap_capture(ds, film.gray, d)))
            self._timed("outbox", self._to_outbox, row["sop_uid"], sr, sc)
        except Exception as error:  # a bug or a film the model cannot take: recorded, retried, then left
            log.exception("scoring %s failed", row["sop_uid"])
            self.state.update(row["sop_uid"], self.model, status="failed", attempts=row["attempts"] + 1,
                              reason=f"{type(error).__name__}: {error}"[:500])
            return "failed"
        audit_id = self.audit.record(d, source="pacs", who=self.who)
        self.state.update(row["sop_uid"], self.model, status="scored", reason=None, label=d.label,
                          probability=d.probability, threshold=d.threshold, certainty=d.certainty,
                          ood_score=d.ood_score, ood_flag=None if d.ood_flag is None else int(d.ood_flag),
                          sr_uid=sr.SOPInstanceUID, sc_uid=sc.SOPInstanceUID, sc_series=sc.SeriesInstanceUID,
                          audit_id=audit_id, scored=_now())
        row.update(status="scored")
        return "scored"

    def _to_outbox(self, sop_uid: str, sr, sc) -> None:
        for dataset, path in zip((sr, sc), self._paths(sop_uid)):
            tmp = path.with_suffix(".tmp")
            dataset.save_as(tmp, enforce_file_format=True)
            tmp.replace(path)   # whole files only: a crash never leaves half a result to send

    def _store(self, row: dict) -> bool:
        import pydicom
        sr_path, sc_path = self._paths(row["sop_uid"])
        if not sr_path.exists() or not sc_path.exists():
            # Results lost from the outbox (deleted by hand): score again rather than leave a gap.
            self.state.update(row["sop_uid"], self.model, status="new")
            return False
        self._timed("store_sr", lambda: self.client.store([pydicom.dcmread(sr_path)], row["study_uid"]))
        self._timed("store_sc", lambda: self.client.store([pydicom.dcmread(sc_path)], row["study_uid"]))
        self.state.update(row["sop_uid"], self.model, status="stored", stored=_now())
        sr_path.unlink()
        sc_path.unlink()
        return True

    def run(self, interval: float = 30, once: bool = False, max_backoff: float = 60,
            stop: threading.Event | None = None, on_poll: Callable[[dict], None] | None = None,
            max_failures: int | None = None) -> dict | None:
        """Poll every `interval` seconds (once: a single successful poll) until `stop` is set.

        When the archive is down, waits 1, 2, 4 … `max_backoff` seconds between tries and records
        the error in the state; `max_failures` consecutive failures end the run with PacsUnavailable.
        Returns:
            The last poll's summary.
        """
        stop = stop or threading.Event()
        failures, summary = 0, None
        while not stop.is_set():
            try:
                summary = self.poll()
            except PacsUnavailable as error:
                failures += 1
                self.state.set_meta(last_error=str(error), last_error_time=_now())
                if max_failures is not None and failures >= max_failures:
                    raise
                wait = min(max_backoff, 2.0 ** (failures - 1))
                log.warning("%s; retrying in %.0f s", error, wait)
                stop.wait(wait)
                continue
            failures = 0
            if on_poll:
                on_poll(summary)
            if once:
                break
            stop.wait(interval)
        return summary


def outbox_dir(settings) -> Path:
    """Where scored results wait for the archive."""
    return settings.home / "pacs_outbox"


def film_and_heatmap(client: PacsClient, row: dict, outbox: Path):
    """(film as scored (2-D uint8), heatmap overlay RGB or None) of a worklist row.

    The film comes from the archive (WADO-RS); the overlay from the archive once stored, else from
    the outbox where it waits.
    """
    import pydicom

    from pneumo_core.imaging.dicom import read_dataset
    gray = read_dataset(client.retrieve_instance(row["study_uid"], row["series_uid"], row["sop_uid"]),
                        row["sop_uid"]).gray
    if row.get("status") == "stored" and row.get("sc_uid"):
        return gray, client.retrieve_instance(row["study_uid"], row["sc_series"], row["sc_uid"]).pixel_array
    waiting = Path(outbox) / f"{row['sop_uid']}.sc.dcm"
    return gray, (pydicom.dcmread(waiting).pixel_array if waiting.exists() else None)
