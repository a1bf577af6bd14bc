"""Monitor: recent diagnoses (audit trail) against the model's reference distribution."""
import streamlit as st

import ui
from pneumo_core.evaluation import figures
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

reader = report["reader"]
st.subheader("Against the readers' verdicts")
if not reader["films"]:
    st.caption(f"No reader has given a verdict on a call of {report['model']} yet (Diagnose and Worklist, or "
               "`python -m pneumo_core review`).")
    st.stop()
st.caption(f"Readers' verdicts on {reader['films']} films, {reader['first'][:10]}–{reader['last'][:10]} (the latest "
           f"verdict per film); {reader['not_assessable']} read not assessable, left out of the figures. PPV and NPV "
           "at the prevalence the readers saw"
           + (f" ({reader['prevalence']:.0%} pneumonia)." if reader["prevalence"] is not None else "."))
for column, (name, key) in zip(st.columns(4), (("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
                                                ("PPV", "ppv"), ("NPV", "npv"))):
    figure = reader[key]
    column.metric(name, f"{figure['value']:.3f}" if figure["value"] is not None else "–",
                  help=f"{figure['k']} of {figure['n']} films")
    if figure["ci"]:
        column.caption(f"95 % CI [{figure['ci'][0]:.2f}–{figure['ci'][1]:.2f}] · {figure['k']}/{figure['n']}")
for tier, entry in reader["by_tier"].items():
    rate_name = {"low": "miss_rate", "high": "false_alarm_rate"}.get(tier)
    if rate_name and entry["alarm"]:
        st.error(f"The {tier} tier's guarantee is broken beyond chance: {entry[rate_name]['k']} of "
                 f"{entry[rate_name]['n']} ({entry[rate_name]['value']:.1%}) against {entry['guarantee']:.0%} "
                 f"guaranteed (p {entry['p_value']:.2g}). Validate the version at the site again.",
                 icon=":material/warning:")
tiers = [{"tier": tier, "films": e["n"], "read PNEUMONIA": e["pneumonia"], "read NORMAL": e["normal"],
          "rate vs guarantee": (f"{'missed' if tier == 'low' else 'false alarms'} {e[rate]['k']}/{e[rate]['n']}"
                                + (f" (guaranteed ≤ {e['guarantee']:.0%})" if e.get("guarantee") is not None else "")
                                if (rate := {"low": "miss_rate", "high": "false_alarm_rate"}.get(tier)) else ""),
          "alarm": "yes" if e["alarm"] else ""} for tier, e in reader["by_tier"].items()]
st.dataframe(tiers, hide_index=True, width="stretch", key="monitor_tiers")
st.markdown(f"**Disagreements to re-read** ({len(reader['disagreements'])})")
if reader["disagreements"]:
    st.dataframe([{"when": r["time"][:16], "call": r["call"], "read": r["read"], "probability": r["probability"],
                   "tier": r["tier"] or "", "reader": r["who"], "zones": ", ".join(r["zones"]), "note": r["note"],
                   "film SHA-256": r["sha256"][:16]} for r in reader["disagreements"]],
                 hide_index=True, width="stretch", key="monitor_disagreements")
