"""Plotly figures of the studio: the accuracy / privacy trade-off, attack ROC curves, per-class
accuracy and training curves. Data and maths come from :mod:`pipeline.views.report`; this only draws."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from pipeline.views.report import ModelPoint, aop_iso_curve, front_line, run_pairs

AOP_LEVELS = (0.25, 0.5, 0.75, 1.0)
ROLE_STYLE = {"teacher": {"symbol": "circle", "color": "#1f77b4"}, "student": {"symbol": "diamond", "color": "#d62728"}}
# other transfer methods, by the family of their label: data-free students, real-data references, DP
METHOD_STYLE = {"am": {"symbol": "square", "color": "#ff7f0e"}, "gkd+bss": {"symbol": "star", "color": "#9467bd"},
                "bss": {"symbol": "triangle-up", "color": "#7f7f7f"}, "dp-sgd": {"symbol": "x", "color": "#17becf"}}


def role_style(role: str) -> dict[str, str]:
    """Marker of a role: teacher, student, or a method label such as ``dp-sgd ε=8`` (by its name)."""
    if role in ROLE_STYLE:
        return ROLE_STYLE[role]
    name = role.split(" ")[0]
    return METHOD_STYLE.get(name, {"symbol": "hexagon", "color": "#8c564b"})
FPR_MARK = 0.001  # TPR at 0.1% FPR is marked on the ROC curves


def _hover(p: ModelPoint) -> str:
    ci = f" [{p.auc_ci95[0]:.3f}, {p.auc_ci95[1]:.3f}]" if p.auc_ci95 else ""
    return (f"<b>{p.run_id}</b> {p.role}<br>accuracy {p.accuracy:.4f}<br>MIA AUC {p.auc:.4f}{ci}"
            f"<br>audit {p.audit}<br>TPR@0.1%FPR {p.tpr_at_01pct:.4f}<br>AOP {p.aop:.4f}<br>{p.dataset} · {p.generator}"
            f" · ×{p.cardinality:g}")


def tradeoff_figure(points: Sequence[ModelPoint], aop_levels: Sequence[float] = AOP_LEVELS) -> go.Figure:
    """Test accuracy against MIA AUC: teacher → student of a run linked, iso-AOP curves, Pareto front."""
    fig = go.Figure()
    aucs = [p.auc for p in points] or [0.5]
    lo, hi = min(0.45, min(aucs) - 0.02), max(0.75, max(aucs) + 0.02)
    grid = np.linspace(lo, hi, 120)
    # 1. iso-AOP curves: accuracy = AOP (2 AUC)^2
    for level in aop_levels:
        fig.add_trace(go.Scatter(x=grid, y=aop_iso_curve(level, grid), mode="lines", hoverinfo="skip",
                                 line={"dash": "dot", "width": 1, "color": "#999"}, name="iso-AOP curves",
                                 legendgroup="aop", showlegend=level == aop_levels[0]))
        inside = np.nonzero(~np.isnan(aop_iso_curve(level, grid)))[0]
        if inside.size:
            k = inside[-1]
            fig.add_annotation(x=grid[k], y=aop_iso_curve(level, grid)[k], text=f"AOP {level:g}",
                               showarrow=False, font={"size": 10, "color": "#777"}, xanchor="right", yanchor="bottom")
    # 2. teacher → student of the same run
    for teacher, student in run_pairs(points):
        fig.add_trace(go.Scatter(x=[teacher.auc, student.auc], y=[teacher.accuracy, student.accuracy],
                                 mode="lines", line={"color": "#bbb", "width": 1.5}, hoverinfo="skip",
                                 showlegend=False))
    # 3. the models
    for role in dict.fromkeys(p.role for p in points):  # each role once, in order of appearance
        style = role_style(role)
        chosen = [p for p in points if p.role == role]
        if chosen:
            fig.add_trace(go.Scatter(
                x=[p.auc for p in chosen], y=[p.accuracy for p in chosen], mode="markers", name=role,
                marker={"size": 11, "symbol": style["symbol"], "color": style["color"], "line": {"width": 1}},
                text=[_hover(p) for p in chosen], hovertemplate="%{text}<extra></extra>",
                # the AUC's bootstrap 95% interval as a horizontal bar
                error_x={"type": "data", "symmetric": False, "thickness": 1, "width": 3, "color": style["color"],
                         "array": [p.auc_ci95[1] - p.auc if p.auc_ci95 else 0 for p in chosen],
                         "arrayminus": [p.auc - p.auc_ci95[0] if p.auc_ci95 else 0 for p in chosen]},
                customdata=[p.run_id for p in chosen]))
    # 4. the Pareto front (higher accuracy, lower AUC)
    front = front_line(points)
    if front:
        fig.add_trace(go.Scatter(x=[p.auc for p in front], y=[p.accuracy for p in front], mode="lines+markers",
                                 name="Pareto front", line={"color": "#2ca02c", "width": 2, "shape": "hv"},
                                 marker={"symbol": "circle-open", "size": 18, "color": "#2ca02c", "line": {"width": 2}},
                                 hoverinfo="skip"))
    fig.update_layout(title="Accuracy vs membership-inference AUC", xaxis_title="MIA AUC (headline attack, 95% CI) — lower is more private",
                      yaxis_title="test accuracy", template="plotly_white", height=520,
                      legend={"orientation": "h", "y": -0.18}, margin={"t": 50, "b": 40})
    fig.update_xaxes(range=[lo, hi])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def roc_figure(points: Sequence[ModelPoint], mark_fpr: float = FPR_MARK) -> go.Figure:
    """Log-log ROC curves of the attack, with TPR at ``mark_fpr`` marked (LiRA's way to read them)."""
    fig = go.Figure()
    floor = 1e-5  # log axes cannot show 0
    fig.add_trace(go.Scatter(x=[floor, 1], y=[floor, 1], mode="lines", name="chance",
                             line={"dash": "dash", "color": "#999"}, hoverinfo="skip"))
    for p in points:
        if not p.roc_fpr:
            continue
        fpr = np.maximum(np.asarray(p.roc_fpr), floor)
        tpr = np.maximum(np.asarray(p.roc_tpr), floor)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{p.label} (AUC {p.auc:.3f})",
                                 line={"shape": "hv"}))
        fig.add_trace(go.Scatter(x=[mark_fpr], y=[max(p.tpr_at_01pct, floor)], mode="markers", showlegend=False,
                                 marker={"size": 10, "symbol": "x"},
                                 hovertemplate=f"{p.label}<br>TPR@{mark_fpr:.1%} FPR = {p.tpr_at_01pct:.4f}<extra></extra>"))
    fig.add_vline(x=mark_fpr, line={"dash": "dot", "color": "#777"}, annotation_text=f"FPR {mark_fpr:.1%}")
    fig.update_xaxes(type="log", title="false-positive rate", range=[np.log10(floor), 0])
    fig.update_yaxes(type="log", title="true-positive rate", range=[np.log10(floor), 0])
    fig.update_layout(title="Attack ROC (log-log)", template="plotly_white", height=480,
                      legend={"orientation": "h", "y": -0.2}, margin={"t": 50})
    return fig


def per_class_figure(points: Sequence[ModelPoint], class_names: Sequence[str]) -> go.Figure:
    """Per-class test accuracy, one bar group per class."""
    fig = go.Figure()
    for p in points:
        fig.add_trace(go.Bar(x=list(class_names)[:len(p.per_class_accuracy)], y=list(p.per_class_accuracy),
                             name=p.label, marker_color=role_style(p.role)["color"]))
    fig.update_layout(title="Per-class test accuracy", barmode="group", template="plotly_white", height=380,
                      yaxis={"range": [0, 1], "title": "accuracy"}, xaxis_title="class", margin={"t": 50})
    return fig


def curves_figure(rows: dict[str, list[dict[str, Any]]], metric: str, title: str) -> go.Figure:
    """One line per training stage of ``metric`` against epoch (from ``report.epoch_rows``)."""
    fig = go.Figure()
    for stage, stage_rows in rows.items():
        xs = [r["epoch"] for r in stage_rows if metric in r]
        ys = [r[metric] for r in stage_rows if metric in r]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=stage))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=metric, template="plotly_white",
                      height=300, margin={"t": 40, "b": 30})
    return fig


def to_png(fig: go.Figure, scale: float = 2.0) -> bytes:
    """PNG bytes via kaleido (needs a Chrome / Chromium it can find)."""
    return fig.to_image(format="png", scale=scale, width=1100, height=fig.layout.height or 520)


def to_html(fig: go.Figure) -> str:
    """A self-contained HTML page (plotly.js inlined: works offline, e.g. in slides)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)
