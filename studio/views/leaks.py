"""Leak explorer: the real training images a membership-inference attack finds most easily, each beside
the synthetic training images nearest to it, the attack's score distributions (members vs non-members)
and how exposed each class is. Data from :mod:`pipeline.views.leaks`; this page only draws."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from pipeline.core.common import from_dict
from pipeline.core.project import Project
from pipeline.data.datasets import DatasetConfig
from pipeline.views import leaks, legend
from studio import shared

MIN_SIDE = 128  # images are shown at least this large (tiny ones upscaled, nearest neighbour)
FPRS = (0.001, 0.01, 0.05, 0.1)
MODES = {"transfer": "transfer (teacher's real-data shadows)", "pipeline": "pipeline (whole-pipeline shadows)"}


@st.cache_resource(show_spinner="Ranking the members...", max_entries=16)
def leak_report(root: str, config_json: str, stamp: float) -> leaks.LeakReport:
    config = leaks.LeakConfig(**json.loads(config_json))
    project = shared.project()  # the page's project (one cached object per server)
    record = project.registry().get(config.experiment)
    dataset = shared.dataset(from_dict(DatasetConfig, record.config["dataset"]))
    return leaks.explore_leaks(config, project, dataset, shared.synthetic_view(root, config.experiment, stamp))


def introduce(project: Project) -> list[leaks.AuditedExperiment]:
    """The audited experiments, after the page's introduction; stops the page when there is none."""
    audited = leaks.audited_experiments(project)
    if not audited:
        st.info("No audited experiment yet: every finished run on the **Runs** page is audited, then appears here.")
        st.stop()
    st.markdown(
        "A **membership-inference attack** guesses, for each real image, whether it was in the training set. "
        "It gives every image a *score*: the higher, the surer it is that the image was trained on. Below are the "
        "real training images (**members**) the attack is surest about — the ones most at risk — each beside the "
        "**synthetic** training images closest to it, with the prompt that generated them. A synthetic image that "
        "looks like the real one (and is flagged as a **copy**) shows *how* the image leaks: the generator "
        "reproduced it. If the synthetic images look different, the leak comes from the model itself, not from "
        "copied data.")
    return audited


# 1. widgets -------------------------------------------------------------------------------------------------------
def widgets(audited: list[leaks.AuditedExperiment]) -> tuple[leaks.AuditedExperiment, leaks.LeakConfig]:
    """The experiment, model, audit mode, attack and display widgets -> the audit and the explorer's config."""
    cols = st.columns([3, 2, 3, 2])
    exp_id = cols[0].selectbox("Audited experiment", [a.experiment.id for a in audited], key="leak_run")
    entry = next(a for a in audited if a.experiment.id == exp_id)
    models = list(entry.targets)
    model = cols[1].selectbox("Model", models, key="leak_model", format_func=legend.model_name,
                              index=models.index("student") if "student" in models else 0,
                              help="each model of the run in words, as on the Trade-offs page: the teacher trained "
                                   "on the real members, the student distilled on synthetic images only, and the "
                                   "run's other transfer methods")
    modes = list(entry.targets[model])
    if st.session_state.get("leak_mode") not in modes:  # the teacher has no pipeline mode
        st.session_state["leak_mode"] = modes[-1]
    mode = cols[2].selectbox("Audit mode", modes, key="leak_mode", format_func=lambda m: MODES.get(m, m),
                             help="which shadow models the attack compared against; pipeline mode mirrors the "
                                  "student's real training process (the honest audit)")
    _, _, scores = leaks.load_scores(entry.audit.run_dir, model, mode)
    headline = entry.targets[model][mode]
    attacks = sorted(scores, key=lambda a: a != headline)
    if st.session_state.get("leak_attack") not in attacks:
        st.session_state["leak_attack"] = headline
    attack = cols[3].selectbox("Attack", attacks, key="leak_attack",
                               format_func=lambda a: f"{a} (headline)" if a == headline else a)
    cols = st.columns(4)
    space = cols[0].selectbox("Nearness measured in", ["features", "pixels"], key="leak_space",
                              format_func=lambda s: {"features": "teacher features", "pixels": "pixels"}[s],
                              help="the memorisation audit's spaces: the teacher's penultimate features (what the "
                                   "classifier sees), or raw pixels (small images only)")
    top = cols[1].number_input("Members shown", 1, 50, 6, key="leak_top")
    per_member = cols[2].number_input("Synthetic images per member", 1, 8, 3, key="leak_per_member")
    fpr = cols[3].selectbox("Per-class TPR at FPR", FPRS, index=1, key="leak_fpr", format_func=lambda f: f"{f:.1%}")
    config = leaks.LeakConfig(experiment=exp_id, model=model, mode=mode, attack=attack, top=int(top),
                              per_member=int(per_member), space=space, fpr=float(fpr))
    return entry, config


# 2. one call ----------------------------------------------------------------------------------------------------------
def explore(project: Project, entry: leaks.AuditedExperiment, config: leaks.LeakConfig) -> leaks.LeakReport:
    """The explorer's report (cached per config and teacher); stops the page when the run cannot be read."""
    stamp = (entry.experiment.run_dir / "teacher.pt").stat().st_mtime
    try:
        return leak_report(str(project.root), json.dumps(asdict(config)), stamp)
    except (OSError, ValueError, KeyError) as err:  # a run folder changed or lost files: shown, not raised
        st.error(f"Cannot explore this audit: {err}")
        st.stop()


# 3. the most vulnerable members, each with its synthetic neighbours ----------------------------------------------------
def show_members(entry: leaks.AuditedExperiment, config: leaks.LeakConfig, report: leaks.LeakReport) -> None:
    dataset = shared.dataset(from_dict(DatasetConfig, entry.experiment.config["dataset"]))
    st.subheader("Most vulnerable real images")
    st.caption(f"Audit {report.audit_id} · {config.model}, {MODES.get(config.mode, config.mode)} · attack "
               f"{report.attack}. Left: the real member image and its score. Right: synthetic training images near "
               "it — *nearest*: the memorisation audit found this member to be the synthetic image's closest real "
               "training image; *closest*: no synthetic image has it as its closest member, so the synthetic images "
               "closest to it are shown instead. A **copy** is closer to the member than 99% of members are to one "
               "another.")
    for member in report.members:
        cells = st.columns([1] * (1 + config.per_member) + [1])
        with cells[0]:
            st.image(shared.at_least(dataset.load_image(member.id), MIN_SIDE))
            st.caption(f"#{member.rank} real (member) {member.id} · class {member.class_name} · "
                       f"score {member.score:.4g}")
        if not member.matches:
            cells[1].info("No synthetic neighbour: the images are too large for the pixel space; pick teacher "
                          "features.")
        for cell, match in zip(cells[1:], member.matches):
            with cell:
                with Image.open(match.image.path) as image:
                    st.image(shared.at_least(image.convert("RGB"), MIN_SIDE))
                how = "nearest" if match.nearest else "closest"
                flag = " · **copy**" if match.copy else ""
                st.caption(f"{how} · distance {match.distance:.3g}{flag} · round {match.image.round} · "
                           f"synthetic {match.image.class_name}: “{match.image.prompt}”")


# 4. score distributions ------------------------------------------------------------------------------------------------
def score_histogram(report: leaks.LeakReport) -> go.Figure:
    fig = go.Figure()
    for name, values, color in (("members", report.member_scores, "#d62728"),
                                ("non-members", report.nonmember_scores, "#1f77b4")):
        finite = values[np.isfinite(values)]
        fig.add_trace(go.Histogram(x=finite.tolist(), name=f"{name} ({len(finite)})", opacity=0.6, marker_color=color,
                                   nbinsx=40))
    fig.add_vline(x=report.threshold, line={"dash": "dot", "color": "#555"},
                  annotation_text=f"threshold at {report.config.fpr:.1%} FPR")
    fig.update_layout(barmode="overlay", template="plotly_white", height=360, margin={"t": 40},
                      title=f"{report.attack} scores: members vs non-members", xaxis_title="attack score",
                      yaxis_title="images", legend={"orientation": "h", "y": -0.2})
    return fig


def class_figure(report: leaks.LeakReport) -> go.Figure:
    names = [c.class_name for c in report.per_class]
    fig = go.Figure([
        go.Bar(x=names, y=[c.member_mean for c in report.per_class], name="mean score, members",
               marker_color="#d62728", offsetgroup="members"),
        go.Bar(x=names, y=[c.nonmember_mean for c in report.per_class], name="mean score, non-members",
               marker_color="#1f77b4", offsetgroup="non-members"),
        go.Bar(x=names, y=[c.tpr for c in report.per_class], name=f"members caught (TPR at {report.config.fpr:.1%} FPR)",
               marker_color="#ff7f0e", yaxis="y2", offsetgroup="tpr"),
    ])
    fig.update_layout(barmode="group", template="plotly_white", height=360, margin={"t": 40},
                      title="Vulnerability by class", xaxis_title="class", yaxis_title="mean attack score",
                      yaxis2={"title": "TPR", "overlaying": "y", "side": "right", "range": [0, 1], "tickmode": "linear",
                              "dtick": 0.25, "tickformat": ".0%", "showgrid": False},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def show_charts(report: leaks.LeakReport) -> None:
    cols = st.columns(2)
    with cols[0]:
        st.plotly_chart(score_histogram(report), key="leak_hist")
        st.caption("If the two histograms overlap, the attack cannot tell training images from unseen ones: the "
                   "model leaks little. Red bars far to the right of the blue ones are members the attack "
                   "recognises.")
    with cols[1]:
        st.plotly_chart(class_figure(report), key="leak_classes")
        st.caption("Per class: the mean score of members and non-members, and the share of the class's members the "
                   f"attack flags when it may wrongly flag {report.config.fpr:.1%} of non-members. A class whose "
                   "members score well above its non-members leaks more.")


# the page, top to bottom (Streamlit reruns it on every interaction): widgets -> config -> one call -> render --------
st.title("Leak explorer")
project = shared.project()
audited = introduce(project)
entry, config = widgets(audited)
report = explore(project, entry, config)
show_members(entry, config, report)
show_charts(report)
