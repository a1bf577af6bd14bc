"""Worklist: the archive's recent chest films, most urgent first, as the PACS watcher scored them."""
import pandas as pd
import streamlit as st

import ui
from pneumo_core.errors import PneumoError
from pneumo_core.evaluate.triage import TIERS, tiers_for
from pneumo_core.pacs.client import PacsClient
from pneumo_core.pacs.state import PacsState, worklist
from pneumo_core.pacs.watcher import film_and_heatmap, outbox_dir
from pneumo_core.records.signin import may_open
from pneumo_core.serve.diagnosis import NOTICE, tier_of
from ui import verdict

st.title("Worklist")
verdict.model_change_notice()
st.caption(NOTICE + " Priority: PNEUMONIA first, then borderline calls, then NORMAL; each by probability.")
actor = ui.actor()
if actor is not None and not may_open(actor, "worklist"):
    st.error(f"{actor.name} ({actor.role}) may not see calls; that needs the role clinician, ml_lead or admin.")
    st.stop()
settings = ui.settings()
state = PacsState(settings.pacs_state_path)
status, rows = state.status(), worklist(state)
if not rows:
    st.info("No film from the archive yet. The archive is set by PNEUMO_PACS_URL (or the secrets file); "
            "start the watcher on the server:")
    st.code("python -m pneumo_core pacs watch", language="bash")
    st.stop()
st.caption(f"Archive {ui.literal(status['url'])} · last poll {ui.literal(status['last_poll'])} · waiting "
           f"{status['backlog']}" + (f" · last archive error {ui.literal(status['last_error_time'])}: "
                                     f"{ui.literal(status['last_error'])}" if status["last_error"] else ""))

# The site's triage tier of each scored film, from its model version's site report (None: no guarantee).
site_tiers = {m: tiers_for(settings.models_dir / m) for m in {r["model"] for r in rows if r["model"]}}
for r in rows:
    r["tier"], r["tier_guarantee"] = (tier_of(site_tiers.get(r["model"]), r["probability"], r["ood_flag"])
                                      if r["label"] is not None else (None, None))
if any(r["tier"] for r in rows):   # high, uncertain, low; films without a tier keep their order after them
    rows.sort(key=lambda r: TIERS.index(r["tier"]) if r["tier"] else len(TIERS))
    st.caption("Sorted by the site's triage tiers: high, uncertain (needs a full read), low.")
table = pd.DataFrame([{
    "tier": r["tier"] or "", "priority": r["priority_name"], "accession": r["accession"], "call": r["label"] or "",
    "probability": r["probability"], "certainty": (r["certainty"] or "").split(":")[0],
    "caution": "unlike the training films" if r["ood_flag"] else "",
    "result in archive": "yes" if r["in_archive"] else "no", "note": r["reason"] or "",
    "film": f"{r['modality']} {r['view']}".strip(), "study date": r["study_date"], "model": r["model"]}
    for r in rows])
event = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                     key="worklist_table", column_config={
                         "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0,
                                                                        format="%.3f")})
picked = event.selection.rows if event and event.selection else []
row = rows[picked[0]] if picked else rows[0]
# Accession and date come from the archive as they are: never read as Markdown.
st.subheader(f"{row['priority_name']} · accession {ui.literal(row['accession'] or '-')} · "
             f"{ui.literal(row['study_date'] or '')}")
if row["label"] is None:
    st.info(f"Not scored: {ui.literal(row['reason'] or row['status'])}.")
    st.stop()
st.caption("Click a row to open another film.")
call, probability, sure = st.columns(3)
call.metric("Call", row["label"])
probability.metric("Probability of pneumonia", f"{row['probability']:.3f}", f"threshold {row['threshold']:.3f}",
                   delta_color="off")
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
