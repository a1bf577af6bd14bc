"""Site: validate the model on a hospital's own labelled films, adapt it to them, promote."""
from pathlib import Path

import streamlit as st

import ui
from pneumo_core.errors import PneumoError
from pneumo_core.evaluation import figures
from pneumo_core.evaluation.track_record import FIGURES, site_reports, track_record
from pneumo_core.golive import adaptation, monitor, validation
from pneumo_core.golive import sites as site
from pneumo_core.learn.store import read_json
from pneumo_core.records import registry
from ui import verdict

st.title("Site go-live")
st.caption("Before the model is used at a hospital, score a labelled set of that hospital's own films (NORMAL/ and "
           "PNEUMONIA/ folders): the figures that hold there, with 95 % intervals, and a verdict. If they fall short, "
           "adapt the model to the site; the candidate's figures come from patient-grouped cross-validation.")
settings = ui.settings()
models_dir = settings.models_dir


actor = ui.require_page("site")


version = ui.version_picker(key="site_model")
if version is None:
    st.stop()
verdict.reviewed_adapt_offer(version, actor)

source = st.radio("Site films", ["A folder on this server", "Upload a zip"], horizontal=True)
folder = None
if source == "A folder on this server":
    folders = site.site_folders(settings)
    if not folders:
        st.info(f"No labelled folder (NORMAL/ and PNEUMONIA/) under {Path(settings.data_dir).parent} yet; "
                "upload a zip, or have the server's PNEUMO_SITE_DATA point at the sites' folders.")
    else:
        folder = st.selectbox("Folder", folders, format_func=str)
else:
    upload = st.file_uploader("Zip of NORMAL/ and PNEUMONIA/ films (PNG or JPEG)", type=["zip"])
    if upload is None:
        st.caption("The site's name is taken from the zip (its folder, else its file name); change it below.")
    else:
        key = f"site_zip_{upload.file_id}"
        try:
            if key not in st.session_state:   # named and unpacked once per upload, not on every rerun
                zip_name = site.zip_site_name(upload.name, upload.getvalue())
                st.session_state[key] = (zip_name, site.extract_zip(upload.getvalue(), settings.home, zip_name,
                                                                    settings.site_upload_days))
            upload_name, folder = st.session_state[key]
        except PneumoError as error:
            st.error(ui.literal(error))
if folder is None:
    st.stop()
default_name = upload_name if source != "A folder on this server" else site.site_name(folder)
# One name box; keyed by its default, so another folder or zip brings its own name instead of the old one.
typed = st.text_input("Site name", value=default_name, key=f"site_name_{default_name}")
try:
    name = site.site_name(folder, typed.strip() or default_name)
except PneumoError as error:
    st.error(ui.literal(error))
    st.stop()

folder_dir = ui.version_dir(version)
if st.button("Validate at this site", type="primary", icon=":material/fact_check:"):
    with st.spinner("Scoring the site's films…"):
        try:
            validation.validate(folder_dir, folder, name, alpha=settings.triage_alpha, beta=settings.triage_beta)
        except PneumoError as error:
            st.error(ui.literal(error))

report = next((r for r in site_reports(folder_dir) if r["site"] == name), None)
st.subheader(f"Validation at site {name}")
if report is None:
    st.caption(f"Model {version} has not been validated at site {name} yet.")
else:
    record = track_record(folder_dir)
    st.caption(f"Model {version} at its own threshold {report['threshold']:.3f} on {report['n']} labelled films of "
               f"site {name} ({report['created'][:16]}); 95 % intervals resample patients.")
    columns = st.columns(len(FIGURES))
    for column, metric in zip(columns, FIGURES):
        low_high = report["ci"].get(metric)
        column.metric(figures.FIGURE_NAMES[metric], f"{report[metric]:.3f}" if report[metric] is not None else "–",
                      help=f"95 % CI {low_high[0]:.3f}–{low_high[1]:.3f}" if low_high else None)
        if low_high:
            column.caption(f"[{low_high[0]:.2f}–{low_high[1]:.2f}]")
    if "verdict" not in report:   # an adapted version at its own site: cross-validated figures, no verdict
        st.info(f"{ui.literal(report.get('label', ''))}: the adapted version's cross-validated figures. A verdict "
                f"needs films it was not adapted on: validate it on other films of the site.")
    else:
        (st.success if report.get("holds") else st.warning)(report["verdict"])
        if report.get("triage_summary"):
            st.info(report["triage_summary"], icon=":material/rule:")
        prevalence, prevalence_source = monitor.clinic_prevalence(settings, folder_dir)
        if prevalence is not None and report.get("sensitivity") is not None and report.get("specificity") is not None:
            ppv, npv = monitor.predictive_values(report["sensitivity"], report["specificity"], prevalence)
            st.markdown(f"At a clinic prevalence of **{prevalence:.0%}** ({prevalence_source}): PPV **{ppv:.2f}**, "
                        f"NPV **{npv:.2f}** (they depend on prevalence; the site set's was "
                        f"{report.get('prevalence', 0):.0%}).")
        if report["ood"]["available"]:
            st.markdown(f"**{report['ood']['rate']:.1%}** of the site's films were flagged as unlike the training "
                        f"films (about 5 % expected).")
        internal = report["internal"]
        internal_figures = {**internal, "ppv": internal.get("precision")}
        left, right = st.columns(2)
        left.plotly_chart(figures.ci_figure({f"site {name} ({report['n']} films)": (report, report["ci"]),
                                             "internal test split": (internal_figures, {})},
                                            f"Figures at site {name} vs the internal test split"),
                          width="stretch", key="site_ci")
        right.plotly_chart(figures.calibration_figure(report["calibration"], report["ece"],
                                                      f"Calibration at site {name} (ECE {report['ece']:.3f})"),
                           width="stretch", key="site_calibration")
        if report.get("probabilities"):
            roc = figures.roc_figure({f"site {name}": (report["labels"], report["probabilities"])},
                                     {f"site {name}": report["threshold"]})
            st.plotly_chart(roc.update_layout(title=f"ROC at site {name}, operating point at the stored threshold"),
                            width="stretch", key="site_roc")

st.subheader("Adapt to this site")
queue = ui.job_queue()
measured = adaptation.measured_seconds(models_dir)
st.caption("A new candidate model trained on the original films together with this site's films, calibrated and "
           "thresholded on the site's out-of-fold predictions. It runs as a job: "
           + (f"about {max(1, round(measured / 60))} min on this server (the median of its earlier adaptations)."
              if measured else "no adaptation has run on this server yet; the bar below follows its stages."))
if actor.may("site_adapt") and st.button("Adapt to this site", icon=":material/tune:"):
    try:
        job_id = queue.submit_site_adapt(site.class_folder(folder), name, version, actor=actor)
        st.success(f"Job {job_id} submitted.")
    except PneumoError as error:
        st.error(ui.literal(error))
ui.job_progress(queue, log_lines=8, follow_key="following_site_job", cancel_prefix="cancel_site_")

adapted = [m for m in ui.versions() if (m.get("site") or {}).get("name") == name]
if not adapted:
    st.caption(f"No version adapted to site {name} yet.")
    st.stop()
active = registry.active_version(models_dir)
candidate = st.selectbox("Adapted version", [m["id"] for m in adapted])
# Once promoted, the candidate is the active one: compare it with the version it replaced, not with itself.
other = registry.replaced(models_dir, active) if candidate == active else active
other_title = "replaced" if candidate == active else "active"
if other is None or not ui.version_dir(other).is_dir():
    if candidate == active:
        st.success(f"{candidate} is the active model; it replaced no earlier version still on this server.")
    else:
        st.info("No active model to compare with.")
    st.stop()
chosen = track_record(ui.version_dir(candidate))
current = track_record(ui.version_dir(other))
sources = {f"{'active ' if candidate == active else ''}{candidate} ({chosen.label})": (chosen.figures, chosen.ci),
           f"{other_title} {other} ({current.label})": (current.figures, current.ci)}
st.plotly_chart(figures.ci_figure(sources, f"Adapted {'and active' if candidate == active else 'candidate'} vs "
                                           f"the {other_title} model at site {name}"),
                width="stretch", key="adapted_ci")
with st.expander(f"What {candidate} is, in plain words"):
    st.markdown("\n".join(f"- **{field}**: {ui.literal(text)}" for field, text in adaptation.card_lines(
        read_json(ui.version_dir(candidate), "metadata.json"))))
for title, record in (("Adapted", chosen), (other_title.capitalize(), current)):
    st.markdown(f"**{title}** — " + ", ".join(f"{figures.FIGURE_NAMES[m]} {record.text(m)}" for m in FIGURES)
                + f"  \n*{record.label}*")
if candidate == active:
    st.success(f"{candidate} is the active model; it replaced {other}.")
elif actor.may("promote") and st.button(f"Promote {candidate}", type="primary", icon=":material/upgrade:"):
    ui.promote(candidate, active)
