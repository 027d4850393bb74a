"""Runs: configure and start a distillation run in the background, follow it live (progress, curves,
images/s, log), cancel it, and list every run of the project with its status."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pandas as pd
import streamlit as st

from pipeline.captions.captioners import CAPTIONERS
from pipeline.captions.prompts import TEMPLATES
from pipeline.core import jobs
from pipeline.data.datasets import SOURCES, DatasetConfig
from pipeline.experiment import ExperimentConfig
from pipeline.finetune import FinetuneConfig
from pipeline.presets import quickstart_config
from pipeline.privacy.shadows import VIEWS
from pipeline.views import report
from pipeline.views.compare import SAMPLING_FIELDS
from studio import figures, shared

ACTIVE = ("queued", "running")
REFRESH_S = 2.0
LOG_TAIL_BYTES = 12_000  # of a run's log shown: the stage messages of the last while, or a traceback
TRAIN_STEPS_FIELD = {"scratch": "train_steps", "sd-lora": "steps"}
PRESETS = {  # generator sizes offered for quick looks; "default" is the backend's own config
    "default": {},
    "tiny (smoke test)": {"block_out_channels": [8, 16], "norm_groups": 4, "batch_size": 16},
}
CLASSIFIERS = ("tiny-cnn", "small-cnn", "resnet18")  # any timm name can be typed too
SDLORA_BASE = "stabilityai/stable-diffusion-2-1-base"
PATH_OPTIONS = {"base", "lora_path"}  # generator options naming a model: a hub id or a local path

st.title("Runs")
shared.show_flash()
project = shared.project()
registry = project.registry()
jobs.reconcile(project)  # runs whose process died are marked failed before they are listed
defaults = quickstart_config()


# 1. start a run ------------------------------------------------------------------------------------------------
def dataset_widgets() -> DatasetConfig | None:
    known = report.known_datasets(project)
    choices = {shared.describe(c): c for c in known}
    choices.setdefault("digits (built-in)", DatasetConfig())
    other = "another dataset (path inside the project)..."
    cols = st.columns([3, 1, 1])
    label = cols[0].selectbox("Dataset", [*choices, other], key="run_dataset")
    limit = cols[1].number_input("Images per split (0: all)", min_value=0, value=0, step=50, key="run_limit")
    members = cols[2].number_input("Member fraction", min_value=0.05, max_value=1.0, value=0.5, step=0.05,
                                   key="run_members")
    if label == other:
        cols = st.columns([1, 3])
        source = cols[0].selectbox("Source", [s for s in SOURCES.names() if s != "digits"], key="run_source")
        path = shared.confined_path(project, cols[1].text_input("Path (inside the project)", key="run_path"))
        if path is None:
            return None
        base = DatasetConfig(source=source, path=str(path))
    else:
        base = choices[label]
    return replace(base, limit=int(limit) or None, member_fraction=float(members))


def generator_options(backend: str) -> tuple[tuple[str, Any], ...] | None:
    cols = st.columns(4)
    steps = cols[0].number_input("Generator training steps", min_value=1, value=800 if backend == "scratch" else 1000,
                                 key=f"run_gen_steps_{backend}")
    sampling = cols[1].number_input("Sampling steps", min_value=1, value=10 if backend == "scratch" else 20,
                                    key=f"run_sampling_{backend}")
    options: dict[str, Any] = {TRAIN_STEPS_FIELD[backend]: int(steps), SAMPLING_FIELDS[backend]["steps"]: int(sampling)}
    if backend == "scratch":
        options.update(PRESETS[cols[2].selectbox("Model size", list(PRESETS), key="run_preset")])
        # a few checkpoints to compare on the Generations page
        options.update(checkpoint_every=max(1, int(steps) // 4), keep_checkpoints=4)
    else:
        base = shared.model_ref(project, cols[2].text_input("Base model (hub id or folder in the project)",
                                                             SDLORA_BASE, key="run_base"))
        if base is None:
            return None
        options["base"] = base
    extra = cols[3].text_input("More options (JSON)", "{}", key=f"run_extra_{backend}",
                               help='backend config fields, e.g. {"guidance_scale": 3.0}')
    try:
        more = json.loads(extra or "{}")
    except ValueError as err:
        st.error(f"More options: not a JSON object ({err})")
        return None
    if not isinstance(more, dict):
        st.error('More options: not a JSON object (write {"field": value, ...})')
        return None
    for key in sorted(PATH_OPTIONS & more.keys()):  # model paths: inside the project, like every path field here
        if not isinstance(more[key], str) or not more[key].strip():
            continue  # the backend's config check names a wrong type or an empty name
        ref = shared.model_ref(project, more[key])
        if ref is None:
            return None
        more[key] = ref
    options.update(more)
    return tuple(options.items())


# the other transfer methods offered (label -> (name, options)); pipeline.methods has them all
METHOD_CHOICES = {"am": ("am", {}), "gkd+bss": ("gkd+bss", {}), "bss": ("bss", {}),
                  "dp-sgd ε=1": ("dp-sgd", {"epsilon": 1.0}), "dp-sgd ε=8": ("dp-sgd", {"epsilon": 8.0})}


def experiment_form() -> ExperimentConfig | None:
    """Widgets → an ExperimentConfig (the quickstart's, with the chosen fields replaced)."""
    dataset = dataset_widgets()
    st.markdown("**Captions**")
    cols = st.columns([1, 2, 2, 1, 1])
    captioner = cols[0].selectbox("Captioner", CAPTIONERS.names(), key="run_captioner",
                                  index=CAPTIONERS.names().index(defaults.captioner.name))
    class_template = cols[1].text_input("Class template (classname captioner)", defaults.captioner.class_template,
                                        key="run_class_template")
    store = cols[2].text_input("Caption store (blank: the dataset's name)", key="run_store")
    template = cols[3].selectbox("Prompt template", list(TEMPLATES), key="run_template",
                                 index=list(TEMPLATES).index(defaults.template))
    store_version = cols[4].number_input("Caption version", min_value=0, value=0, key="run_store_version",
                                         help="0: caption what is missing and use the newest version; "
                                              "N: use the curated version N of the store as it is")
    st.markdown("**Generator and synthetic set**")
    cols = st.columns(4)
    backend = cols[0].selectbox("Generator", list(TRAIN_STEPS_FIELD), key="run_backend")
    cardinality = cols[1].number_input("Cardinality (× members per round)", min_value=0.1, value=float(defaults.cardinality), step=0.5,
                                       key="run_cardinality")
    rounds = cols[2].number_input("Rounds", min_value=1, value=defaults.rounds, key="run_rounds")
    regen = cols[3].number_input("Regenerate every (student epochs)", min_value=1,
                                 value=defaults.distill.regen_every, key="run_regen")
    options = generator_options(backend)
    st.markdown("**Teacher, student and audit**")
    cols = st.columns(7)
    teacher_model = cols[0].selectbox("Teacher", CLASSIFIERS, key="run_teacher", accept_new_options=True)
    teacher_epochs = cols[1].number_input("Teacher epochs", min_value=1, value=defaults.teacher.epochs,
                                          key="run_teacher_epochs")
    student_model = cols[2].selectbox("Student", CLASSIFIERS, key="run_student", accept_new_options=True)
    student_epochs = cols[3].number_input("Student epochs", min_value=1, value=defaults.distill.student.epochs,
                                          key="run_student_epochs")
    shadows = cols[4].number_input("Transfer shadows", min_value=1, value=defaults.audit.n_shadows, step=2,
                                   key="run_shadows", help="shadow models on real data with the teacher's recipe")
    pipeline_shadows = cols[5].number_input(
        "Pipeline shadows", min_value=1, value=defaults.audit.pipeline_shadows, key="run_pipeline_shadows",
        help="each reruns generator, rounds, teacher and student on half the population: the honest audit "
             "of the student (RMIA needs only a few)")
    views = cols[6].multiselect("Query views", VIEWS, default=list(defaults.audit.views), key="run_views")
    cols = st.columns([3, 1])
    methods = cols[0].multiselect(
        "Other students on the same plane", list(METHOD_CHOICES), default=[],  # opt-in: each costs a training
        key="run_methods", help="am and gkd+bss are data-free; bss (real members) and dp-sgd are references "
                                "that read real training images")
    copy_gate = cols[1].number_input("Copy gate (redraws)", min_value=0, value=defaults.copy_gate, key="run_gate",
                                     help="redraw synthetic images flagged as near-copies of a member, up to N "
                                          "times, before the student sees them (0: off)")
    if dataset is None or options is None:
        return None
    if store_version and not store.strip():
        st.error("A caption version needs the caption store it belongs to.")
        return None
    try:
        FinetuneConfig(generator=backend, options=options).backend_config()  # unknown options fail here
        return replace(
            defaults, dataset=dataset, store=store.strip() or None, template=template,
            store_version=int(store_version) or None,
            captioner=replace(defaults.captioner, name=captioner, class_template=class_template),
            generator=backend, generator_options=options, cardinality=float(cardinality), rounds=int(rounds),
            teacher=replace(defaults.teacher, model=teacher_model, epochs=int(teacher_epochs)),
            distill=replace(defaults.distill, regen_every=int(regen),
                            student=replace(defaults.distill.student, model=student_model, epochs=int(student_epochs))),
            audit=replace(defaults.audit, n_shadows=int(shadows), pipeline_shadows=int(pipeline_shadows),
                          views=tuple(views)),
            methods=tuple(METHOD_CHOICES[m] for m in methods), copy_gate=int(copy_gate),
        )
    except (ValueError, TypeError) as err:
        st.error(f"Invalid settings: {err}")
        return None


runs = registry.list(kind="experiment")
with st.expander("Start a run", expanded=not runs, icon=":material/add:"):
    config = experiment_form()
    if st.button("Start run", type="primary", disabled=config is None, key="run_start"):
        run_id = jobs.start_experiment(project, config)
        st.session_state["runs_selected"] = run_id
        shared.flash("success", f"Started run {run_id} in the background; it keeps running if you close the page.")
        st.rerun()

# 2. the runs of the project ---------------------------------------------------------------------------------------
st.subheader("Runs")
kind = st.segmented_control("Kind", ["experiment", "all"], default="experiment", key="runs_kind")
listed = runs if kind == "experiment" else registry.list()
if not listed:
    st.info("No runs yet.")
    st.stop()
st.dataframe(pd.DataFrame([report.run_summary(r) for r in listed]), hide_index=True, width="stretch",
             column_config={"teacher acc": st.column_config.NumberColumn(format="%.4f"),
                            "student acc": st.column_config.NumberColumn(format="%.4f"),
                            "teacher AUC": st.column_config.NumberColumn(format="%.4f"),
                            "student AUC": st.column_config.NumberColumn(format="%.4f")})
ids = [r.id for r in listed]
if st.session_state.get("runs_selected") not in ids:
    st.session_state["runs_selected"] = ids[0]
selected = st.selectbox("Run", ids, key="runs_selected")


# 3. one run, live while it is active ---------------------------------------------------------------------------------
def cancel(run_id: str) -> None:
    jobs.cancel(project, run_id)
    shared.flash("warning", f"Asked run {run_id} to stop.")


def resume(run_id: str) -> None:
    try:
        jobs.resume_experiment(project, run_id)
    except ValueError as err:
        shared.flash("error", str(err))
        return
    shared.flash("success", f"Resuming run {run_id}: finished stages are reused.")


def run_panel(run_id: str, was_active: bool) -> None:
    record = registry.get(run_id)
    if was_active and record.status not in ACTIVE:
        st.rerun()  # it just finished: refresh the whole page (and stop refreshing)
    progress = record.progress or {}
    cols = st.columns([1, 1, 1, 1])
    cols[0].metric("Status", record.status)
    cols[1].metric("Stage", progress.get("stage", "-"))
    events = jobs.read_events(project, run_id) if record.kind == "experiment" else []
    rate = report.generation_rate(project, record, events)
    cols[2].metric("Generation", f"{rate:.1f} images/s" if rate else "-")
    if record.status in ACTIVE:
        cols[3].button("Cancel run", on_click=cancel, args=(run_id,), key="run_cancel", icon=":material/stop:")
    elif record.kind == "experiment" and record.status in ("failed", "cancelled"):
        cols[3].button("Resume run", on_click=resume, args=(run_id,), key="run_resume", icon=":material/replay:",
                       help="continue from the last finished stage (the generator and the classifiers "
                            "continue from their checkpoints)")
    done, total = progress.get("done"), progress.get("total")
    if record.status in ACTIVE and done is not None and total:
        st.progress(min(1.0, done / total), text=f"{progress.get('stage')}: {done}/{total}")
    if record.error:
        st.error(record.error)
    rows = report.epoch_rows(events)
    if rows:
        cols = st.columns(2)
        cols[0].plotly_chart(figures.curves_figure(rows, "loss", "Training loss"), key="run_loss")
        cols[1].plotly_chart(figures.curves_figure(rows, "val_accuracy", "Validation accuracy"), key="run_acc")
    metrics = record.metrics
    if "teacher_accuracy" in metrics:
        st.dataframe(pd.DataFrame([
            {"model": role, "test accuracy": metrics[f"{role}_accuracy"], "MIA AUC": metrics[f"{role}_auc"]}
            for role in ("teacher", "student")]), hide_index=True)
        st.page_link("views/tradeoffs.py", label="See it on the trade-off plot", icon=":material/scatter_plot:")
    if "class_fidelity" in metrics:
        st.markdown("**Synthetic data** (mean over rounds; the teacher is the feature extractor)")
        cols = st.columns(4)
        cols[0].metric("Class fidelity", f"{metrics['class_fidelity']:.3f}",
                       help="share of synthetic images the teacher assigns to their intended class")
        cols[1].metric("Fréchet distance", f"{metrics['frechet_distance']:.2f}",
                       help="between real member and synthetic features (lower is closer)")
        cols[2].metric("Precision / recall", f"{metrics['precision']:.2f} / {metrics['recall']:.2f}",
                       help="Naeem et al. 2020: realism / coverage of the real distribution")
        cols[3].metric("CAS", f"{metrics['cas']:.3f}" if metrics.get("cas") is not None else "-",
                       help="test accuracy of a classifier trained on round 0 with hard labels only")
    if metrics.get("timings"):
        st.caption("Seconds per stage: " + ", ".join(f"{k} {v:g}" for k, v in metrics["timings"].items()))
    # open while the run is live (the fragment refreshes it) and after a failure or cancel, to say why
    with st.expander("Log", expanded=record.status != "done", icon=":material/terminal:"):
        st.code(jobs.read_log(project, run_id, max_bytes=LOG_TAIL_BYTES) or "(empty)", language=None)
    with st.expander("Config"):
        st.json(record.config, expanded=False)


active = registry.get(selected).status in ACTIVE
st.fragment(run_every=REFRESH_S if active else None)(run_panel)(selected, active)
