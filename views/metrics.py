"""Metrics: threshold explorer, curves, calibration, training history, error browser."""
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from pneumo_core.choices import label_name
from pneumo_core.evaluation import figures
from pneumo_core.evaluation.metrics import (
    calibration_curve,
    classification_report,
    expected_calibration_error,
    metrics_at,
)
from pneumo_core.evaluation.track_record import FIGURES, track_record
from pneumo_core.learn.store import read_history, read_json

ui.require_page("metrics")
st.title("Metrics")
version = ui.version_picker(key="metrics_model")
if version is None:
    st.stop()
folder = ui.version_dir(version)
meta, metrics = read_json(folder, "metadata.json"), read_json(folder, "metrics.json")
test = ui.test_predictions(version)
y, p = test["label"].to_numpy(), test["probability"].to_numpy()
stored = float(meta["threshold"])
record = track_record(folder, meta)
st.markdown(f"**Figures that apply to this version** — {record.label}:  \n"
            + " · ".join(f"{figures.FIGURE_NAMES[m]} {record.text(m)}" for m in FIGURES))
if record.source == "internal":
    st.warning("Not validated at a site: these are internal test-split figures (same source as training), which "
               "overstate how the model does at a new hospital. Validate it on the Site page.")
st.caption(f"Below: the internal test split of {meta['data']['dir']} ({len(test)} films, same source as training; "
           f"not validated at a site). Stored threshold {stored:.3f} ({meta['threshold_rule']}).")

key = f"threshold_{version}"
if st.button("Reset to the stored threshold") or key not in st.session_state:
    st.session_state[key] = stored
threshold = st.slider("Threshold: call PNEUMONIA when probability ≥", 0.0, 1.0, step=0.001, key=key)
m = metrics_at(y, p, threshold)
cols = st.columns(5)
for col, (name, field) in zip(cols, [("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
                                     ("PPV", "precision"), ("NPV", "npv"), ("Accuracy", "accuracy")]):
    col.metric(name, f"{m[field]:.3f}")

left, right = st.columns(2)
left.plotly_chart(figures.confusion_figure(m["confusion_matrix"]), width="stretch", key="confusion")
right.plotly_chart(figures.roc_figure({version: (y, p)}, {version: threshold}), width="stretch", key="roc")
left, right = st.columns(2)
left.plotly_chart(figures.pr_figure(y, p, threshold), width="stretch", key="pr")
left.caption("The circle marks the current threshold.")
right.plotly_chart(figures.calibration_figure(calibration_curve(y, p), expected_calibration_error(y, p)),
                   width="stretch", key="calibration")

st.subheader("Classification report at this threshold")
st.dataframe(pd.DataFrame(classification_report(y, p, threshold)), hide_index=True, width="stretch")
ci = metrics["test"]["ci"]
st.markdown(f"Bootstrap {ci['level']:.0%} CIs at the stored threshold ({ci['n_boot']} resamples): "
            f"ROC-AUC {metrics['test']['roc_auc']:.3f} [{ci['roc_auc'][0]:.3f}, {ci['roc_auc'][1]:.3f}], "
            f"accuracy {metrics['test']['accuracy']:.3f} [{ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}].")

st.subheader("Training curves")
st.plotly_chart(figures.history_figure(read_history(folder)), width="stretch", key="history")

st.subheader("Error browser")
kind = st.radio("Show", ["false negatives", "false positives", "true positives", "true negatives"], horizontal=True)
called = p >= threshold
mask = {"false negatives": (y == 1) & ~called, "false positives": (y == 0) & called,
        "true positives": (y == 1) & called, "true negatives": (y == 0) & ~called}[kind]
chosen = test[mask].sort_values("probability", ascending=kind in ("false negatives", "true negatives"))
if chosen.empty:
    st.success(f"No {kind} at this threshold.")
    st.stop()
per_page = 4
pages = (len(chosen) - 1) // per_page + 1
page = st.number_input(f"Page (of {pages}; {len(chosen)} films)", 1, pages, 1)
for column, row in zip(st.columns(per_page), chosen.iloc[(page - 1) * per_page: page * per_page].itertuples()):
    column.image(ui.error_overlay(str(folder), row.path), width="stretch")
    column.caption(f"{ui.literal(Path(row.path).name)}  \ntruth {label_name(row.label)}, p = {row.probability:.3f}")
