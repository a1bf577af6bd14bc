"""Pneumo dashboard: `streamlit run app.py` (or `make run`)."""
import streamlit as st

import ui

st.set_page_config(page_title="Pneumo", page_icon=":material/pulmonology:", layout="wide")

pages = st.navigation([
    st.Page("views/diagnose.py", title="Diagnose", icon=":material/stethoscope:", default=True),
    st.Page("views/worklist.py", title="Worklist", icon=":material/view_list:"),
    st.Page("views/heatmaps.py", title="Heatmaps", icon=":material/compare:"),
    st.Page("views/metrics.py", title="Metrics", icon=":material/monitoring:"),
    st.Page("views/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("views/retrain.py", title="Retrain", icon=":material/model_training:"),
    st.Page("views/audit.py", title="Audit", icon=":material/history:"),
])
st.sidebar.caption("Decision support, not a diagnosis.")
ui.user_box()
pages.run()
