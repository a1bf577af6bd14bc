"""Models: the registry, model cards and a side-by-side comparison of two versions."""
import json

import pandas as pd
import streamlit as st

import ui
from pneumo_core.evaluation import figures
from pneumo_core.evaluation.track_record import track_record
from pneumo_core.golive import adaptation
from pneumo_core.learn.store import read_json
from pneumo_core.records.registry import change_kind, promotions, summaries

ui.require_page("models")
st.title("Models")
rows = ui.versions()
if not rows:
    ui.first_run()
    st.stop()


registry_rows = summaries(ui.settings().models_dir)
records = {r["id"]: track_record(ui.version_dir(r["id"])) for r in registry_rows}
table = pd.DataFrame([{"version": r["id"], "role": r["role"], "backbone": r["backbone"], "created": r["created"],
                       "AUC": records[r["id"]].text("roc_auc"), "sensitivity": records[r["id"]].text("sensitivity"),
                       "specificity": records[r["id"]].text("specificity"), "threshold": r["threshold"],
                       "figures measured on": records[r["id"]].label} for r in registry_rows])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"threshold": st.column_config.NumberColumn(format="%.3f")})
st.caption("AUC, sensitivity and specificity [95 % CI] are the figures that apply to each version: a site's where "
           "it was validated or adapted there, else its internal test split (same source as training).")

st.subheader("Active model: rollback and history")
with st.container():
    active = next((r["id"] for r in registry_rows if r["active"]), None)
    for row in registry_rows:
        if row["active"]:
            continue
        text, button = st.columns([4, 1], vertical_alignment="center")
        if not ui.may("promote"):  # read-only for clinicians: no rollback or promote controls
            button = None
        record = records[row["id"]]
        text.markdown(f"`{row['id']}` · {row['role']} · AUC {record.text('roc_auc')} · sensitivity "
                      f"{record.text('sensitivity')} · specificity {record.text('specificity')}  \n*{record.label}*")
        rollback = change_kind(ui.settings().models_dir, row["id"], active) == "rollback"
        if button and button.button("Roll back" if rollback else "Make active", key=f"activate_{row['id']}"):
            ui.promote(row["id"], active)
    log = promotions(ui.settings().models_dir)
    if log:
        st.dataframe(pd.DataFrame(log[::-1]).reindex(columns=["when", "who", "action", "from", "to"]),
                     hide_index=True, width="stretch")

st.subheader("Model card")
version = ui.version_picker(key="card_model")
meta = read_json(ui.version_dir(version), "metadata.json")
tuner = read_json(ui.version_dir(version), "tuner.json")
data = meta["data"]
st.markdown("\n".join(f"- **{field}**: {ui.literal(text)}" for field, text in adaptation.card_lines(meta, tuner)))
card_record = track_record(ui.version_dir(version), meta)
st.markdown(f"**Figures that apply** ({card_record.label}): " + ", ".join(
    f"{figures.FIGURE_NAMES[m]} {card_record.text(m)}" for m in figures.FIGURE_NAMES))
st.dataframe(pd.DataFrame([{"split": s, **v} for s, v in data["sizes"].items()]), hide_index=True)
with st.expander("Ensemble hyper-parameters and tuner summary"):
    st.dataframe(pd.DataFrame(meta["ensemble"]), hide_index=True)
    st.dataframe(pd.DataFrame([{"trial": t["trial"], "val_auc": t["val_auc"], **t["hyperparameters"]}
                               for t in tuner["best"]]), hide_index=True)
with st.expander("metadata.json"):
    st.code(json.dumps(meta, indent=2), language="json")

st.subheader("Compare two versions")
if len(rows) < 2:
    st.info("Only one version so far; train another to compare.")
    st.stop()
left, right = st.columns(2)
with left:
    first = ui.version_picker("First", key="compare_a")
with right:
    second = ui.version_picker("Second", key="compare_b", index_of_active=False)
predictions = {v: ui.test_predictions(v) for v in dict.fromkeys([first, second])}
curves = {v: (frame["label"].to_numpy(), frame["probability"].to_numpy()) for v, frame in predictions.items()}
thresholds = {r["id"]: r["threshold"] for r in rows if r["id"] in curves}
st.plotly_chart(figures.roc_figure(curves, thresholds), width="stretch", key="compare_roc")
keys = ["roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece", "brier", "n"]
st.dataframe(pd.DataFrame({v: [read_json(ui.version_dir(v), "metrics.json")["test"][k] for k in keys]
                           for v in curves}, index=keys), width="stretch")
