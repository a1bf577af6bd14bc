"""Audit: every diagnosis made, filterable, exportable as CSV."""
import pandas as pd
import streamlit as st

import ui
from pneumo_core.errors import PermissionDenied
from pneumo_core.records.audit import VIEW_COLUMNS

ui.require_page("audit")
st.title("Audit trail")
st.caption("One row per diagnosis made on this server or its command line: who, what call, when, on which "
           "film (SHA-256) and model version; then probability, threshold, tier, out-of-distribution score and "
           "flag, heatmap method and source. Never the image, its file name or patient details.")
trail = ui.audit_trail()
everything = trail.rows()
if not everything:
    st.info("No diagnosis has been recorded yet. Calls made on the Diagnose page or with "
            "`python -m pneumo_core predict` appear here.")
    st.stop()

model_column, call_column, flag_column = st.columns(3)
model = model_column.selectbox("Model version", ["all", *sorted({r["model"] for r in everything}, reverse=True)])
call = call_column.selectbox("Call", ["all", "NORMAL", "PNEUMONIA"])
flagged = flag_column.checkbox("Only films unlike the training data")
filters = {"model": None if model == "all" else model, "call": None if call == "all" else call,
           "flagged_only": flagged}
try:
    rows = trail.view(ui.actor(), **filters)   # recorded: who looked, with which filters
except PermissionDenied as error:
    st.error(ui.literal(error))
    st.stop()
st.markdown(f"**{len(rows)}** of {len(everything)} diagnoses")
st.dataframe(pd.DataFrame(rows, columns=list(VIEW_COLUMNS)), hide_index=True, width="stretch", column_config={
    "sha256": st.column_config.TextColumn("film (SHA-256)"),
    "probability": st.column_config.NumberColumn(format="%.3f"),
    "ood_score": st.column_config.NumberColumn(format="%.2f")})
if ui.may("export_audit"):   # the export is made, and recorded, only when clicked
    st.download_button("Download CSV", lambda: trail.export(ui.actor(), **filters), "pneumo-audit.csv", "text/csv")
