"""Diagnose: upload films -> worklist -> one film's call, its strength, heatmap and report."""
import pandas as pd
import streamlit as st

import ui
from pneumo_core.errors import PneumoError
from pneumo_core.explain.heatmap import SCALE_TEXT, colour_bar, display_name, overlay
from pneumo_core.golive import monitor
from pneumo_core.imaging.films import ACCEPTED
from pneumo_core.serve import diagnosis as dx
from pneumo_core.serve.report import report_filename, report_pdf, study_reference, track_record_lines
from ui import verdict

ui.require_page("diagnose")
st.title("Diagnose")
st.caption(dx.NOTICE)
verdict.model_change_notice()
active = ui.active_card()

# Any file type: DICOM often has no extension, and a wrong file deserves a message, not a silent refusal.
uploads = st.file_uploader(f"Chest X-rays ({ACCEPTED}), one or many", accept_multiple_files=True)
if not uploads:
    st.info(f"Upload one or more frontal chest films. Model {active.id} calls PNEUMONIA at probability "
            f"≥ {dx.format_probability(active.threshold)}.")
    st.stop()


ui.check_upload_count(uploads)
# The model loads with the first films, not when the page opens: every role lands here after signing in, and
# whoever goes on to another page no longer waits for TensorFlow and the model (~6 s and ~750 MB on a cold server).
# Its files are checked first (a refused version: the page says why). Cold start: say so instead of a blank page.
with st.spinner("Loading the model (first start of the server: about 10 s)…"):
    version_path = str(ui.diagnoser(active.id).model.path)
films, failures, copies, budget = {}, [], [], ui.decode_budget()
bar = st.progress(0.0, text="Scoring…")
for i, upload in enumerate(uploads):
    try:
        gray, d = ui.diagnose_and_record(version_path, upload.getvalue(), upload.name, "gradcam", budget)
    except PneumoError as error:
        failures.append(str(error))
    except Exception as error:  # one bad file never stops the batch; its message names no header value
        failures.append(f"{upload.name}: could not be scored ({type(error).__name__}). Accepted: {ACCEPTED}.")
    else:
        key = ui.film_key(d)
        if key in films:  # identity is the content: the same film twice is one film
            copies.append(f"{upload.name} (file {i + 1}) is the same film as {films[key][1].name}.")
        else:
            films[key] = (gray, d, i + 1, upload.getvalue())
    bar.progress((i + 1) / len(uploads), text=f"Scored {i + 1} of {len(uploads)}")
bar.empty()
if failures:
    st.markdown(f"**{len(failures)} of {len(uploads)} files could not be scored**"
                + (f"; the other {len(uploads) - len(failures)} were." if films else "."))
for message in failures:   # they name the uploaded files: shown as they are, never as Markdown
    st.error(ui.literal(message))
for message in copies:
    st.info(ui.literal(message))
if not films:
    st.stop()
order = [list(films)[i] for i in dx.worklist_order([film[1] for film in films.values()])]
ui.open_new_films(order)


@st.fragment
def film_view() -> None:
    """The open film: reruns alone when another film is picked or its opacity, outline or heatmap choice changes."""
    if len(order) > 1:
        if st.session_state.get("open_film") not in order:
            st.session_state["open_film"] = order[0]
        st.selectbox("Open film", order, key="open_film",
                     format_func=lambda k: f"{films[k][2]}: {films[k][1].name} · {films[k][1].label} "
                                           f"{films[k][1].probability_text} · SHA-256 {k}")
    key = st.session_state["open_film"] if len(order) > 1 else order[0]
    gray, d, position, data = films[key]
    st.subheader(f"File {position}: {ui.literal(d.name)}")
    identity = [d.info.summary()] if d.info else []
    identity += [f"{k}: {v}" for k, v in study_reference(d) if k != "Reference"]
    st.caption(" · ".join([ui.literal(part) for part in identity] + [f"SHA-256 {d.sha256[:16]}…"]))
    reference = None
    if not (d.info and (d.info.accession_number or d.info.study_instance_uid)):
        reference = st.text_input("Study reference for the report (optional)", key=f"reference_{key}",
                                  placeholder="e.g. the accession number from the request")
        if reference:
            st.caption(f"On the report as: Reference {ui.literal(reference.strip())}")

    colour = "red" if d.label == "PNEUMONIA" else "green"
    st.markdown(f"#### Call: :{colour}[{d.label}]")
    probability, sure = st.columns(2)
    probability.metric("Probability of pneumonia", d.probability_text,
                       f"{d.strength} ({dx.format_probability(d.threshold)})", delta_color="off",
                       delta_arrow="up" if d.probability >= d.threshold else "down")
    sure.metric("Certainty", d.certainty_word)
    ui.strength_scale(dx.scale_position(d.probability, d.threshold), d.strength)
    if d.tier is not None:   # the site's guarantee for this call, in one sentence
        st.markdown(f"**Tier: {d.tier}** — {d.tier_guarantee}")
    if d.certainty_word in ("borderline", "not assessable"):
        st.warning(d.certainty[0].upper() + d.certainty[1:] + ".", icon=":material/priority_high:")
    for caution in d.warnings:  # shown with the call, never instead of it
        st.warning(ui.literal(caution), icon=":material/warning:")
    st.caption("Out-of-distribution check unavailable for this model version" if d.ood_score is None else
                f"Out-of-distribution score {d.ood_score:.2f} (flagged above 1.00)")

    shown = d.shows_heatmap or st.checkbox("Show the heatmap for this NORMAL call", key=f"heat_{key}",
                                           help="Drawn without asking for PNEUMONIA and borderline calls only: "
                                                "on a NORMAL film the weakest evidence is easily read as a lesion.")
    opacity, outline = st.columns(2)
    alpha = opacity.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
    outline_only = outline.toggle("Outline of the strongest evidence only", key="outline_only")
    small = ui.display_film(key, gray)
    left, right = st.columns(2)
    left.image(ui.film_jpeg(key, gray), caption="Film", width="stretch")
    if shown:
        right.image(ui.jpeg(overlay(small, d.heatmap, alpha, outline_only)), width="stretch",
                    caption=f"{display_name(d.method)}: evidence for pneumonia, inside the chest only")
        if not outline_only:
            right.image(colour_bar(), width="stretch")
            right.caption(SCALE_TEXT)
    else:
        right.caption("Heatmap not drawn for a NORMAL call (tick the box above to see it).")
    with st.expander("Compare heatmap methods"):
        st.caption("Grad-CAM is the default; the others often disagree with it. The Heatmaps page measures "
                   "how faithful each one is (deletion curve).")
        if st.checkbox("Compute Grad-CAM++ and Score-CAM (Score-CAM: about a second per film)", key=f"cmp_{key}"):
            for column, method in zip(st.columns(2), ("gradcam++", "scorecam")):
                _, other = ui.diagnose_and_record(version_path, data, d.name, method)
                column.image(ui.jpeg(overlay(small, other.heatmap, alpha, outline_only)), width="stretch",
                             caption=display_name(method))

    ui.prior_for_upload(version_path, data, small, d)   # the patient's earlier film, beside this one
    verdict.earlier_call_notice(d.sha256, d.model_id)
    verdict.verdict_form(key, gray, sha256=d.sha256, model_id=d.model_id)
    record = ui.figures_that_apply(version_path)
    for line in [f"Model {d.model_id} · scored by the model {dx.local_time(d.when)}"] + track_record_lines(record):
        st.caption(line)
    prevalence, prevalence_source = monitor.clinic_prevalence(ui.settings(), version_path)
    sensitivity, specificity = record.figures.get("sensitivity"), record.figures.get("specificity")
    if prevalence is not None and sensitivity is not None and specificity is not None:
        ppv, npv = monitor.predictive_values(sensitivity, specificity, prevalence)
        st.caption(f"At a clinic prevalence of {prevalence:.0%} ({prevalence_source}): PPV {ppv:.2f}, NPV {npv:.2f}.")
    with st.container(key="diagnose-ready"):  # the browser tests wait for this: the film is fully drawn
        st.download_button(
            "Download report (PDF)", lambda: report_pdf(gray, d, record, reference, shown, alpha, outline_only,
                                                        reader=verdict.latest(d.sha256), locale=st.context.locale),
            report_filename(d), "application/pdf", icon=":material/description:",
            on_click=ui.audit_event, args=("report_download", ui.who()),
            kwargs={"sha256": d.sha256, "model": d.model_id, "format": "PDF"})
    st.caption("The report names the patient and study from the DICOM (\"not given\" when absent), the reader's "
               "findings and a line to sign; its file name carries only the study UID or the film's hash and the "
               "date.")


def worklist() -> None:
    """The worklist (not a fragment: a row click reruns the page, ~0.9 s; the 'Open film' box reruns the film only)."""
    st.subheader("Worklist")
    # No separate caution column: it was cut off at 1360 px; 'not assessable' says it and fits at 1024 px.
    st.caption(dx.ORDER_TEXT + " *Not assessable*: the film is unlike the training films (the caution is shown "
               "with the film). Click a row's box to open its film.")
    st.session_state["_worklist_keys"] = order
    rows = []
    for k in order:
        gray, d, position, _ = films[k]
        rows.append({"priority": d.priority, "film": ui.film_thumbnail(k, gray),
                     "file": f"{position}: {d.name}", "call": d.label, "probability": d.probability_text,
                     # "not validated at this site" is said once, with the open film, not on every row
                     "certainty": "" if d.certainty_word == dx.NOT_VALIDATED else d.certainty_word})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="worklist",
                 on_select=ui.open_clicked_row, selection_mode="single-row", column_config={
                     # widths in px: 519 with the selection column's 33 fit the 562 px beside the sidebar at
                     # 1024 px, each word whole ('PNEUMONIA', 'not assessable')
                     "priority": st.column_config.TextColumn("priority", width=82, help=" · ".join(
                         f"{k}: {v}" for k, v in dx.PRIORITY_MEANING.items())),
                     "film": st.column_config.ImageColumn("film", width=50),
                     # the file name gives way (its full name is in the 'Open film' box): the call,
                     # probability and certainty stay in view at 1024 px
                     "file": st.column_config.TextColumn("file", width=105),
                     "call": st.column_config.TextColumn("call", width=90),
                     "probability": st.column_config.TextColumn("probability", width=82),
                     "certainty": st.column_config.TextColumn("certainty", width=110)})


if len(order) > 1:
    worklist()
film_view()
