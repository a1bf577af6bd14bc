"""Worklist: the archive's recent chest films, most urgent first, as the PACS watcher scored them."""
import pandas as pd
import streamlit as st

import ui
from pneumo_core.errors import PneumoError
from pneumo_core.pacs.client import PacsClient
from pneumo_core.pacs.state import PacsState, worklist
from pneumo_core.pacs.watcher import film_and_heatmap, outbox_dir
from pneumo_core.records.signin import may_open
from pneumo_core.serve import diagnosis as dx
from ui import verdict

st.title("Worklist")
verdict.model_change_notice()
st.caption(dx.NOTICE + " " + dx.ORDER_TEXT)
actor = ui.actor()
if actor is not None and not may_open(actor, "worklist"):
    st.error(f"{actor.name} ({actor.role}) may not see calls; that needs the role clinician, ml_lead or admin.")
    st.stop()
settings = ui.settings()
state = PacsState(settings.pacs_state_path)
# The library orders the films (site tiers included), exactly as Diagnose orders its uploads.
status, rows = state.status(), worklist(state, models_dir=settings.models_dir)
if not rows:
    st.info("No film from the archive yet. The archive is set by PNEUMO_PACS_URL (or the secrets file); "
            "start the watcher on the server:")
    st.code("python -m pneumo_core pacs watch", language="bash")
    st.stop()
st.caption(f"Archive {ui.literal(status['url'])} · last poll {ui.literal(status['last_poll'])} · waiting "
           f"{status['backlog']}" + (f" · last archive error {ui.literal(status['last_error_time'])}: "
                                     f"{ui.literal(status['last_error'])}" if status["last_error"] else ""))

locale = st.context.locale   # the reader's browser locale: dates as the reader writes them
# Six short columns, each word whole at 1024 px (562 px beside the sidebar, measured in the browser test);
# the modality, view, model and whether the result is in the archive are shown with the open film.
table = pd.DataFrame([{
    "priority": r["priority_name"], "call": r["label"] or "", "probability": dx.format_probability(r["probability"])
    if r["probability"] is not None else "", "certainty": (r["certainty"] or "").split(":")[0]
    if r["label"] else (r["reason"] or r["status"]).split(";")[0], "accession": r["accession"] or "",
    "study date": dx.format_date(r["study_date"], locale)}
    for r in rows])
event = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                     key="worklist_table", column_config={
                         # widths in px: 526 with the selection column's 33 fill the 562 px
                         "priority": st.column_config.TextColumn("priority", width=82, help=" · ".join(
                             f"{k}: {v}" for k, v in dx.PRIORITY_MEANING.items())),
                         "call": st.column_config.TextColumn("call", width=90),
                         "probability": st.column_config.TextColumn("probability", width=82),
                         "certainty": st.column_config.TextColumn("certainty", width=110,
                                                                  help="For a film not scored: why."),
                         "accession": st.column_config.TextColumn("accession", width=80),
                         "study date": st.column_config.TextColumn("study date", width=82)})
picked = event.selection.rows if event and event.selection else []
row = rows[picked[0]] if picked else rows[0]
# Accession and date come from the archive as they are: never read as Markdown.
st.subheader(f"{row['priority_name']} · accession {ui.literal(row['accession'] or '-')} · "
             f"{ui.literal(dx.format_date(row['study_date'], locale))}")
st.caption(ui.literal(" · ".join(v for v in (row["modality"], row["view"]) if v)))
if row["label"] is None:
    st.info(f"Not scored: {ui.literal(row['reason'] or row['status'])}.")
    st.stop()
st.caption("Click a row to open another film.")
call, probability, sure = st.columns(3)
call.metric("Call", row["label"])
probability.metric("Probability of pneumonia", dx.format_probability(row["probability"]),
                   f"{dx.strength_words(row['probability'], row['threshold'], row['tier'] is not None)} "
                   f"({dx.format_probability(row['threshold'])})", delta_color="off")
sure.metric("Certainty", row["certainty"].split(":")[0])
if row["tier"]:
    st.markdown(f"**Tier: {row['tier']}** — {row['tier_guarantee']}")
if row["ood_flag"]:
    st.warning("Unlike the films the model was trained on: read this call with extra care.",
               icon=":material/warning:")


@st.cache_data(ttl=600, show_spinner="Fetching the film from the archive…", max_entries=64)
def _film(row: dict):
    return film_and_heatmap(PacsClient.from_settings(ui.settings()), row, outbox_dir(ui.settings()))


try:
    gray, heatmap = _film(row)
except PneumoError as error:
    st.error(ui.literal(error))
    st.stop()
film, heat = st.columns(2)
film.image(gray, caption="Film", width=440, clamp=True)
if heatmap is not None:
    heat.image(heatmap, caption="Heatmap as stored in the archive (red = strongest evidence)", width=440)
st.caption(f"Model {ui.literal(row['model'])} · scored {ui.literal(row['scored'])} · " + (
    f"result stored in the archive {ui.literal(row['stored'])}" if row["in_archive"]
    else "result not yet in the archive"))
ui.prior_for_row(str(settings.models_dir / row["model"]), row, gray)   # the patient's earlier film
rescored = verdict.rescore_offer(row["sop_uid"], gray, row["model"])
verdict.verdict_form(row["sop_uid"], gray, diagnosis_id=rescored[1] if rescored else row["audit_id"],
                        source="worklist")
