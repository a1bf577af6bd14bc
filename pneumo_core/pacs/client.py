"""The archive over DICOMweb: QIDO-RS search, WADO-RS retrieve and STOW-RS store.

`PacsClient` talks to the archive through `dicomweb-client`, with HTTP basic auth or a bearer
token from the settings (none configured: no auth is sent). An archive that cannot be reached
raises PacsUnavailable (the watcher backs off and retries); one that refuses raises PacsError.
`FilmRef` names a film by its UIDs and carries the header facts a search returns (no patient data).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import urlsplit

import requests

from pneumo_core.errors import ConfigError, PacsError, PacsUnavailable

MODALITIES = ("CR", "DX", "DR")
FIELDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "ViewPosition",
          "BodyPartExamined", "StudyDate", "AccessionNumber"]


# PS3.5 9.1: components of digits joined by dots, no leading zero in a component of more than one digit,
# at most 64 characters. A UID names files in the outbox and paths of archive requests, so anything else
# (`../../x/PWNED`) is refused before it is used.
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
UID_RULE = "digits and dots, at most 64 characters (DICOM PS3.5 9.1)"


def uid_problem(uid: str) -> str | None:
    """Why `uid` is not a DICOM UID, or None when it is one (the value itself is never quoted).

    Args:
        uid: a Study, Series or SOP Instance UID as it arrived.
    Returns:
        None, or a reason such as "71 characters; a UID is digits and dots, at most 64 characters (...)".
    """
    if not uid:
        return "empty"
    if len(uid) > 64:
        return f"{len(uid)} characters; a UID is {UID_RULE}"
    if not UID.fullmatch(uid):
        return f"not a UID; a UID is {UID_RULE}"
    return None


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

    def uid_problem(self) -> str | None:
        """Why the film's UIDs cannot be used (which one, and why), or None when all three are DICOM UIDs."""
        for name, uid in (("Study Instance UID", self.study_uid), ("Series Instance UID", self.series_uid),
                          ("SOP Instance UID", self.sop_uid)):
            if (problem := uid_problem(uid)) is not None:
                return f"its {name} is {problem}"
        return None


class PacsClient:
    """A DICOMweb archive at `url` (e.g. `http://pacs:8042/dicom-web`).

    Args:
        url: the DICOMweb root.
        user, password: HTTP basic auth; token: a bearer token (used when no user is given).
        timeout: seconds per request.
        compression: ask the archive to gzip its answers (worth it only on slow links).
        allow_http_credentials: send `user`/`token` over a plain `http://` URL to another machine
            (refused otherwise: anyone on the network path would read them; to this machine's own
            loopback address they never leave it and are sent).
    Raises:
        ConfigError: no URL, or credentials for an `http://` URL without `allow_http_credentials`.
    """

    def __init__(self, url: str, user: str = "", password: str = "", token: str = "", timeout: float = 30,
                 compression: bool = False, allow_http_credentials: bool = False):
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session, create_session_from_user_pass
        if not url:
            raise ConfigError("no PACS URL: pass --url or set PNEUMO_PACS_URL to the archive's DICOMweb root, "
                              "e.g. http://pacs:8042/dicom-web")
        self.url = url.rstrip("/")
        if (user or token) and not allow_http_credentials and not _credentials_stay_private(self.url):
            raise ConfigError(f"refusing to send the PACS credentials over plain http to {self.url}: anyone on the "
                              f"network path could read them. Use the archive's https:// address, or set "
                              f"PNEUMO_PACS_ALLOW_HTTP_CREDENTIALS=1 for an archive on this machine or a "
                              f"closed network")
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
        return cls(url or settings.pacs_url, settings.pacs_user, settings.pacs_password, settings.pacs_token,
                   allow_http_credentials=settings.pacs_allow_http_credentials)

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

    def prior_studies(self, patient_id: str, before: date, modalities: tuple[str, ...] = MODALITIES) -> list[FilmRef]:
        """The patient's radiographs of studies dated before `before`, newest first (QIDO-RS on PatientID).

        Args:
            patient_id: the DICOM PatientID (sent to the archive only, never logged or stored in clear).
            before: the current study's date; only earlier studies are returned.
            modalities: default CR, DX, DR.
        Returns:
            One FilmRef per instance, latest study date first.
        """
        filters = {"PatientID": patient_id, "Modality": ",".join(modalities),
                   "StudyDate": f"-{before - timedelta(days=1):%Y%m%d}"}
        found = self._call("a search for prior studies (QIDO-RS)", self._client.search_for_instances,
                           search_filters=filters, fields=FIELDS, get_remaining=True)
        return sorted((_film_ref(item) for item in found), key=lambda f: f.study_date, reverse=True)

    def patient_of(self, study_uid: str) -> str | None:
        """The PatientID of a study (QIDO-RS), or None when the archive does not give one."""
        found = self._call("a search for the study's patient (QIDO-RS)", self._client.search_for_studies,
                           search_filters={"StudyInstanceUID": study_uid}, fields=["PatientID"])
        values = (found[0].get("00100020", {}).get("Value") or [""]) if found else [""]
        return str(values[0]).strip() or None

    def retrieve(self, film: FilmRef):
        """The film's pydicom Dataset (WADO-RS). Raises PacsError when a UID is not a DICOM UID."""
        if (problem := film.uid_problem()) is not None:
            raise PacsError(f"not retrieved from the archive: {problem}")
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


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _credentials_stay_private(url: str) -> bool:
    """Whether credentials sent to `url` are unreadable on the way: https, or this machine's loopback."""
    parts = urlsplit(url)
    return parts.scheme.lower() == "https" or (parts.hostname or "").lower() in LOOPBACK \
        or (parts.hostname or "").startswith("127.")


def _film_ref(item: dict) -> FilmRef:
    def value(keyword_tag: str) -> str:
        values = item.get(keyword_tag, {}).get("Value") or [""]
        return str(values[0])
    return FilmRef(value("0020000D"), value("0020000E"), value("00080018"), value("00080060"), value("00185101"),
                   value("00080020"), value("00080050"))

