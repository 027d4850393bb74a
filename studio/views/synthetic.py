"""Synthetic set: the images an experiment's student actually trained on, round by round and class by
class, with the prompt that made each one, the teacher's label and confidence, and the memorisation
audit's copy flags; real member images of the same class beside. Data from
:mod:`pipeline.views.synthetic_set`; this page only draws."""

from __future__ import annotations

import streamlit as st
from PIL import Image

from pipeline.core.project import Project
from pipeline.core.runs import RunRecord
from pipeline.views import synthetic_set
from pipeline.views.synthetic_set import SyntheticFilter, SyntheticImage, SyntheticSetView
from studio import shared

MIN_SIDE = 128  # images are shown at least this large (tiny ones upscaled, nearest neighbour)
PER_ROW = 6


def introduce(project: Project) -> list[RunRecord]:
    """The browsable experiments, after the page's introduction; stops the page when there is none."""
    runs = synthetic_set.browsable_runs(project)
    if not runs:
        st.info("No finished experiment yet: start one on the **Runs** page; its synthetic training set appears "
                "here.")
        st.stop()
    st.markdown("The synthetic images below are the ones the student was trained on (not fresh samples). Each "
                "shows the prompt that generated it and what the run's **teacher** (trained on the real images) "
                "sees in it: ✓ when it recognises the intended class, ✗ when it sees another class. **copy** marks "
                "an image the memorisation audit found to be a near-duplicate of a real training image.")
    return runs


# 1. the run ---------------------------------------------------------------------------------------------------------
def open_run(project: Project, runs: list[RunRecord]) -> SyntheticSetView:
    """The run picked and its synthetic set's headline figures; stops the page when the set cannot be read."""
    run_id = st.selectbox("Experiment run", [r.id for r in runs], key="syn_run")
    record = next(r for r in runs if r.id == run_id)
    try:
        view = shared.synthetic_view(str(project.root), run_id, (record.run_dir / "teacher.pt").stat().st_mtime)
    except (OSError, ValueError, KeyError) as err:  # a run folder changed or lost files: shown, not raised
        st.error(f"Cannot read this run's synthetic set: {err}")
        st.stop()
    overall = synthetic_set.summary(view.images)
    cols = st.columns(4)
    cols[0].metric("Synthetic images", overall["images"], help=f"{len(view.rounds())} round(s)")
    cols[1].metric("Class fidelity", f"{overall['class_fidelity']:.1%}", help="share the teacher labels as intended")
    cols[2].metric("Mean teacher confidence", f"{overall['confidence']:.1%}")
    cols[3].metric("Flagged copies", overall["flagged"],
                   help=f"A flagged copy is {view.copy_rule}.")
    st.caption(f"**Flagged copy**: {view.copy_rule} (the count the CLI and the report give too).")
    return view


# 2. filters -----------------------------------------------------------------------------------------------------------
def filter_images(view: SyntheticSetView) -> tuple[list[SyntheticImage], int, int]:
    """The filter widgets -> (the images they let through, images shown per class, real images beside);
    stops the page when no image matches."""
    cols = st.columns([2, 3, 2, 2])
    rounds = cols[0].multiselect("Rounds", view.rounds(), key="syn_rounds", placeholder="all",
                                 format_func=lambda k: f"round {k}")
    classes = cols[1].multiselect("Classes", list(range(len(view.class_names))), key="syn_classes",
                                  placeholder="all", format_func=lambda c: view.class_names[c])
    only_wrong = cols[2].toggle("Only misclassified", key="syn_wrong", help="the teacher sees another class")
    only_flagged = cols[3].toggle("Only flagged copies", key="syn_flagged")
    cols = st.columns(2)
    per_class = cols[0].number_input("Synthetic images per class", 1, 200, 12, step=6, key="syn_per_class")
    n_real = cols[1].number_input("Real (member) images beside", 0, 12, 3, key="syn_real")
    shown = synthetic_set.filter_images(view.images, SyntheticFilter(tuple(rounds), tuple(classes), only_wrong,
                                                                     only_flagged))
    if not shown:
        st.info("No synthetic image matches these filters.")
        st.stop()
    return shown, per_class, n_real


# 3. class by class: real members, then the synthetic images ---------------------------------------------------------------
def synthetic_cell(image: SyntheticImage, class_names: list[str]) -> None:
    with Image.open(image.path) as file:
        st.image(shared.at_least(file.convert("RGB"), MIN_SIDE))
    verdict = "✓" if image.faithful else "✗"
    flag = " · **copy**" if image.copied else ""
    st.caption(f"{verdict} teacher: {class_names[image.teacher_label]} ({image.teacher_confidence:.0%}){flag} · "
               f"round {image.round} #{image.index}")
    st.caption(f"“{image.prompt}”")


def show_classes(view: SyntheticSetView, shown: list[SyntheticImage], per_class: int, n_real: int) -> None:
    dataset = shared.dataset(view.dataset)
    for label in sorted({im.label for im in shown}):
        in_class = [im for im in shown if im.label == label]
        figures = synthetic_set.summary(in_class)
        st.subheader(f"Class {view.class_names[label]}")
        st.caption(f"{figures['images']} synthetic image(s) here · teacher agrees on "
                   f"{figures['class_fidelity']:.0%} · {figures['flagged']} flagged"
                   + (f" · showing {per_class}" if len(in_class) > per_class else ""))
        members = view.members_by_class.get(label, [])[:int(n_real)]
        if members:
            cells = st.columns(PER_ROW)
            for cell, member in zip(cells, members):
                cell.image(shared.at_least(dataset.load_image(member), MIN_SIDE))
                cell.caption(f"real (member) {member}")
        picked = in_class[:int(per_class)]
        for start in range(0, len(picked), PER_ROW):
            for cell, image in zip(st.columns(PER_ROW), picked[start:start + PER_ROW]):
                with cell:
                    synthetic_cell(image, view.class_names)


# the page, top to bottom (Streamlit reruns it on every interaction) ---------------------------------------------------
st.title("Synthetic set")
project = shared.project()
runs = introduce(project)
view = open_run(project, runs)
shown, per_class, n_real = filter_images(view)
show_classes(view, shown, per_class, n_real)
