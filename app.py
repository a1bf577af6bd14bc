"""Pneumo dashboard: `streamlit run app.py` (or `make run`)."""
from pathlib import Path

import streamlit as st

import ui

# A local favicon: an icon name would make the browser fetch it from a font server (fails offline).
st.set_page_config(page_title="Pneumo", page_icon=str(Path(__file__).parent / "static" / "favicon.png"),
                   layout="wide")

pages = st.navigation([
    st.Page("views/diagnose.py", title="Diagnose", icon=":material/stethoscope:", default=True),
    st.Page("views/heatmaps.py", title="Heatmaps", icon=":material/compare:"),
    st.Page("views/metrics.py", title="Metrics", icon=":material/monitoring:"),
    st.Page("views/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("views/retrain.py", title="Retrain", icon=":material/model_training:"),
    st.Page("views/audit.py", title="Audit", icon=":material/history:"),
])
st.sidebar.caption("Decision support, not a diagnosis.")
ui.user_box()
pages.run()
