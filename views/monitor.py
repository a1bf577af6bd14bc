"""Monitor: recent diagnoses (audit trail) against the model's reference distribution."""
import streamlit as st

import ui
from pneumo_core.evaluate import figures
from pneumo_core.golive.monitor import monitor

ui.require_page("monitor")
st.title("Monitor")
st.caption("Are recent diagnoses still like the films the model was validated on? Probabilities of recent calls "
           "(audit trail) against the version's reference films, PSI and Kolmogorov–Smirnov drift statistics, and "
           "the share of films flagged as unlike the training films.")
version = ui.version_picker(key="monitor_model")
if version is None:
    st.stop()
days = st.slider("Recent window (days)", 1, 365, 30, key="monitor_days")
report = monitor(ui.settings(), days, version, trail=ui.audit_trail())
lines = report["lines"]

for warning in report["warnings"]:
    (st.error if report["drift"] else st.info)(warning, icon=":material/warning:" if report["drift"] else None)
if not report["drift"] and report["n"] >= lines["min_recent"]:
    st.success(f"No drift past the warning lines in the last {days} days.")

a, b, c, d = st.columns(4)
a.metric("Diagnoses in the window", report["n"])
b.metric("PSI", f"{report['psi']:.3f}" if report["psi"] is not None else "–", help=f"warning at ≥ {lines['psi']}")
c.metric("KS statistic", f"{report['ks']:.3f}" if report["ks"] is not None else "–",
         help=f"warning when its p-value < {lines['ks_p']}" + (f" (now {report['ks_p']:.2g})"
                                                               if report["ks_p"] is not None else ""))
d.metric("Flagged unlike training films", f"{report['ood_rate']:.1%}" if report["ood_rate"] is not None else "–",
         help=f"warning above {lines['ood_rate']:.0%}; about 5 % expected")
st.caption(f"Reference: {report['reference']['label']} ({report['reference']['n']} films). Warning lines: PSI ≥ "
           f"{lines['psi']} or KS p-value < {lines['ks_p']} (from {lines['min_recent']} diagnoses), OOD flag rate "
           f"> {lines['ood_rate']:.0%}.")
left, right = st.columns(2)
left.plotly_chart(figures.distribution_figure(report["reference"]["probabilities"], report["recent"],
                                              report["reference"]["label"], f"last {days} days"),
                  width="stretch", key="monitor_distribution")
right.plotly_chart(figures.per_day_figure(report["per_day"]), width="stretch", key="monitor_per_day")
