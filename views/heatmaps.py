"""Heatmaps: compare CAM methods, two model versions, or several films side by side."""
from pathlib import Path

import streamlit as st

import ui
from pneumo_core.cam import METHODS, overlay
from pneumo_core.io import ImageError

st.title("Heatmaps")
st.caption("Every panel uses the same colour scale (0 = blue … 1 = red, relative to the strongest "
           "evidence in that panel) and the same opacity.")
if ui.version_picker("Model version", key="heatmap_model") is None:
    st.stop()
version = st.session_state["heatmap_model"]
predictions = ui.test_predictions(version)

source = st.radio("Films", ["From the test split", "Upload"], horizontal=True)
if source == "Upload":
    uploads = st.file_uploader("Chest X-rays", accept_multiple_files=True)
    ui.check_upload_count(uploads or [])
    films = [(upload.name, upload.getvalue()) for upload in uploads or []]
else:
    labels = {r.path: f"{Path(r.path).name} ({'PNEUMONIA' if r.label else 'NORMAL'}, p={r.probability:.2f})"
              for r in predictions.itertuples()}
    picked = st.multiselect("Test-split films", list(labels), default=list(labels)[:1], format_func=labels.get,
                            max_selections=6)
    films = [(Path(p).name, Path(p).read_bytes()) for p in picked]
if not films:
    st.info("Choose at least one film.")
    st.stop()

mode = st.radio("Compare", ["CAM methods", "Two model versions", "Several films"], horizontal=True)
alpha = st.slider("Opacity (all panels)", 0.0, 1.0, 0.45, 0.05)
if mode == "CAM methods":
    panels = [(method, version, *films[0]) for method in METHODS]
elif mode == "Two model versions":
    other = ui.version_picker("Compare with", key="heatmap_other", index_of_active=False)
    method = st.selectbox("Method", list(METHODS))
    panels = [(method, v, *films[0]) for v in dict.fromkeys([version, other])]
else:
    method = st.selectbox("Method", list(METHODS))
    panels = [(method, version, name, data) for name, data in films]

budget = ui.decode_budget()
for column, (method, v, name, data) in zip(st.columns(len(panels)), panels):
    with column:
        try:
            with st.spinner(f"{method}…"):
                gray, d = ui.diagnose_and_record(str(ui.version_dir(v)), data, name, method, budget)
        except ImageError as error:
            st.error(str(error))
            continue
        st.image(overlay(gray, d.heatmap, alpha), width="stretch")
        st.markdown(f"**{method}** · {v}  \n{name}  \n**{d.label}**, p = {d.probability:.3f} "
                    f"(threshold {d.threshold:.3f})")
        for caution in d.warnings:
            st.warning(caution)
