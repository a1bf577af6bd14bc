"""Pneumo dashboard: `streamlit run app.py` (or `make run`)."""
import streamlit as st

st.set_page_config(page_title="Pneumo", page_icon=":material/pulmonology:", layout="wide")

pages = st.navigation([
    st.Page("pages/diagnose.py", title="Diagnose", icon=":material/stethoscope:", default=True),
    st.Page("pages/heatmaps.py", title="Heatmaps", icon=":material/compare:"),
    st.Page("pages/metrics.py", title="Metrics", icon=":material/monitoring:"),
    st.Page("pages/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("pages/audit.py", title="Audit", icon=":material/history:"),
])
st.sidebar.caption("Decision support, not a diagnosis.")
pages.run()
