"""The prior film panel (Diagnose and Worklist): the patient's earlier film beside the current one.

Screen only: finding the prior (local history, archive), the patient key and the comparison are the
library's (`pneumo_core.serve.prior`, `pneumo_core.pacs.prior`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import streamlit as st

from pneumo_core.errors import PneumoError
from pneumo_core.explain.heatmap import SCALE_TEXT, for_display, overlay
from pneumo_core.imaging.films import FilmInfo
from pneumo_core.serve.diagnosis import format_probability
from pneumo_core.serve.prior import PriorIndex, compare, patient_id_of, patient_key, retest_spread, study_day
from ui.images import jpeg
from ui.loaders import diagnoser_for, settings
from ui.text import literal


@st.cache_resource(show_spinner="Measuring the model's test-retest spread (once per version)…")
def _spread(version_path: str) -> float | None:
    return retest_spread(diagnoser_for(version_path).model)


def _archive_prior(version_path: str, patient_id: str, before, memo_key: tuple):
    """The archive's prior of this film, fetched once per session (never keyed by the patient ID)."""
    memo = st.session_state.setdefault("_archive_priors", {})
    if memo_key not in memo:
        from pneumo_core.pacs.client import PacsClient
        from pneumo_core.pacs.prior import prior_from_archive
        memo[memo_key] = prior_from_archive(PacsClient.from_settings(settings()), diagnoser_for(version_path),
                                            patient_id, before)
    return memo[memo_key]


def _find(version_path: str, patient_id: str, gray: np.ndarray, d):
    """(prior or None, note or None) for a scored film of a patient; files the film in the local history."""
    home = settings().home
    key, index = patient_key(home, patient_id), PriorIndex(home)
    before = study_day(d.info.study_date if d.info else None)
    prior, note = index.earlier(key, before, d.sha256, d.model_id), None
    if prior is None and before is not None and settings().pacs_url:
        try:
            prior = _archive_prior(version_path, patient_id, before, (version_path, d.sha256))
        except PneumoError as error:
            note = f"The archive could not be asked for a prior film: {error}"
    index.remember(key, d, gray)
    return prior, note


def _draw(gray: np.ndarray, d, prior, version_path: str) -> None:
    spread = _spread(version_path)
    comparison = compare(prior, d.probability, d.label, study_day(d.info.study_date if d.info else None),
                         d.model_id, spread)
    with st.container(key="prior-film"):
        st.markdown("#### Prior film")
        st.markdown(literal(comparison.sentence()))
        then, now = st.columns(2)
        when = prior.study_date.isoformat() if prior.study_date else "date not given"
        then.image(jpeg(overlay(prior.gray, prior.heatmap, 0.4)), width="stretch",
                   caption=f"Prior ({when}, {prior.source}): {prior.label}, p {format_probability(prior.probability)}")
        now.image(jpeg(overlay(gray, d.heatmap, 0.4)), width="stretch",
                  caption=f"Current: {d.label}, p {format_probability(d.probability)}")
        st.caption(SCALE_TEXT + (" Spread: the 95th percentile of the change between augmentation views of one "
                                 "test film (a re-take imitated), measured once per model version."
                                 if spread is not None else ""))


def prior_for_upload(version_path: str, data: bytes, gray: np.ndarray, d) -> None:
    """Diagnose: the uploaded DICOM's patient's earlier film (local history, else the archive), if any."""
    patient_id = patient_id_of(data)
    if patient_id is None:
        return
    prior, note = _find(version_path, patient_id, gray, d)
    if note:
        st.caption(literal(note))
    if prior is not None:
        _draw(gray, d, prior, version_path)


def prior_for_row(version_path: str, row: dict, gray: np.ndarray) -> None:
    """Worklist: the earlier film of the row's patient (the archive names the patient of its study)."""
    from pneumo_core.pacs.client import PacsClient
    try:
        patient_id = PacsClient.from_settings(settings()).patient_of(row["study_uid"])
    except PneumoError as error:
        st.caption(literal(f"The archive could not be asked for a prior film: {error}"))
        return
    if patient_id is None:
        return
    memo = st.session_state.setdefault("_worklist_rescored", {})
    if (version_path, row["sop_uid"]) not in memo:   # the active model's map: the prior's scale
        d = diagnoser_for(version_path).diagnose(gray, row["sop_uid"], "gradcam")
        memo[(version_path, row["sop_uid"])] = dataclasses.replace(
            d, info=FilmInfo("DICOM", study_date=row["study_date"]))
    d, gray = memo[(version_path, row["sop_uid"])], for_display(gray, 800)
    prior, note = _find(version_path, patient_id, gray, d)
    if note:
        st.caption(literal(note))
    if prior is not None:
        _draw(gray, d, prior, version_path)
