"""PACS round trip over DICOMweb: new chest films in, results back as DICOM, and a worklist.

- `client.PacsClient`: QIDO-RS search, WADO-RS retrieve and STOW-RS store (`client.py`).
- `state.PacsState`: what the watcher knows, in SQLite, one row per (film, model version), and
  the `worklist` read from it (`state.py`).
- `Watcher` (here): one poll = find CR/DX/DR films of recent studies (QIDO-RS on study date, from the
  day before the last poll), score each new frontal film with the heatmap, write the SR and the
  heatmap Secondary Capture (`dicom_out`) to an outbox in PNEUMO_HOME, record the call in the
  audit trail, then STOW-RS both to the film's study and empty the outbox.

Several watchers (processes, machines) may poll the same archive into one shared state: each
film is worked on only by the watcher that claimed its row (`PacsState.claim`), so it is scored
and stored once.

Why it is idempotent and loses nothing: a film is scored only if no row for (film, model) says
it was; a scored film's results wait in the outbox until the archive has accepted them, and their
UIDs are derived from (film, model), so storing them again after a failure replaces the same
instances instead of adding copies. When the archive cannot be reached the poll stops where it
is and the watcher retries with exponential back-off; the next poll starts with what is left.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pneumo_core.errors import ImageError, PacsError, PacsUnavailable
from pneumo_core.files import private_folder
from pneumo_core.pacs.client import FilmRef, PacsClient, uid_problem
from pneumo_core.pacs.state import PacsState, timestamp

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3          # a film whose scoring fails (not a skip, not the archive) is tried this often


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
        private_folder(self.outbox)   # results carry the patient's name and MRN in their headers
        self.model = diagnoser.model.id
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"   # this watcher's claims
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
        started = timestamp()
        self.state.set_meta(url=self.client.url, model=self.model)
        films = self.client.search_films(None if study_uid else self._since(), study_uid)
        summary = {"found": len(films), "new": self.state.add(films, self.model),
                   "scored": 0, "stored": 0, "skipped": 0, "failed": 0}
        todo = [r for r in self.state.films(self.model, ("new", "failed"), study_uid)
                if r["status"] == "new" or r["attempts"] < MAX_ATTEMPTS]
        for listed in todo:
            row = self.state.claim(listed["sop_uid"], self.model, self.owner, ("new", "failed"))
            if row is None or (row["status"] == "failed" and row["attempts"] >= MAX_ATTEMPTS):
                continue    # another watcher has it, or finished it meanwhile
            try:
                outcome = self._refusal_is_a_failure(row, self._score, "failed")
                summary[outcome] += 1
                if outcome == "scored" and self._refusal_is_a_failure(row, self._store, False):
                    summary["stored"] += 1
            finally:
                self.state.release(row["sop_uid"], self.model, self.owner)
        for listed in self.state.films(self.model, ("scored",), study_uid):   # left from an earlier failure
            row = self.state.claim(listed["sop_uid"], self.model, self.owner, ("scored",))
            if row is None:
                continue
            try:
                summary["stored"] += self._refusal_is_a_failure(row, self._store, False)
            finally:
                self.state.release(row["sop_uid"], self.model, self.owner)
        if not study_uid:
            self.state.set_meta(last_poll=started)
        return summary

    def _refusal_is_a_failure(self, row: dict, step, failed):
        """Run `step(row)`; the archive refusing this one film (not down, not our credentials), or any
        other error with this film, makes it a failure of that film, retried up to MAX_ATTEMPTS times,
        instead of stopping the watcher: one poisoned film never stops the scoring of the others."""
        try:
            return step(row)
        except PacsUnavailable:
            raise
        except Exception as error:   # noqa: BLE001 - recorded on the film's row, logged with its traceback
            if isinstance(error, PacsError) and error.status in (401, 403):
                raise
            if isinstance(error, PacsError):
                log.warning("%s: %s", row["sop_uid"], error)
            else:   # a bug, or an answer nobody foresaw: its traceback for the log, its name for the row
                log.exception("%s: %s failed", row["sop_uid"], getattr(step, "__name__", "a step").strip("_"))
                error = f"{type(error).__name__}: {error}"
            attempts = row["attempts"] + 1
            status = row["status"] if row["status"] == "scored" and attempts < MAX_ATTEMPTS else "failed"
            self.state.update(row["sop_uid"], self.model, status=status, attempts=attempts, reason=str(error)[:500])
            return failed

    def _paths(self, sop_uid: str) -> tuple[Path, Path]:
        return outbox_paths(self.outbox, sop_uid)

    def _skip_bad_uids(self, row: dict) -> bool:
        """Mark a film whose UIDs are not DICOM UIDs as skipped, with the reason; True when it was."""
        problem = FilmRef(row["study_uid"], row["series_uid"], row["sop_uid"]).uid_problem()
        if problem is None:
            return False
        self.state.update(row["sop_uid"], self.model, status="skipped", reason=f"not scored: {problem}")
        log.warning("skipped a film of the archive: %s", problem)   # the UID itself may be anything: not logged
        return True

    def _score(self, row: dict) -> str:
        from pneumo_core.imaging.dicom import read_dataset
        from pneumo_core.serve import dicom_out
        if self._skip_bad_uids(row):
            return "skipped"
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
                          audit_id=audit_id, scored=timestamp())
        row.update(status="scored")
        return "scored"

    def _to_outbox(self, sop_uid: str, sr, sc) -> None:
        for dataset, path in zip((sr, sc), self._paths(sop_uid)):
            tmp = path.with_suffix(".tmp")
            dataset.save_as(tmp, enforce_file_format=True)
            tmp.replace(path)   # whole files only: a crash never leaves half a result to send

    def _store(self, row: dict) -> bool:
        import pydicom
        if self._skip_bad_uids(row):   # a row left by an earlier version that did not check
            return False
        sr_path, sc_path = self._paths(row["sop_uid"])
        if not sr_path.exists() or not sc_path.exists():
            # Results lost from the outbox (deleted by hand): score again rather than leave a gap.
            self.state.update(row["sop_uid"], self.model, status="new")
            return False
        self._timed("store_sr", lambda: self.client.store([pydicom.dcmread(sr_path)], row["study_uid"]))
        self._timed("store_sc", lambda: self.client.store([pydicom.dcmread(sc_path)], row["study_uid"]))
        self.state.update(row["sop_uid"], self.model, status="stored", stored=timestamp())
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
                self.state.set_meta(last_error=str(error), last_error_time=timestamp())
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


def outbox_paths(outbox: Path, sop_uid: str) -> tuple[Path, Path]:
    """(SR, heatmap capture) files of a film in the outbox; PacsError when `sop_uid` is not a DICOM UID
    (it names the files: a UID such as `../../x` must never reach a path)."""
    if (problem := uid_problem(sop_uid)) is not None:
        raise PacsError(f"no outbox file for a film whose SOP Instance UID is {problem}")
    return Path(outbox) / f"{sop_uid}.sr.dcm", Path(outbox) / f"{sop_uid}.sc.dcm"


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
    waiting = outbox_paths(outbox, row["sop_uid"])[1]
    return gray, (pydicom.dcmread(waiting).pixel_array if waiting.exists() else None)
