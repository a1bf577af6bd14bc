"""Diagnose: upload films -> call, probability, certainty, heatmap, report."""
import pandas as pd
import streamlit as st

import ui
from pneumo_core.cam import METHODS, overlay
from pneumo_core.diagnosis import NOTICE
from pneumo_core.io import ACCEPTED, ImageError
from pneumo_core.registry import read_json
from pneumo_core.report import report_bytes, report_page

st.title("Diagnose")
st.caption(NOTICE)
diagnoser = ui.diagnoser()
model = diagnoser.model
test_metrics = read_json(model.path, "metrics.json").get("test")

# Any file type: DICOM often has no extension, and a wrong file deserves a message, not a silent refusal.
uploads = st.file_uploader(f"Chest X-rays ({ACCEPTED}), one or many", accept_multiple_files=True)
left, right = st.columns(2)
method = left.selectbox("Heatmap method", list(METHODS), format_func=lambda m: {
    "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM (slower)"}[m])
alpha = right.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05)
if not uploads:
    st.info(f"Upload one or more frontal chest films. Model {model.id} calls PNEUMONIA at probability "
            f"≥ {model.threshold:.3f}.")
    st.stop()


ui.check_upload_count(uploads)
results, failures, budget = [], [], ui.decode_budget()
bar = st.progress(0.0, text="Scoring…")
for i, upload in enumerate(uploads):
    try:
        results.append(ui.diagnose_and_record(str(model.path), upload.getvalue(), upload.name, method, budget))
    except ImageError as error:
        failures.append(str(error))
    bar.progress((i + 1) / len(uploads), text=f"Scored {i + 1} of {len(uploads)}")
bar.empty()
if failures:
    st.markdown(f"**{len(failures)} of {len(uploads)} files could not be scored**"
                + (f"; the other {len(results)} were." if results else "."))
for message in failures:
    st.error(message)
if not results:
    st.stop()

results.sort(key=lambda r: r[1].probability, reverse=True)
if len(results) > 1:
    st.subheader("Worklist")
    table = pd.DataFrame([{"film": ui.thumbnail_uri(g), "file": d.name, "call": d.label,
                           "probability": d.probability, "certainty": d.certainty.split(":")[0],
                           "caution": "unlike the training films" if d.ood_flag else ""}
                          for g, d in results])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "film": st.column_config.ImageColumn("film", width="small"),
        "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f")})
    chosen = st.selectbox("Show film", [d.name for _, d in results])
    gray, d = next(r for r in results if r[1].name == chosen)
else:
    gray, d = results[0]

st.subheader(d.name)
call, probability, sure = st.columns(3)
call.metric("Call", d.label)
probability.metric("Probability of pneumonia", f"{d.probability:.3f}", f"threshold {d.threshold:.3f}",
                   delta_color="off")
sure.metric("Certainty", d.certainty.split(":")[0])
if d.certainty.startswith("borderline"):
    st.warning(d.certainty.capitalize() + ".")
for caution in d.warnings:  # shown with the call, never instead of it
    st.warning(caution, icon=":material/warning:")
st.caption(("Out-of-distribution check unavailable for this model version" if d.ood_score is None else
            f"Out-of-distribution score {d.ood_score:.2f} (flagged above 1.00)")
           + (f" · {d.info.summary()}" if d.info else ""))
film, heat = st.columns(2)
film.image(gray, caption="Film", width=440, clamp=True)
heat.image(overlay(gray, d.heatmap, alpha), caption=f"{method}: evidence for the {d.label} call (red = strongest)",
           width=440)
st.caption(f"Model {d.model_id} · {d.when}" + (
    f" · test-set sensitivity {test_metrics['sensitivity']:.3f}, specificity {test_metrics['specificity']:.3f}"
    if test_metrics else ""))
page = report_page(gray, d, test_metrics, alpha)
png, pdf = st.columns(2)
stem = d.name.rsplit(".", 1)[0]
png.download_button("Download report (PNG)", report_bytes(page, "PNG"), f"{stem}-report.png", "image/png")
pdf.download_button("Download report (PDF)", report_bytes(page, "PDF"), f"{stem}-report.pdf", "application/pdf")
