"""The prior film from the archive: the patient's latest earlier radiograph, fetched and scored.

`serve.prior` keeps the local history and compares; this is its archive side (a layer above it):
a QIDO-RS search on the PatientID for studies dated before the current one (`PacsClient.prior_studies`),
the newest frontal film retrieved (WADO-RS) and scored by the same model version, so its call and
heatmap are on the current film's scale.
"""
from __future__ import annotations

from datetime import date

from pneumo_core.errors import ImageError
from pneumo_core.explain.heatmap import for_display
from pneumo_core.pacs.client import PacsClient
from pneumo_core.serve.prior import ScoredFilm, study_day

MAX_TRIED = 5   # earlier films tried (a lateral or an unreadable one is passed over)


def prior_from_archive(client: PacsClient, diagnoser, patient_id: str, before: date) -> ScoredFilm | None:
    """The patient's latest earlier frontal film in the archive, scored by `diagnoser`'s model.

    Args:
        client: the archive; diagnoser: a `serve.diagnosis.Diagnoser`.
        patient_id: the DICOM PatientID; before: the current study's date.
    Returns:
        A ScoredFilm (source "archive"), or None when the archive has no earlier usable film.
    Raises:
        PacsUnavailable / PacsError as the client does.
    """
    from pneumo_core.imaging.dicom import read_dataset
    for film in client.prior_studies(patient_id, before)[:MAX_TRIED]:
        try:
            read = read_dataset(client.retrieve(film), film.sop_uid)
        except ImageError:   # not a frontal chest film: the next earlier one
            continue
        d = diagnoser.diagnose(read.gray, film.sop_uid, "gradcam", info=read.info)
        return ScoredFilm(study_day(film.study_date), d.probability, d.threshold, d.label, d.model_id,
                          for_display(read.gray, 512), d.heatmap, source="archive")
    return None
