"""Trade-offs: test accuracy against membership-inference AUC for every audited model, with the Pareto
front and iso-AOP curves, attack ROC curves and per-class accuracy; export for slides, and a one-click
report for stakeholders (HTML that opens offline, and a PDF)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pipeline.core.project import Project
from pipeline.views import legend, report, stakeholder
from pipeline.views.report import ModelPoint
from studio import figures, shared


def audited_points(project: Project) -> list[ModelPoint]:
    """Every audited model (archived runs too when asked); stops the page when there is none."""
    archived = st.toggle("Archived runs too", key="to_archived", help="Runs archived on the Runs page are hidden.")
    points = report.collect_points(project, archived=archived)
    if not points:
        st.info("No audited models yet: finished experiment runs appear here. Start one on the **Runs** page.")
        st.stop()
    return points


# 1. filters -------------------------------------------------------------------------------------------------
def filter_points(points: list[ModelPoint]) -> list[ModelPoint]:
    """The dataset, generator and cardinality filters -> the models shown; stops the page when none matches."""
    cols = st.columns(3)
    datasets = cols[0].multiselect("Dataset", sorted({p.dataset for p in points}), key="to_datasets",
                                   placeholder="all")
    generators = cols[1].multiselect("Generator", sorted({p.generator for p in points}), key="to_generators",
                                     placeholder="all")
    cardinalities = cols[2].multiselect("Cardinality (synthetic images per member)",
                                        sorted({p.cardinality for p in points}), key="to_cards", placeholder="all",
                                        format_func=lambda c: f"×{c:g}",
                                        help="Synthetic images per real member in each round (×2: twice as many).")
    shown = report.filter_points(points, datasets, generators, cardinalities)
    if not shown:
        st.warning("No model matches these filters.")
        st.stop()
    return shown


# 2. the trade-off ---------------------------------------------------------------------------------------------
def show_tradeoff(shown: list[ModelPoint]) -> bool:
    """The trade-off plot and its table, with their exports; returns whether the plot is zoomed (the
    report draws it the same way)."""
    cols = st.columns(2)
    zoom = cols[0].toggle("Zoom to the data", value=True, key="to_zoom",
                          help="On: the axes fit the models and their AUC intervals. Off: both axes from 0 to 1.")
    labels = cols[1].toggle("ε labels", value=True, key="to_eps_labels",
                            help="Each point labelled with its formal ε (the DP guarantee, or none) and its empirical "
                                 "ε (emp.: an attack's lower bound).")
    fig = figures.tradeoff_figure(shown, zoom=zoom, epsilon_labels=labels)
    st.plotly_chart(fig, key="to_scatter")
    attacks = sorted({p.attack.upper() for p in shown})
    st.caption(f"Each run's teacher and its student on synthetic data are joined by a grey line; bars are the "
               f"AUC's 95% interval; an AUC of 0.5 is a coin flip. The AUC is the {' / '.join(attacks)} attack's, "
               "the dotted curves join models of equal AOP and the green step line is the Pareto front. Every term "
               "is explained under **What the terms mean** below.")
    glossary()
    st.table(pd.DataFrame(report.page_table(shown)), hide_index=True)
    export_buttons(fig, "tradeoff", "to_export")
    st.download_button("Table (CSV, every column)", pd.DataFrame(report.points_table(shown)).to_csv(index=False),
                       file_name="tradeoff.csv", mime="text/csv", key="to_csv")
    return zoom


def glossary() -> None:
    """Every term the page shows, in words (the report prints the same list)."""
    with st.expander("What the terms mean", icon=":material/menu_book:"):
        st.markdown("\n".join(f"- **{term}**: {text}" for term, text in legend.GLOSSARY))


def export_buttons(figure, stem: str, key: str) -> None:
    """HTML always; PNG through kaleido, which needs a Chrome / Chromium it can find."""
    cols = st.columns([1, 1, 4])
    cols[0].download_button("HTML", figures.to_html(figure), file_name=f"{stem}.html", mime="text/html",
                            key=f"{key}_html", icon=":material/download:")
    if cols[1].button("PNG", key=f"{key}_png", icon=":material/image:"):
        try:
            with st.spinner("Rendering PNG with kaleido..."):
                st.session_state[f"{key}_png_bytes"] = figures.to_png(figure)
        except Exception as err:  # kaleido raises several kinds when no browser is found: UI boundary
            st.session_state.pop(f"{key}_png_bytes", None)
            st.warning(f"No PNG: {stakeholder.CHROMIUM_HINT} Download the HTML instead: it opens in any browser "
                       f"and keeps the figure interactive. ({type(err).__name__}: {str(err)[:200]})")
    png = st.session_state.get(f"{key}_png_bytes")
    if png:
        cols[2].download_button("Download PNG", png, file_name=f"{stem}.png", mime="image/png", key=f"{key}_png_dl")


# 3. the stakeholder report --------------------------------------------------------------------------------------
def stakeholder_report(project: Project, shown: list[ModelPoint], zoom: bool) -> None:
    """Build the report of the runs shown on demand; offer it for download while its files exist."""
    st.subheader("Report for stakeholders")
    report_runs = list(dict.fromkeys(p.run_id for p in shown))
    st.caption(f"Runs {', '.join(report_runs)}: the plot, the table, the setup, conclusions drawn from the numbers "
               "and a few synthetic examples — never a real image. The HTML opens offline; the PDF needs "
               "Chrome/Chromium for the plot (without it, it has the table and the text).")
    if st.button("Build report", key="to_report", icon=":material/summarize:", type="primary"):
        try:
            with st.spinner("Building the report (the PDF's plot takes a few seconds)..."):
                st.session_state["to_report_built"] = stakeholder.build_report(
                    stakeholder.ReportConfig(run_ids=tuple(report_runs), zoom=zoom), project)
        except (ValueError, KeyError, OSError) as err:  # UI boundary: a run vanished, a file unreadable
            st.session_state.pop("to_report_built", None)
            st.error(f"The report could not be built: {err}")
    built = st.session_state.get("to_report_built")
    if built is not None and built.html.exists() and (built.pdf is None or built.pdf.exists()):  # not deleted since
        cols = st.columns([1, 1, 3])
        cols[0].download_button("Report (HTML)", built.html.read_bytes(), file_name="tradeoffs-report.html",
                                mime="text/html", key="to_report_html", icon=":material/download:")
        if built.pdf:
            cols[1].download_button("Report (PDF)", built.pdf.read_bytes(), file_name="tradeoffs-report.pdf",
                                    mime="application/pdf", key="to_report_pdf", icon=":material/picture_as_pdf:")
        cols[2].caption(f"Built for {', '.join(built.run_ids)}; saved in {built.html.parent}.")
        for note in built.notes:
            st.warning(note)


# 4. attack ROC curves --------------------------------------------------------------------------------------------
def show_roc(shown: list[ModelPoint]) -> None:
    st.subheader("Attack ROC curves")
    runs = list(dict.fromkeys(p.run_id for p in shown))
    names = {p.label: figures.trace_name(p, runs) for p in shown}
    picked = st.multiselect("Models", list(names), default=list(names)[:2], key="to_roc_models",
                            format_func=names.get)
    roc = figures.roc_figure([p for p in shown if p.label in picked])
    st.plotly_chart(roc, key="to_roc")
    export_buttons(roc, "roc", "to_roc_export")


# 5. per-class accuracy -------------------------------------------------------------------------------------------
def show_per_class(project: Project, shown: list[ModelPoint]) -> None:
    st.subheader("Per-class accuracy")
    runs = list(dict.fromkeys(p.run_id for p in shown))
    run_id = st.selectbox("Run", runs, key="to_class_run")
    pair = [p for p in shown if p.run_id == run_id]
    n_classes = max(len(p.per_class_accuracy) for p in pair)
    classes = report.run_class_names(project, project.registry().get(run_id), n_classes)
    st.plotly_chart(figures.per_class_figure(pair, classes), key="to_per_class")


# the page, top to bottom (Streamlit reruns it on every interaction) ---------------------------------------------
st.title("Trade-offs")
project = shared.project()
points = audited_points(project)
shown = filter_points(points)
zoom = show_tradeoff(shown)
stakeholder_report(project, shown, zoom)
show_roc(shown)
show_per_class(project, shown)
