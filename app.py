"""Pneumo dashboard: `streamlit run app.py` (or `make run`)."""
import streamlit as st

import ui

st.set_page_config(page_title="Pneumo", page_icon=":material/pulmonology:", layout="wide")

pages = st.navigation([
    st.Page("views/diagnose.py", title="Diagnose", icon=":material/stethoscope:", default=True),
    st.Page("views/heatmaps.py", title="Heatmaps", icon=":material/compare:"),
    st.Page("views/metrics.py", title="Metrics", icon=":material/monitoring:"),
    st.Page("views/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("views/retrain.py", title="Retrain", icon=":material/model_training:"),
    st.Page("views/audit.py", title="Audit", icon=":material/history:"),
    st.Page("views/site.py", title="Site", icon=":material/local_hospital:"),
    st.Page("views/monitor.py", title="Monitor", icon=":material/query_stats:"),
])
st.sidebar.caption("Decision support, not a diagnosis.")
ui.user_box()
pages.run()
