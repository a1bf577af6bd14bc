"""Plotly figure builders: pure functions from evaluation results to figures (no Streamlit)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from pneumo_core.choices import CLASSES
from pneumo_core.evaluation.metrics import curves, metrics_at

CALM = {"template": "plotly_white", "margin": dict(l=40, r=20, t=40, b=40), "height": 400,
        "legend": dict(orientation="h", yanchor="top", y=-0.2, x=0)}
COLOURS = ["#2a6f97", "#c44536", "#6a994e", "#9c6644"]


def roc_figure(models: dict[str, tuple], threshold_points: dict[str, float] | None = None) -> go.Figure:
    """ROC curves of one or more models: {name: (labels, probabilities)}; marks each operating point."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"),
                             name="chance", hoverinfo="skip"))
    for colour, (name, (y, p)) in zip(COLOURS, models.items()):
        roc = curves(y, p)["roc"]
        auc = float(np.trapezoid(roc["tpr"], roc["fpr"]))
        fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"{name} (AUC {auc:.3f})",
                                 line=dict(color=colour), customdata=roc["thresholds"],
                                 hovertemplate="1-specificity %{x:.3f}<br>sensitivity %{y:.3f}"
                                               "<br>threshold %{customdata:.3f}<extra></extra>"))
        if threshold_points and name in threshold_points:
            m = metrics_at(y, p, threshold_points[name])
            fig.add_trace(go.Scatter(x=[1 - m["specificity"]], y=[m["sensitivity"]], mode="markers",
                                     marker=dict(size=12, color=colour, symbol="circle-open", line=dict(width=3)),
                                     name=f"{name} @ {threshold_points[name]:.3f}"))
    return fig.update_layout(title="ROC curve", xaxis_title="1 - specificity (false positive rate)",
                             yaxis_title="sensitivity", **CALM)


def pr_figure(y, p, threshold: float) -> go.Figure:
    """Precision-recall curve with the operating point."""
    pr = curves(y, p)["pr"]
    m = metrics_at(y, p, threshold)
    fig = go.Figure(go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name="precision-recall",
                               line=dict(color=COLOURS[0])))
    fig.add_trace(go.Scatter(x=[m["recall"]], y=[m["precision"]], mode="markers", name=f"threshold {threshold:.3f}",
                             marker=dict(size=12, color=COLOURS[1], symbol="circle-open", line=dict(width=3))))
    return fig.update_layout(title="Precision-recall curve", xaxis_title="recall (sensitivity)",
                             yaxis_title="precision (PPV)", **CALM)


def confusion_figure(matrix) -> go.Figure:
    """Confusion matrix [[tn, fp], [fn, tp]] as an annotated heatmap (rows: truth, columns: call)."""
    z = np.asarray(matrix)
    names = list(CLASSES)
    text = [[f"{z[0, 0]}<br>true negative", f"{z[0, 1]}<br>false positive"],
            [f"{z[1, 0]}<br>false negative", f"{z[1, 1]}<br>true positive"]]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Blues",
                               showscale=False, hoverinfo="skip"))
    return fig.update_layout(title="Confusion matrix", xaxis_title="model call", yaxis_title="truth",
                             yaxis_autorange="reversed", **{**CALM, "height": 320})


def calibration_figure(curve: dict, ece: float, title: str | None = None) -> go.Figure:
    """Reliability diagram: observed pneumonia rate against mean predicted probability per bin."""
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"),
                               name="perfect calibration"))
    fig.add_trace(go.Scatter(x=curve["mean_probability"], y=curve["observed_rate"], mode="lines+markers",
                             marker=dict(size=[6 + 14 * c / max(curve["count"]) for c in curve["count"]]),
                             customdata=curve["count"], name="model", line=dict(color=COLOURS[0]),
                             hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>%{customdata} films"))
    return fig.update_layout(title=title or f"Calibration (ECE {ece:.3f})", xaxis_title="predicted probability",
                             yaxis_title="observed pneumonia rate", **CALM)


def history_figure(history: pd.DataFrame) -> go.Figure:
    """Training curves per epoch (loss, validation loss, AUC, accuracy) for each ensemble member."""
    fig = go.Figure()
    for colour, (member, rows) in zip(COLOURS * 4, history.groupby("member", sort=False)):
        for column, dash in (("loss", "solid"), ("val_loss", "dot"), ("val_auc", "dash"), ("val_accuracy", "dashdot")):
            if column in rows:
                fig.add_trace(go.Scatter(x=rows["epoch"], y=rows[column], mode="lines",
                                         line=dict(color=colour, dash=dash), name=f"{column} (head {member})"))
    return fig.update_layout(title="Training curves", xaxis_title="epoch", **CALM)


FIGURE_NAMES = {"roc_auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV",
                "npv": "NPV", "ece": "ECE"}


def ci_figure(sources: dict[str, tuple[dict, dict]], title: str) -> go.Figure:
    """Figures with their 95 % intervals as error bars, one colour per source.

    Args:
        sources: {name naming the data: (figures {metric: value}, ci {metric: (low, high)})}.
        title: the figure's title (say which films the figures come from).
    """
    fig = go.Figure()
    for colour, (name, (values, ci)) in zip(COLOURS, sources.items()):
        metrics = [m for m in FIGURE_NAMES if values.get(m) is not None]
        y = [values[m] for m in metrics]
        high = [(ci.get(m) or (v, v))[1] - v for m, v in zip(metrics, y)]
        low = [v - (ci.get(m) or (v, v))[0] for m, v in zip(metrics, y)]
        fig.add_trace(go.Scatter(x=[FIGURE_NAMES[m] for m in metrics], y=y, mode="markers", name=name,
                                 marker=dict(size=11, color=colour),
                                 error_y=dict(type="data", symmetric=False, array=high, arrayminus=low),
                                 hovertemplate="%{x} %{y:.3f}<extra>" + name + "</extra>"))
    return fig.update_layout(title=title, yaxis=dict(range=[0, 1.02], title="value [95 % CI]"),
                             scattermode="group", **CALM)


def distribution_figure(reference, recent, reference_label: str, recent_label: str) -> go.Figure:
    """Probability histograms (share of films per bin) of a reference set and recent diagnoses."""
    fig = go.Figure()
    for colour, (name, values) in zip(COLOURS, ((reference_label, reference), (recent_label, recent))):
        fig.add_trace(go.Histogram(x=list(values), name=f"{name} ({len(values)})", histnorm="probability",
                                   xbins=dict(start=0, end=1, size=0.05), opacity=0.6, marker_color=colour))
    return fig.update_layout(title="Probability of pneumonia: recent diagnoses vs reference", barmode="overlay",
                             xaxis_title="probability", yaxis_title="share of films", **CALM)


def per_day_figure(per_day: list[dict]) -> go.Figure:
    """Diagnoses per day (bars) with the PNEUMONIA calls and OOD-flagged films among them."""
    days = [d["day"] for d in per_day]
    fig = go.Figure(go.Bar(x=days, y=[d["diagnoses"] for d in per_day], name="diagnoses", marker_color=COLOURS[0]))
    fig.add_trace(go.Scatter(x=days, y=[d["pneumonia"] for d in per_day], name="called PNEUMONIA",
                             mode="lines+markers", line=dict(color=COLOURS[1])))
    fig.add_trace(go.Scatter(x=days, y=[d["ood_flagged"] for d in per_day], name="unlike the training films",
                             mode="lines+markers", line=dict(color=COLOURS[3], dash="dot")))
    # Whole days on the axis: with one or two days of data Plotly's date axis zooms in to milliseconds.
    fig.update_xaxes(type="date", tickformat="%d %b", dtick=86_400_000)
    return fig.update_layout(title="Diagnoses per day (audit trail)", xaxis_title="day (UTC)",
                             yaxis_title="films", **CALM)
