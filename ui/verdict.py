"""Dashboard widgets of the reader's verdict and of model changes (Diagnose and Worklist call them).

Layout only: what a verdict is, who may give one and where it is kept is `records.verdicts` and
`golive.reviewed`; when a reader is told about a model change is `records.notices`.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

import ui
from pneumo_core.errors import PneumoError
from pneumo_core.golive.reviewed import review
from pneumo_core.records import notices, verdicts
from pneumo_core.records.registry import active_version
from pneumo_core.serve.diagnosis import format_probability, local_time
from ui.text import literal

READ_LABELS = {"NORMAL": "NORMAL", "PNEUMONIA": "PNEUMONIA", "not-assessable": "not assessable"}


def latest(sha256: str) -> verdicts.Verdict | None:
    """The film's verdict that counts (the latest), or None."""
    judged = verdicts.history(ui.audit_trail(), sha256)
    return judged[-1] if judged else None


def model_change_notice() -> None:
    """Name a change of the active model once to each reader (kept on screen for the rest of this session)."""
    actor = ui.actor()
    if actor is None:
        return
    if "_model_change_notice" not in st.session_state:
        trail = ui.audit_trail()
        change = notices.unseen_change(ui.settings().models_dir, trail, actor.name)
        if change is not None:
            notices.mark_seen(trail, actor.name, change)
        st.session_state["_model_change_notice"] = notices.change_sentence(change) if change else ""
    if st.session_state["_model_change_notice"]:
        st.info(st.session_state["_model_change_notice"], icon=":material/update:")


def earlier_call_notice(sha256: str, model_id: str) -> None:
    """Say when this film was scored before by another version, with that call (the screen shows this one's)."""
    earlier = notices.earlier_call(ui.audit_trail(), sha256, model_id)
    if earlier is not None:
        st.caption(f"Scored before by version {earlier['model']}: {earlier['call']} at p "
                   f"{format_probability(earlier['probability'])} ({local_time(earlier['shown'] or earlier['time'])}). "
                   f"The call above is version {model_id}'s.")


def rescore_offer(key: str, gray: np.ndarray, scored_by: str):
    """For a film scored by a version that is no longer active: say so and offer to score it with the active one.

    Returns:
        (Diagnosis, audit row id) of the active version's call once re-scored in this session, else None.
    """
    active = active_version(ui.settings().models_dir)
    if active is None or scored_by == active:
        return None
    done = st.session_state.get(f"_rescored_{key}")
    if done is None:
        st.warning(f"Scored by an earlier model version ({scored_by}); the active version is {active}.",
                   icon=":material/update:")
        if st.button("Re-score with the active model", key=f"rescore_{key}", icon=":material/refresh:"):
            d = ui.diagnoser().diagnose(gray, "", method=None)
            done = (d, ui.audit_trail().record(d, source="worklist", who=ui.who()))
            st.session_state[f"_rescored_{key}"] = done
    if done is not None:
        d = done[0]
        st.info(f"Active version {d.model_id}: {d.label} at p {d.probability_text} "
                f"({d.strength}, {format_probability(d.threshold)}).")
    return done


def verdict_form(key: str, gray: np.ndarray, *, diagnosis_id: int | None = None, sha256: str | None = None,
                 model_id: str | None = None, source: str = "dashboard") -> None:
    """The reader's verdict on the open film: their read, zones and a note, recorded in the audit trail.

    Args:
        key: unique per film on the page; gray: the decoded film (kept de-identified for adaptation).
        diagnosis_id: the audit row shown; or sha256 and model_id: the film and the version whose call is
            judged (its newest audit row).
        source: "dashboard" (Diagnose) or "worklist".
    """
    actor = ui.actor()
    if actor is None or not actor.may("record_verdict"):
        return
    trail = ui.audit_trail()
    row = verdicts.diagnosis_row(trail, diagnosis_id) if diagnosis_id is not None else \
        verdicts.latest_diagnosis(trail, sha256, model_id) if sha256 else None
    if row is None:   # nothing recorded to judge (a film scored before the audit trail existed)
        return
    diagnosis_id, sha256 = row["id"], row["sha256"]
    st.markdown("##### Your read")
    earlier = latest(sha256)
    if earlier is not None:
        st.caption(f"On record: {literal(earlier.summary())} · {literal(earlier.who)}, {local_time(earlier.time)}. "
                   "A new verdict supersedes it (the earlier one stays in the audit trail).")
    with st.form(f"verdict_{key}", border=True):
        read = st.radio("Your read of this film", verdicts.READS, index=None, horizontal=True,
                        key=f"verdict_read_{key}", format_func=READ_LABELS.get)
        zones = st.multiselect("Zones (optional)", verdicts.ZONES, format_func=verdicts.ZONE_NAMES.get,
                               key=f"verdict_zones_{key}")
        note = st.text_input("Note (optional; no patient names or identifiers)", max_chars=verdicts.NOTE_LIMIT,
                             key=f"verdict_note_{key}")
        submitted = st.form_submit_button("Record verdict", icon=":material/how_to_reg:")
    if not submitted:
        return
    if read is None:
        st.error("Choose your read first: NORMAL, PNEUMONIA or not assessable.")
        return
    try:
        verdict = review(ui.settings(), trail, actor, gray, diagnosis_id, read, zones, note, source)
    except PneumoError as error:
        st.error(literal(error))
        return
    st.success(f"Recorded: {verdict.summary()}.", icon=":material/check:")


def reviewed_adapt_offer(version: str, actor) -> None:
    """On the Site page: "Adapt with N reviewed films" (a site adaptation job on the films readers judged)."""
    from pneumo_core.golive import reviewed
    from pneumo_core.golive.sites import MIN_FILMS_PER_CLASS
    kept = reviewed.counts(ui.settings())
    total = sum(kept.values())
    if not total or not actor.may("site_adapt"):
        return
    short = [f"{MIN_FILMS_PER_CLASS - n} more {label}" for label, n in kept.items() if n < MIN_FILMS_PER_CLASS]
    st.caption(f"Readers gave verdicts on {total} films kept for adaptation ({kept['NORMAL']} read NORMAL, "
               f"{kept['PNEUMONIA']} PNEUMONIA; de-identified, kept {ui.settings().reviewed_retention_days} days).")
    if st.button(f"Adapt with {total} reviewed films", icon=":material/rate_review:", disabled=bool(short),
                 help=f"Needs {' and '.join(short)}." if short else "A candidate adapted to the reviewed films; "
                 "compare it with the active version below before promoting it."):
        try:
            job_id = ui.job_queue().submit_site_adapt(ui.settings().reviewed_dir, reviewed.SITE_NAME, version,
                                                      actor=actor)
            st.success(f"Job {job_id} submitted.")
        except PneumoError as error:
            st.error(literal(error))
