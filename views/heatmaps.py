"""Heatmaps: compare CAM methods, two model versions, or several films, each with its faithfulness."""
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from pneumo_core.errors import PneumoError
from pneumo_core.explain.heatmap import NAMES, colour_bar, display_name, for_display, overlay
from pneumo_core.serve.diagnosis import truth_and_call

ui.require_page("heatmaps")
st.title("Heatmaps")
st.caption("Evidence for pneumonia inside the chest (the film's outline, above the diaphragm), whatever the call. "
           "Every panel uses the same colours on one evidence scale (no colour = none, blue = weak, red = strong; "
           "a film called clearly NORMAL shows little or none) and the same opacity. Under each: the deletion "
           "curve, how fast the probability falls as the hottest pixels are "
           "removed; a heatmap that shows what the score depends on falls faster than random removal.")
if ui.version_picker("Model version", key="heatmap_model") is None:
    st.stop()
version = st.session_state["heatmap_model"]
versions = [v["id"] for v in ui.versions()]
threshold = next(v["threshold"] for v in ui.versions() if v["id"] == version)
predictions = ui.test_predictions(version)

source = st.radio("Films", ["From the test split", "Upload"], horizontal=True)
if source == "Upload":
    uploads = st.file_uploader("Chest X-rays", accept_multiple_files=True)
    ui.check_upload_count(uploads or [])
    films = [(f"{i + 1}: {u.name}", u.getvalue(), None) for i, u in enumerate(uploads or [])]
else:
    labels = {r.path: f"{Path(r.path).name} ({truth_and_call(r.label, r.probability, threshold)})"
              for r in predictions.itertuples()}
    picked = st.multiselect("Test-split films", list(labels), default=list(labels)[:1], format_func=labels.get,
                            max_selections=6)
    films = [(Path(p).name, Path(p).read_bytes(), int(predictions.set_index("path").loc[p, "label"])) for p in picked]
if not films:
    st.info("Choose at least one film.")
    st.stop()

mode = st.radio("Compare", ["CAM methods", "Two model versions", "Several films"], horizontal=True)
if mode == "CAM methods":
    rows = [[(method, version, film) for method in NAMES] for film in films]
elif mode == "Two model versions":
    if len(versions) < 2:
        st.info(f"Only one model version exists ({version}): there is no second version to compare with. "
                "Train another on the Retrain page.")
        st.stop()
    other = ui.version_picker("Compare with", key="heatmap_other", index_of_active=False)
    if other == version:
        st.info("Pick a different version to compare with.")
        st.stop()
    method = st.selectbox("Method", list(NAMES), format_func=display_name)
    rows = [[(method, v, film) for v in (version, other)] for film in films]
else:
    method = st.selectbox("Method", list(NAMES), format_func=display_name)
    rows = [[(method, version, film) for film in films[i:i + 3]] for i in range(0, len(films), 3)]


@st.fragment
def panels() -> None:
    """The heatmaps: moving the opacity or the outline toggle reruns this part only."""
    opacity, outline = st.columns(2)
    alpha = opacity.slider("Opacity (all panels)", 0.0, 1.0, 0.45, 0.05)
    outline_only = outline.toggle("Outline of the strongest evidence only")
    if not outline_only:
        st.image(colour_bar(), width="stretch", caption="weak → strong evidence for pneumonia (one scale)")
    budget = ui.decode_budget()
    for row in rows:
        for column, (method, v, (name, data, truth)) in zip(st.columns(len(row)), row):
            with column:
                try:
                    with st.spinner(f"{display_name(method)}…"):
                        path = str(ui.version_dir(v))
                        gray, d = ui.diagnose_and_record(path, data, name, method, budget)
                        curve = ui.faithfulness(path, data, name, method)
                except PneumoError as error:
                    st.error(ui.literal(error))
                    continue
                st.image(overlay(for_display(gray), d.heatmap, alpha, outline_only), width="stretch")
                st.markdown(f"**{display_name(method)}** · {ui.literal(v)}  \n{ui.literal(name)}  \n"
                            f"{truth_and_call(truth, d.probability, d.threshold)} (threshold "
                            f"{d.threshold:.2f})")
                st.line_chart(pd.DataFrame({"hottest first": curve.probabilities,
                                            "random order": curve.random_probabilities},
                                           index=pd.Index(curve.fractions, name="share of pixels removed")),
                              height=180)
                st.caption(f"Deletion area {curve.area:.2f}, random order {curve.random_area:.2f} (mean probability "
                           "of pneumonia along the curve): "
                           + ("falls faster than random, the heatmap points at what the score uses."
                              if curve.area < curve.random_area else
                              "no faster than random: do not read this heatmap as the reason for the score.")
                           + (" The probability is already low, so removing evidence can hardly lower it."
                              if d.probability < 0.1 else ""))
                for caution in d.warnings:
                    st.warning(ui.literal(caution))


panels()
