"""Plotly figures of the studio: the accuracy / privacy trade-off, attack ROC curves, per-class
accuracy and training curves. Data and maths come from :mod:`pipeline.views.report`; this only draws.

The trade-off figure itself is drawn in :mod:`pipeline.views.stakeholder` (the stakeholder report, which
the CLI writes too, embeds it) and re-exported here. Every figure names and colours a model as
:mod:`pipeline.views.legend` says, so a model has one name and one colour on every plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from pipeline.views.legend import look
from pipeline.views.report import ModelPoint, roc_resolution
from pipeline.views.stakeholder import COIN_FLIP, tradeoff_figure  # noqa: F401 (re-exported)

FPR_MARKS = (0.001, 0.01)  # TPR at the lowest of these FPRs the audit can measure is marked on the ROC curves
RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")  # a second run's models: same colour, another dash


def trace_name(p: ModelPoint, runs: Sequence[str]) -> str:
    """A model's legend entry: its name in words, and its run when several runs are drawn."""
    return p.name if len(runs) < 2 else f"{p.name} · {p.run_id}"


def roc_figure(points: Sequence[ModelPoint], marks: Sequence[float] = FPR_MARKS) -> go.Figure:
    """Log-log ROC curves of the attack (LiRA's way to read them). The axes start at the audits'
    resolution (1 / non-members, 1 / members): nothing below is measurable, zeros sit on the axis. The TPR
    at the lowest of ``marks`` the audits resolve (0.1% FPR, else 1%) is marked."""
    fig = go.Figure()
    fpr_floor, tpr_floor = roc_resolution(points)
    low = min(fpr_floor, tpr_floor)
    fig.add_trace(go.Scatter(x=[low, 1], y=[low, 1], mode="lines", name=COIN_FLIP,
                             line={"dash": "dash", "color": "#999"}, hoverinfo="skip"))
    mark = next((m for m in sorted(marks) if m >= fpr_floor * (1 - 1e-9)), None)
    runs = list(dict.fromkeys(p.run_id for p in points))
    for p in points:
        if not p.roc_fpr:
            continue
        fpr = np.maximum(np.asarray(p.roc_fpr), fpr_floor)
        tpr = np.maximum(np.asarray(p.roc_tpr), tpr_floor)
        color, name = look(p.series).color, trace_name(p, runs)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUC {p.auc:.3f})",
                                 line={"shape": "hv", "color": color,
                                       "dash": RUN_DASHES[runs.index(p.run_id) % len(RUN_DASHES)]}))
        value = _tpr_at(p, mark)
        if mark and np.isfinite(value):
            fig.add_trace(go.Scatter(x=[mark], y=[max(value, tpr_floor)], mode="markers", showlegend=False,
                                     marker={"size": 10, "symbol": "x", "color": color},
                                     hovertemplate=f"{name}<br>TPR@{mark:.1%} FPR = {value:.4f}<extra></extra>"))
    if mark:
        fig.add_vline(x=mark, line={"dash": "dot", "color": "#777"}, annotation_text=f"FPR {mark:.1%}")
    pad = 0.05  # decades below the resolution, so the lowest step is not on the frame
    fig.update_xaxes(type="log", title=f"false-positive rate (resolution 1/{round(1 / fpr_floor)})",
                     range=[np.log10(fpr_floor) - pad, 0])
    fig.update_yaxes(type="log", title=f"true-positive rate (resolution 1/{round(1 / tpr_floor)})",
                     range=[np.log10(tpr_floor) - pad, 0])
    fig.update_layout(title="Attack ROC (log-log)", template="plotly_white", height=480,
                      legend={"orientation": "h", "y": -0.2}, margin={"t": 50})
    return fig


def _tpr_at(p: ModelPoint, fpr: float | None) -> float:
    """The TPR the audit recorded at one of :data:`FPR_MARKS` (NaN: not measured)."""
    return {0.001: p.tpr_at_01pct, 0.01: p.tpr_at_1pct}.get(fpr, float("nan"))


def per_class_figure(points: Sequence[ModelPoint], class_names: Sequence[str]) -> go.Figure:
    """Per-class test accuracy, one bar group per class."""
    fig = go.Figure()
    runs = list(dict.fromkeys(p.run_id for p in points))
    for p in points:
        fig.add_trace(go.Bar(x=list(class_names)[:len(p.per_class_accuracy)], y=list(p.per_class_accuracy),
                             name=trace_name(p, runs), marker_color=look(p.series).color))
    fig.update_layout(title="Per-class test accuracy", barmode="group", template="plotly_white", height=380,
                      yaxis={"range": [0, 1], "title": "accuracy"}, xaxis_title="class", margin={"t": 50})
    return fig


def curves_figure(rows: dict[str, list[dict[str, Any]]], metric: str, title: str,
                  axis: str | None = None) -> go.Figure:
    """One line per training stage of ``metric`` against epoch (from ``report.epoch_rows``); ``axis``: the
    y axis title in words (default: the metric's name with spaces, never a key like ``val_accuracy``)."""
    fig = go.Figure()
    for stage, stage_rows in rows.items():
        xs = [r["epoch"] for r in stage_rows if metric in r]
        ys = [r[metric] for r in stage_rows if metric in r]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=stage))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=axis or metric.replace("_", " "),
                      template="plotly_white", height=300, margin={"t": 40, "b": 30})
    return fig


def to_png(fig: go.Figure, scale: float = 2.0) -> bytes:
    """PNG bytes via kaleido (needs a Chrome / Chromium it can find)."""
    return fig.to_image(format="png", scale=scale, width=1100, height=fig.layout.height or 520)


def to_html(fig: go.Figure) -> str:
    """A self-contained HTML page (plotly.js inlined: works offline, e.g. in slides)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)
