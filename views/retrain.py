"""Retrain: one-click retraining, live progress, candidate vs active, promotion."""
import pandas as pd
import streamlit as st

import ui
from pneumo_core.choices import TRAIN_CHOICES, label_name
from pneumo_core.errors import PneumoError
from pneumo_core.evaluation import figures
from pneumo_core.golive.comparison import compare
from pneumo_core.imaging.films import ImageError, read_image
from pneumo_core.jobs.argv import clamp_params
from pneumo_core.jobs.confine import check_form_paths
from pneumo_core.records import registry
from pneumo_core.settings import TRAIN_LIMITS, TrainConfig

ui.require_page("retrain")
st.title("Retrain")
queue = ui.job_queue()
models_dir = ui.settings().models_dir
config = TrainConfig.from_dict(clamp_params(ui.current_train_params().to_dict()))   # within job limits

st.subheader("New model")
active = registry.active_version(models_dir)
st.caption(f"Data `{config.data_dir}` · {config.backbone} at {config.image_size} px · "
           f"{config.trials} tuner trials · " + (f"options of the active model {active}" if active
                                                     else "default options (no model yet)"))
with st.expander("Advanced"):
    backbones = list(TRAIN_CHOICES["backbone"])
    left, right = st.columns(2)
    config.backbone = left.selectbox("Backbone", backbones, index=backbones.index(config.backbone))
    config.weights = right.text_input("Weights", config.weights,
                                      help="auto (local file, else ImageNet download) | imagenet | none | "
                                           "path to a .h5 file")
    config.trials = left.number_input("Tuner trials", *TRAIN_LIMITS["trials"], config.trials)
    config.epochs = right.number_input("Epochs per head", *TRAIN_LIMITS["epochs"], config.epochs)
    config.fine_tune_epochs = left.number_input("Fine-tuning epochs (slow without a GPU)",
                                                *TRAIN_LIMITS["fine_tune_epochs"], config.fine_tune_epochs)
    config.image_size = right.number_input("Image size (px)", *TRAIN_LIMITS["image_size"], config.image_size,
                                           step=32)
    config.seed = left.number_input("Seed", *TRAIN_LIMITS["seed"], config.seed)
if st.button("Retrain with current settings", type="primary", icon=":material/model_training:"):
    try:
        job_id = queue.submit(check_form_paths(config, ui.settings()), actor=ui.actor())
    except PneumoError as error:
        st.error("Not submitted:", icon=":material/error:")
        st.code(str(error), language=None, wrap_lines=True)  # plain text: paths and messages are not Markdown
    else:
        st.success(f"Job {job_id} submitted. It checks the data first; unreadable films are skipped and listed "
                   f"in its log.")


st.subheader("Current job")
ui.job_progress(queue, log_lines=12, follow_key="following_job", cancel_prefix="cancel_")

st.subheader("Candidate vs active")
candidates = registry.candidates(models_dir)
if not candidates or not active:
    st.caption("No candidate waiting: a finished job's model appears here before it can replace the active one.")
else:
    candidate = st.selectbox("Candidate", candidates) if len(candidates) > 1 else candidates[0]
    result = compare(models_dir, active, candidate)
    if result.note:
        st.warning(result.note)
    columns = st.columns(2)
    for column, version, title in zip(columns, (active, candidate), ("Active", "Candidate")):
        m = result.metrics[version]
        base = result.metrics[active]
        column.markdown(f"**{title}** `{version}`")
        a, b, c = column.columns(3)
        for box, key, label in zip((a, b, c), ("roc_auc", "sensitivity", "specificity"),
                                   ("AUC", "Sensitivity", "Specificity")):
            delta = None if version == active else f"{m[key] - base[key]:+.3f}"
            box.metric(label, f"{m[key]:.3f}", delta)
        column.caption(f"threshold {m['threshold']:.3f} · accuracy {m['accuracy']:.3f} · {int(m['n'])} test films")
    st.plotly_chart(figures.roc_figure(result.curves(), result.metrics.loc["threshold"].to_dict()),
                    width="stretch", key="candidate_roc")
    differ = result.disagreements
    st.markdown(f"**{len(differ)} film(s) called differently** (most confident disagreements first)")
    if len(differ):
        shown = differ.head(24).copy()

        def thumbnail(path):
            try:
                return ui.thumbnail_uri(read_image(path))
            except ImageError:
                return None
        shown.insert(0, "film", shown["path"].map(thumbnail))
        shown["truth"] = shown["label"].map(label_name)
        st.dataframe(shown[["film", "truth", f"call_{active}", f"p_{active}", f"call_{candidate}",
                            f"p_{candidate}", "path"]],
                     hide_index=True, width="stretch", row_height=72,
                     column_config={"film": st.column_config.ImageColumn("film"),
                                    f"call_{active}": "active's call", f"call_{candidate}": "candidate's call",
                                    f"p_{active}": st.column_config.NumberColumn("active p", format="%.3f"),
                                    f"p_{candidate}": st.column_config.NumberColumn("candidate p", format="%.3f")})
    if ui.may("promote") and st.button(f"Promote {candidate}", type="primary", icon=":material/upgrade:"):
        ui.promote(candidate, active)

st.subheader("Past jobs")
jobs = queue.list(limit=50)
if not jobs:
    st.caption("No job yet.")
else:
    table = pd.DataFrame([{"job": j["id"], "state": j["state"], "submitted": j["submitted"], "by": j["submitted_by"],
                           "minutes": round(j["seconds"] / 60, 1) if j["seconds"] else None,
                           "model": j["model_id"], "problem": (j["error"] or "").split("\n")[0]} for j in jobs])
    st.dataframe(table, hide_index=True, width="stretch")
    # Keyed by the newest job, so a new job resets the choice to it instead of keeping an older one.
    chosen = st.selectbox("Log of job", [j["id"] for j in jobs], key=f"log_job_{jobs[0]['id']}")
    job = next(j for j in jobs if j["id"] == chosen)
    if job["error"] and job["state"] == "cancelled":  # a cancel is the user's own choice, not a failure
        st.info(ui.literal(job["error"]))
    elif job["error"]:
        st.error(f"Job {chosen} failed:", icon=":material/error:")
        st.code(job["error"], language=None, wrap_lines=True)  # plain text, never Markdown
    st.code("\n".join(queue.log_tail(chosen, 40)) or "(no output)", language=None)
