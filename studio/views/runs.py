"""Runs: configure and start a distillation run in the background (from the defaults, a preset chosen
from the data, or a clone of an earlier run), follow it live (progress, curves, images/s, log), cancel
or resume it, list every run of the project with its live status, compare two runs, archive or delete
one."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from pipeline.captions.captioners import CAPTIONERS
from pipeline.captions.templates import TEMPLATES
from pipeline.classifiers.models import classifier_names
from pipeline.core import jobs
from pipeline.core.common import from_dict, to_jsonable
from pipeline.core.project import Project
from pipeline.core.runs import RunRecord
from pipeline.data import catalog
from pipeline.data.datasets import SOURCES, DatasetConfig
from pipeline.experiment import ExperimentConfig
from pipeline.finetune import FinetuneConfig
from pipeline.generators import generator_class, generator_names
from pipeline.presets import (
    PRESETS,
    DataProfile,
    dominant,
    duration_text,
    estimate_stages,
    estimated_wall,
    preset_config,
    quickstart_config,
)
from pipeline.privacy.shadows import VIEWS
from pipeline.views import report
from pipeline.views import runs as runs_view
from studio import figures, shared

ACTIVE = ("queued", "running")
REFRESH_S = 2.0
LOG_TAIL_BYTES = 12_000  # of a run's log shown: the stage messages of the last while, or a traceback
BACKENDS = generator_names()  # every registered generator backend; each describes its own form fields
CLASSIFIERS = classifier_names()  # the registered classifiers; any timm name can be typed too
FORM_BASE = "run_form_base"  # session state: the config the form starts from (fields it does not show)
FORM_ORIGIN = "run_form_origin"  # session state: (what that config is, the preset's reasons)
# the other transfer methods offered (label -> (name, options)); pipeline.methods has them all
METHOD_CHOICES = {"am": ("am", {}), "gkd+bss": ("gkd+bss", {}), "bss": ("bss", {}),
                  "dp-sgd ε=1": ("dp-sgd", {"epsilon": 1.0}), "dp-sgd ε=8": ("dp-sgd", {"epsilon": 8.0})}


@dataclass(frozen=True)
class Form:
    """What the "Start a run" form starts from: the config it edits (``base``: the fields it does not
    show keep their values) and each widget's starting value, by key."""

    project: Project
    base: ExperimentConfig
    initial: dict[str, Any]

    def start_index(self, options: list[str], key: str) -> int:
        return options.index(self.initial[key]) if self.initial.get(key) in options else 0


# 1. start a run: the form's widgets hold the fields of ``base`` that they show ---------------------------------
def start_run_form(project: Project) -> None:
    """The "Start a run" expander (open at first while the project has no experiment) and its Start button."""
    experiments = runs_view.list_runs(project, kind="experiment")  # reconciled: dead runs are failed first
    follow_dataset(project)
    form = open_form(project)
    st.session_state.setdefault("run_form_open", not experiments)
    with st.expander("Start a run", key="run_form_open", on_change="rerun", icon=":material/add:"):
        config = experiment_form(form)
        if config is not None:
            estimate_panel(config)
        if st.button("Start run", type="primary", disabled=config is None, key="run_start"):
            run_id = jobs.start_experiment(project, config)
            st.session_state["runs_selected"] = run_id
            shared.flash("success", f"Started run {run_id} in the background; it keeps running if you close the page.")
            st.rerun()


PRESET_FOR = "run_preset_for"  # session state: the (dataset label, preset) the form was last filled for


def follow_dataset(project: Project) -> None:
    """The form holds the preset of the dataset it shows, with the preset picked for it: picking another
    dataset or preset fills the form again. The config the form starts from (the quickstart's for the
    built-in data, a clone's) stays until then. Runs before the form's widgets, like their callbacks."""
    base: ExperimentConfig = st.session_state.get(FORM_BASE) or replace(quickstart_config(), methods=())
    choices = dataset_choices(project, base)
    label = st.session_state.get("run_dataset") or next(iter(choices))
    preset = st.session_state.get("run_data_preset", "standard")
    if PRESET_FOR not in st.session_state and dataset_label(choices, base.dataset) == label:
        st.session_state[PRESET_FOR] = (label, preset)  # the starting config is already this dataset's
    if label not in choices or st.session_state.get(PRESET_FOR) == (label, preset):
        return
    limit = st.session_state.get("run_limit")
    dataset = replace(choices[label], limit=int(limit) if limit else None,
                      member_fraction=float(st.session_state.get("run_members", DatasetConfig.member_fraction)))
    apply_preset(project, dataset, preset)
    st.session_state[PRESET_FOR] = (label, preset)  # a dataset whose preset failed is not retried on every rerun


def estimate_panel(config: ExperimentConfig) -> None:
    """The plan's time per stage, as `run` prints it before it starts (a few steps timed on this machine)."""
    try:
        with st.spinner("Timing a few training steps on this machine for the estimate..."):
            rows, total, longest = plan_estimate(json.dumps(to_jsonable(config), sort_keys=True))
    except Exception as err:  # the UI boundary: an estimate that cannot be made does not block the run
        st.caption(f"No time estimate: {type(err).__name__}: {err}")
        return
    st.markdown(f"**Estimated time: {duration_text(total)}** on this machine; the longest stage: {longest}.")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"what": st.column_config.TextColumn("what it does", width="large")})


@st.cache_data(show_spinner=False, max_entries=32)
def plan_estimate(config_json: str) -> tuple[list[dict[str, str]], float | None, str]:
    config = from_dict(ExperimentConfig, json.loads(config_json))
    profile = DataProfile.of(shared.dataset(config.dataset), device=config.teacher.device)
    stages = estimate_stages(config, profile)
    rows = [{"stage": s.stage, "time": duration_text(s.seconds), "what": s.what} for s in stages]
    return rows, estimated_wall(stages), dominant(stages)


def open_form(project: Project) -> Form:
    """The config the form starts from (the defaults, a preset or a clone) and its widgets' starting values."""
    base: ExperimentConfig = st.session_state.get(FORM_BASE) or replace(quickstart_config(), methods=())
    # Each widget's starting value comes from ``base`` through its value/index/default argument; callbacks that
    # fill the form (clone, preset, reset) write the widget keys instead, which win. Seeding the keys in the script
    # itself (setdefault) left the first paint empty at times: an interrupted first run sent the template box
    # without its value (seen in the browser walk). Streamlit's log warning about a value set both ways is off in
    # .streamlit/config.toml and the studio command for this reason.
    initial = form_state(base, dataset_choices(project, base))
    if FORM_ORIGIN not in st.session_state:
        del initial["run_dataset"]  # not cloned: the newest dataset of the project comes first
    return Form(project, base, initial)


def dataset_choices(project: Project, config: ExperimentConfig) -> dict[str, DatasetConfig]:
    """Datasets registered with the project by name, those of its runs, the built-in digits, and ``config``'s
    own dataset: one entry per dataset (the limit and the member fraction have their own widgets)."""
    choices: dict[str, DatasetConfig] = dict(catalog.registered(project.root))
    for known in [*report.known_datasets(project), DatasetConfig()]:
        known = replace(known, limit=None, member_fraction=DatasetConfig.member_fraction)
        if known in choices.values():
            continue
        label = f"{known.name} (built-in)" if known == DatasetConfig() else known.name
        choices[label if label not in choices else f"{label} ({len(choices) + 1})"] = known
    if dataset_label(choices, config.dataset) is None:  # same name as a known one, other settings
        choices[f"{shared.describe(config.dataset)} (as cloned)"] = config.dataset
    return choices


def dataset_label(choices: dict[str, DatasetConfig], dataset: DatasetConfig) -> str | None:
    return next((label for label, c in choices.items()  # limit and member fraction have their own widgets
                 if replace(c, limit=dataset.limit, member_fraction=dataset.member_fraction) == dataset), None)


def method_label(method: tuple[str, dict[str, Any]]) -> str:
    known = {json.dumps(to_jsonable(v), sort_keys=True): k for k, v in METHOD_CHOICES.items()}
    name, options = method
    return known.get(json.dumps(to_jsonable(method), sort_keys=True)) or \
        (f"{name} {json.dumps(options, sort_keys=True)}" if options else name)


def generator_state(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """Widget values of one backend's options: training and sampling steps, a model size or base model, the
    rest as JSON (the backend says which fields these are)."""
    cls, options = generator_class(backend), to_jsonable(options)
    defaults = to_jsonable(FinetuneConfig(generator=backend).backend_config())
    steps_field, sampling_field = cls.field_of("steps"), cls.sampling_fields["steps"]
    steps = int(options.pop(steps_field, defaults[steps_field]))
    state: dict[str, Any] = {f"run_gen_steps_{backend}": steps,
                             f"run_sampling_{backend}": int(options.pop(sampling_field, defaults[sampling_field]))}
    sizes = cls.form_sizes
    size = next((k for k, v in reversed(sizes.items()) if all(options.get(o) == x for o, x in v.items())))
    state[f"run_size_{backend}"] = size
    for key, value in [*sizes[size].items(), *cls.comparison_options(steps).items()]:
        if options.get(key) == value:  # the form adds these itself
            options.pop(key)
    if cls.base_field:
        state[f"run_base_{backend}"] = options.pop(cls.base_field, defaults[cls.base_field])
    return {**state, f"run_extra_{backend}": json.dumps(options) if options else "{}"}


def form_state(config: ExperimentConfig, choices: dict[str, DatasetConfig]) -> dict[str, Any]:
    """The form's widget values (by key) that rebuild ``config``."""
    state = {
        "run_dataset": dataset_label(choices, config.dataset), "run_limit": config.dataset.limit or 0,
        "run_members": float(config.dataset.member_fraction), "run_captioner": config.captioner.name,
        "run_class_template": config.captioner.class_template, "run_store": config.store or "",
        "run_template": config.template, "run_store_version": config.store_version or 0,
        "run_backend": config.generator, "run_cardinality": float(config.cardinality), "run_rounds": config.rounds,
        "run_regen": config.distill.regen_every, "run_teacher": config.teacher.model,
        "run_teacher_epochs": config.teacher.epochs, "run_student": config.distill.student.model,
        "run_student_epochs": config.distill.student.epochs, "run_shadows": config.audit.n_shadows,
        "run_floor": config.teacher.min_steps,
        "run_pipeline_shadows": config.audit.pipeline_shadows, "run_views": list(config.audit.views),
        "run_methods": [method_label(m) for m in config.methods], "run_gate": config.copy_gate,
        "run_dp_epsilon": float(config.epsilon or 0.0) if config.privacy == "dp" else 0.0,
    }
    for backend in BACKENDS:  # the other backends' widgets start at their defaults
        state.update(generator_state(backend, dict(config.generator_options) if backend == config.generator else {}))
    return state


def fill_form(project: Project, config: ExperimentConfig, origin: str, why: list[str], preset: str | None = None) -> None:
    """Make ``config`` the form's starting point and set every widget from it (a callback: before widgets);
    ``preset``: the preset it was filled from (None: a clone, kept until another dataset or preset is picked)."""
    if config.generator not in BACKENDS:
        raise ValueError(f"the form has no {config.generator!r} generator; valid: {', '.join(BACKENDS)}")
    state = form_state(config, dataset_choices(project, config))
    st.session_state.update({FORM_BASE: config, FORM_ORIGIN: (origin, why), "run_form_open": True, **state,
                             PRESET_FOR: (state["run_dataset"], preset or st.session_state.get("run_data_preset",
                                                                                              "standard"))})


def reset_form() -> None:
    for key in [k for k in st.session_state if k.startswith("run_") and k != "run_form_open"]:
        del st.session_state[key]


def clone(project: Project, run_id: str) -> None:
    try:
        fill_form(project, from_dict(ExperimentConfig, project.registry().get(run_id).config),
                  f"a clone of run {run_id}", [])
    except (KeyError, ValueError) as err:
        shared.flash("error", f"Cannot clone run {run_id}: {err}")
        return
    shared.flash("success", f"Cloned run {run_id} into the form: change what you like and start it.")


def apply_preset(project: Project, dataset: DatasetConfig, preset: str) -> None:
    try:
        config, why = preset_config(dataset, DataProfile.of(shared.dataset(dataset)), preset)
        fill_form(project, config, f"the {preset} preset for {shared.describe(dataset)}", why, preset)
    except Exception as err:  # the UI boundary: a dataset that fails to load or profile is said, not raised
        shared.flash("error", f"Preset {preset}: {type(err).__name__}: {err}")


OTHER_DATASET = "another dataset (a folder or file of yours)..."


def dataset_widgets(form: Form, choices: dict[str, DatasetConfig]) -> DatasetConfig | None:
    other = OTHER_DATASET
    cols = st.columns([3, 1, 1])
    label = cols[0].selectbox("Dataset", [*choices, other], key="run_dataset",
                              index=form.start_index([*choices], "run_dataset"))
    limit = cols[1].number_input("Images per split (0: all)", min_value=0, step=50, key="run_limit",
                                 value=form.initial["run_limit"])
    members = cols[2].number_input("Member fraction", min_value=0.05, max_value=1.0, step=0.05, key="run_members",
                                   value=form.initial["run_members"])
    if label == other:
        chosen = other_dataset(form.project)
        if chosen is None:
            return None
    else:
        chosen = choices[label]
    return replace(chosen, limit=int(limit) or None, member_fraction=float(members))


def other_dataset(project: Project) -> DatasetConfig | None:
    """A dataset typed by path: one inside the project is used as is; one elsewhere is registered with the
    project by name first, after a confirmation naming the folder (the studio never opens a typed path
    outside the project otherwise), and is picked from the list afterwards."""
    cols = st.columns([1, 3, 1.5])
    sources = sorted((s for s in SOURCES.names() if s != "digits"), key=lambda s: (s != "imagefolder", s))
    source = cols[0].selectbox("Source", sources, key="run_source",
                               help="imagefolder: a folder with one sub-folder of images per class (or train/ and "
                                    "test/ of those); parquet: Hugging Face style parquet files; hf: a Hub id or a "
                                    "save_to_disk folder")
    text = cols[1].text_input("Folder or file", key="run_path", placeholder="/data/chest-xray or parquet folder")
    if not text.strip():
        return None
    try:
        return DatasetConfig(source=source, path=str(project.confine(text.strip())))
    except ValueError:
        pass  # outside the project: register it
    outside = Path(text.strip()).expanduser()
    outside = outside if outside.is_absolute() else (project.root / outside)
    name = cols[2].text_input("Register as", key="run_register_name",
                              value=catalog.suggested_name(project.root, outside.resolve().name))
    st.info(f"`{outside.resolve()}` is outside the project folder. Register it once under a name: runs and the "
            "studio of this project will then read images from that folder (nothing there is changed), and it is "
            "picked by name from the list above — or from the CLI with `--dataset NAME`.")
    sure = st.checkbox(f"Read images from {outside.resolve()} in this project", key="run_register_sure")
    st.button(f"Register {name.strip() or '...'}", key="run_register", disabled=not (sure and name.strip()),
              on_click=register_dataset, args=(project, name.strip(), DatasetConfig(source=source, path=str(outside))),
              icon=":material/library_add:")
    return None


def register_dataset(project: Project, name: str, config: DatasetConfig) -> None:
    """Check that the data loads, register it and pick it in the form (a callback: before the widgets)."""
    try:
        catalog.check_name(name)
        if name in catalog.registered(project.root):
            raise ValueError(f"a dataset called {name!r} is already registered")
        config = catalog.resolved(config)
        loaded = shared.dataset(config)
        catalog.register(project.root, name, config)
    except Exception as err:  # the UI boundary: a folder that does not load is said, not raised
        shared.flash("error", f"Not registered: {type(err).__name__}: {err}")
        return
    for key in ("run_path", "run_register_name", "run_register_sure"):
        st.session_state.pop(key, None)
    st.session_state["run_dataset"] = name
    shared.flash("success", f"Registered {name!r}: {len(loaded):,} images in {len(loaded.class_names)} classes from "
                            f"{config.path}. The form now holds the preset for it.")


def preset_widgets(project: Project, dataset: DatasetConfig | None) -> None:
    cols = st.columns([1, 1, 3], vertical_alignment="bottom")
    preset = cols[0].selectbox("Preset from the data", PRESETS, index=PRESETS.index("standard"),
                               key="run_data_preset")
    cols[1].button("Refill the form from the preset", key="run_apply_preset", on_click=apply_preset,
                   args=(project, dataset, preset), disabled=dataset is None, icon=":material/auto_fix_high:")
    cols[2].caption("Picking a dataset or a preset fills the form with the models, training lengths and audit "
                    "chosen from the data's image size, colour and size and the device, as `python -m pipeline run "
                    "--dataset ... --preset` does (paper: needs a GPU); refill it after editing to start over.")


def origin_note() -> None:
    origin, why = st.session_state.get(FORM_ORIGIN, (None, []))
    if origin:
        cols = st.columns([5, 1])
        cols[0].info(f"Starting from {origin}; settings the form does not show keep its values."
                     + "".join(f"\n- {line}" for line in why))
        cols[1].button("Reset the form", key="run_form_reset", on_click=reset_form, icon=":material/restart_alt:")


def generator_options(form: Form, backend: str) -> dict[str, Any] | None:
    """The chosen backend's widgets (its training and sampling steps, model sizes or base model, more
    options as JSON) -> its options; None when one is invalid (said on the page)."""
    cls, cols, initial = generator_class(backend), st.columns(4), form.initial
    steps = cols[0].number_input("Generator training steps", min_value=1, key=f"run_gen_steps_{backend}",
                                 value=initial[f"run_gen_steps_{backend}"])
    sampling = cols[1].number_input("Sampling steps", min_value=1, key=f"run_sampling_{backend}",
                                    value=initial[f"run_sampling_{backend}"])
    options: dict[str, Any] = {cls.field_of("steps"): int(steps), cls.sampling_fields["steps"]: int(sampling)}
    if cls.base_field:
        base_model = shared.model_ref(form.project, cols[2].text_input(
            "Base model (hub id or folder in the project)", key=f"run_base_{backend}", value=initial[f"run_base_{backend}"]))
        if base_model is None:
            return None
        options[cls.base_field] = base_model
    elif len(cls.form_sizes) > 1:
        sizes = list(cls.form_sizes)
        options.update(cls.form_sizes[cols[2].selectbox("Model size", sizes, key=f"run_size_{backend}",
                                                        index=form.start_index(sizes, f"run_size_{backend}"))])
    options.update(cls.comparison_options(int(steps)))
    more = more_options(form, cols[3], backend, cls.path_fields)
    return None if more is None else {**options, **more}


def more_options(form: Form, col: Any, backend: str, path_fields: frozenset[str]) -> dict[str, Any] | None:
    """The "More options (JSON)" box: a JSON object of backend fields; fields naming a model or a file must
    lie inside the project. None (and an error on the page) when it is not valid."""
    extra = col.text_input("More options (JSON)", key=f"run_extra_{backend}",
                           value=form.initial[f"run_extra_{backend}"],
                           help='backend config fields, e.g. {"guidance_scale": 3.0}')
    try:
        more = json.loads(extra or "{}")
    except ValueError as err:
        st.error(f"More options: not a JSON object ({err})")
        return None
    if not isinstance(more, dict):
        st.error('More options: not a JSON object (write {"field": value, ...})')
        return None
    for key in sorted(path_fields & more.keys()):  # model paths: inside the project, like every path field here
        if not isinstance(more[key], str) or not more[key].strip():
            continue  # the backend's config check names a wrong type or an empty name
        ref = shared.model_ref(form.project, more[key])
        if ref is None:
            return None
        more[key] = ref
    return more


def caption_widgets(form: Form) -> dict[str, Any]:
    st.markdown("**Captions**")
    cols = st.columns([1, 2, 2, 1, 1])
    templates = list(dict.fromkeys([*TEMPLATES, form.base.template]))
    initial, start_index = form.initial, form.start_index
    return {
        "captioner": cols[0].selectbox("Captioner", CAPTIONERS.names(), key="run_captioner",
                                       index=start_index(CAPTIONERS.names(), "run_captioner")),
        "class_template": cols[1].text_input("Class template (classname captioner)", key="run_class_template",
                                             value=initial["run_class_template"]),
        "store": cols[2].text_input("Caption store (blank: the dataset's name)", key="run_store",
                                    value=initial["run_store"]),
        "template": cols[3].selectbox("Prompt template", templates, key="run_template",
                                      index=start_index(templates, "run_template")),
        "store_version": cols[4].number_input("Caption version", min_value=0, key="run_store_version",
                                              value=initial["run_store_version"],
                                              help="0: caption what is missing and use the newest version; "
                                                   "N: use the curated version N of the store as it is"),
    }


def synthetic_widgets(form: Form) -> dict[str, Any]:
    st.markdown("**Generator and synthetic set**")
    cols = st.columns(4)
    initial, start_index = form.initial, form.start_index
    backend = cols[0].selectbox("Generator", BACKENDS, key="run_backend", index=start_index(BACKENDS, "run_backend"))
    values = {
        "backend": backend,
        "cardinality": cols[1].number_input("Cardinality (× members per round)", min_value=0.1, step=0.5,
                                            key="run_cardinality", value=initial["run_cardinality"]),
        "rounds": cols[2].number_input("Rounds", min_value=1, key="run_rounds", value=initial["run_rounds"]),
        "regen": cols[3].number_input("Regenerate every (student epochs)", min_value=1, key="run_regen",
                                      value=initial["run_regen"]),
    }
    return {**values, "options": generator_options(form, backend)}


def model_widgets(form: Form) -> dict[str, Any]:
    st.markdown("**Teacher, student and audit**")
    cols = st.columns(8)
    models = list(dict.fromkeys([*CLASSIFIERS, form.base.teacher.model, form.base.distill.student.model]))
    initial, start_index = form.initial, form.start_index
    return {
        "teacher": cols[0].selectbox("Teacher", models, key="run_teacher", accept_new_options=True,
                                     index=start_index(models, "run_teacher")),
        "teacher_epochs": cols[1].number_input("Teacher epochs", min_value=1, key="run_teacher_epochs",
                                               value=initial["run_teacher_epochs"]),
        "student": cols[2].selectbox("Student", models, key="run_student", accept_new_options=True,
                                     index=start_index(models, "run_student")),
        "student_epochs": cols[3].number_input("Student epochs", min_value=1, key="run_student_epochs",
                                               value=initial["run_student_epochs"]),
        "floor": cols[4].number_input("Floor of steps", min_value=0, step=100, key="run_floor",
                                      value=initial["run_floor"],
                                      help="every classifier (teacher, student, shadows, CAS) trains at least this "
                                           "many optimiser steps, however few the images (0: the epochs alone)"),
        "shadows": cols[5].number_input("Transfer shadows", min_value=1, step=2, key="run_shadows",
                                        value=initial["run_shadows"],
                                        help="shadow models on real data with the teacher's recipe"),
        "pipeline_shadows": cols[6].number_input(
            "Pipeline shadows", min_value=1, key="run_pipeline_shadows", value=initial["run_pipeline_shadows"],
            help="each reruns generator, rounds, teacher and student on half the population: the honest audit "
                 "of the student (RMIA needs only a few)"),
        "views": cols[7].multiselect("Query views", VIEWS, key="run_views", default=initial["run_views"]),
    }


def method_widgets(form: Form) -> dict[str, Any]:
    cols = st.columns([3, 1, 1])
    method_choices = {**METHOD_CHOICES, **{method_label(m): m for m in form.base.methods}}
    initial = form.initial
    methods = cols[0].multiselect(  # opt-in: each costs a training
        "Other students on the same plane", list(method_choices), key="run_methods", default=initial["run_methods"],
        help="am and gkd+bss are data-free; bss (real members) and dp-sgd are references that read real "
             "training images")
    copy_gate = cols[1].number_input("Copy gate (redraws)", min_value=0, key="run_gate", value=initial["run_gate"],
                                     help="redraw synthetic images flagged as near-copies of a member, up to N "
                                          "times, before the student sees them (0: off)")
    epsilon = cols[2].number_input(
        "DP generator ε (0: off)", min_value=0.0, step=1.0, key="run_dp_epsilon", value=initial["run_dp_epsilon"],
        help="train the generator with DP-SGD at this ε (δ = 1 / (10 · members)), prompt it with class names only "
             "(no captions) and label the student with the generated classes: a formal guarantee for the student. "
             "Needs the copy gate off.")
    privacy = {"privacy": "dp", "epsilon": float(epsilon)} if epsilon > 0 else {"privacy": "none", "epsilon": None}
    return {"methods": tuple(method_choices[m] for m in methods), "copy_gate": int(copy_gate), **privacy}


def experiment_form(form: Form) -> ExperimentConfig | None:
    """Widgets → an ExperimentConfig: ``base`` with the fields the widgets show replaced."""
    base = form.base
    # 1. the widgets, section by section
    origin_note()
    dataset = dataset_widgets(form, dataset_choices(form.project, base))
    preset_widgets(form.project, dataset)
    c, g, m, more = caption_widgets(form), synthetic_widgets(form), model_widgets(form), method_widgets(form)
    # 2. what cannot be a config
    if dataset is None or g["options"] is None:
        return None
    if c["store_version"] and not c["store"].strip():
        st.error("A caption version needs the caption store it belongs to.")
        return None
    # 3. the config, checked against its schema as a config file would be (a bad option or value is one
    # line naming the field, said on the page)
    try:
        private = more["privacy"] == "dp"  # class prompts only: the caption fields are not used
        if private:  # the backend must train with DP-SGD (the options themselves: the experiment's schema below)
            FinetuneConfig(generator=g["backend"], options=g["options"], privacy=more["privacy"],
                           epsilon=more["epsilon"]).backend_config()
        return replace(
            base, dataset=dataset, store=None if private else c["store"].strip() or None, template=c["template"],
            store_version=None if private else int(c["store_version"]) or None,
            captioner=replace(base.captioner, name=c["captioner"], class_template=c["class_template"]),
            generator=g["backend"], generator_options=g["options"], cardinality=float(g["cardinality"]),
            rounds=int(g["rounds"]),
            teacher=replace(base.teacher, model=m["teacher"], epochs=int(m["teacher_epochs"]), min_steps=int(m["floor"])),
            distill=replace(base.distill, regen_every=int(g["regen"]), student=replace(
                base.distill.student, model=m["student"], epochs=int(m["student_epochs"]), min_steps=int(m["floor"]))),
            audit=replace(base.audit, n_shadows=int(m["shadows"]), pipeline_shadows=int(m["pipeline_shadows"]),
                          views=tuple(m["views"])),
            **more,
        ).validate()
    except ValueError as err:
        st.error(f"Invalid settings: {err}")
        return None


# 2. the runs of the project, refreshed while one is live -------------------------------------------------------
def runs_list(project: Project) -> tuple[list[str], RunRecord]:
    """The list of runs (kind, archived shown or not) and the run picked -> (the ids listed, that run);
    stops the page when there is no run to list."""
    st.subheader("Runs")
    cols = st.columns([3, 1], vertical_alignment="bottom")
    kind = cols[0].segmented_control("Kind", ["experiment", "all"], default="experiment", key="runs_kind")
    show_archived = cols[1].toggle("Show archived", key="runs_archived",
                                   help="archived runs are hidden from this list; they keep their files")
    listed = runs_view.list_runs(project, kind="experiment" if kind == "experiment" else None,
                                 archived=show_archived)
    if not listed:
        st.info("No runs yet." if not show_archived and not project.registry().list(limit=1) else
                "No runs to show: archived runs are hidden unless 'Show archived' is on.")
        st.stop()
    live = any(r.status in ACTIVE for r in listed)
    st.fragment(run_every=REFRESH_S if live else None)(runs_table)(
        project, "experiment" if kind == "experiment" else None, show_archived, [(r.id, r.status) for r in listed])
    ids = [r.id for r in listed]
    if st.session_state.get("runs_selected") not in ids:
        st.session_state["runs_selected"] = ids[0]
    selected = st.selectbox("Run", ids, key="runs_selected")
    return ids, next(r for r in listed if r.id == selected)


def runs_table(project: Project, kind: str | None, archived: bool, shown: list[tuple[str, str]]) -> None:
    records = runs_view.list_runs(project, kind=kind, archived=archived)
    if [(r.id, r.status) for r in records] != shown:
        st.rerun()  # a run started, ended or appeared: the whole page follows (panel, buttons, refresh)
    rows = pd.DataFrame([runs_view.run_row(r) for r in records])
    st.dataframe(rows, hide_index=True, width="stretch", column_config=shared.fitted_columns(rows),
                 column_order=[c for c in rows.columns if archived or c != "archived"])


# 3. what can be done with the selected run ---------------------------------------------------------------------
def set_archived(project: Project, run_id: str, archived: bool) -> None:
    try:
        ids = runs_view.archive_run(project, run_id, archived)
    except (KeyError, ValueError) as err:
        shared.flash("error", str(err.args[0] if err.args else err))
        return
    stages = f" and its {len(ids) - 1} stage runs" if len(ids) > 1 else ""
    shared.flash("success", f"Archived run {run_id}{stages}: hidden from the list; 'Show archived' shows it again."
                 if archived else f"Run {run_id}{stages} is back in the list.")


def delete(project: Project, run_id: str) -> None:
    try:
        ids = runs_view.delete_run(project, run_id)
    except (KeyError, ValueError, OSError) as err:
        shared.flash("error", str(err.args[0] if err.args else err))
        return
    stages = f" and its {len(ids) - 1} stage runs" if len(ids) > 1 else ""
    shared.flash("success", f"Deleted run {run_id}{stages} and {'their folders' if stages else 'its folder'}.")


def run_actions(project: Project, record: RunRecord) -> None:
    cols = st.columns([1, 1, 3])
    if record.kind == "experiment":
        cols[0].button("Clone into form", key="run_clone", on_click=clone, args=(project, record.id),
                       icon=":material/content_copy:", help="fill the form above with this run's config; change "
                                                            "what you like and start the new run")
    if record.archived:
        cols[1].button("Unarchive", key="run_unarchive", on_click=set_archived, args=(project, record.id, False),
                       icon=":material/unarchive:")
    else:
        cols[1].button("Archive", key="run_archive", on_click=set_archived, args=(project, record.id, True),
                       icon=":material/archive:", help="hide it (and the stage runs it made) from the list; its "
                                                       "files stay, and 'Show archived' shows it again")
    with cols[2].expander("Delete this run", icon=":material/delete:"):
        delete_panel(project, record)


def delete_panel(project: Project, record: RunRecord) -> None:
    plan = runs_view.delete_plan(project, record.id)
    if len(plan.runs) > 1:
        st.caption(f"Goes with it: the {len(plan.runs) - 1} stage runs it made ({', '.join(plan.runs[1:])}).")
    if plan.users:
        st.markdown("**Used by** " + ", ".join(f"`{user}` ({role})" for user, role in plan.users))
    if plan.refusal:
        st.warning(f"Cannot delete: {plan.refusal}.")
    st.caption("A run that other runs were made from is never deleted: they would lose their lineage and the "
               "weights or images they read. Delete those first, or archive this one.")
    sure = st.checkbox(f"Delete {record.id} and its files for good", key=f"run_delete_sure_{record.id}",
                       disabled=plan.refusal is not None)
    st.button("Delete run", type="primary", key="run_delete", on_click=delete, args=(project, record.id),
              disabled=plan.refusal is not None or not sure, icon=":material/delete_forever:")


# 4. one run, live while it is active ---------------------------------------------------------------------------------
def show_run(project: Project, record: RunRecord) -> None:
    active = record.status in ACTIVE
    st.fragment(run_every=REFRESH_S if active else None)(run_panel)(project, record.id, active)


def cancel(project: Project, run_id: str) -> None:
    jobs.cancel(project, run_id)
    shared.flash("warning", f"Asked run {run_id} to stop.")


def resume(project: Project, run_id: str) -> None:
    try:
        jobs.resume_experiment(project, run_id)
    except ValueError as err:
        shared.flash("error", str(err))
        return
    shared.flash("success", f"Resuming run {run_id}: finished stages are reused.")


def run_panel(project: Project, run_id: str, was_active: bool) -> None:
    record = project.registry().get(run_id)
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
        cols[3].button("Cancel run", on_click=cancel, args=(project, run_id), key="run_cancel", icon=":material/stop:")
    elif record.kind == "experiment" and record.status in ("failed", "cancelled"):
        cols[3].button("Resume run", on_click=resume, args=(project, run_id), key="run_resume",
                       icon=":material/replay:",
                       help="continue from the last finished stage (the generator and the classifiers "
                            "continue from their checkpoints)")
    took = runs_view.format_duration(runs_view.elapsed(record))
    if took != runs_view.MISSING:
        st.caption(f"{'Running for' if record.status in ACTIVE else 'Ran for'} {took}")
    done, total = progress.get("done"), progress.get("total")
    if record.status in ACTIVE and done is not None and total:
        st.progress(min(1.0, done / total), text=f"{progress.get('stage')}: {done}/{total}")
    if record.error:
        st.error(record.error)
    rows = report.epoch_rows(events)
    if rows:
        cols = st.columns(2)
        cols[0].plotly_chart(figures.curves_figure(rows, "loss", "Training loss", "training loss"), key="run_loss")
        cols[1].plotly_chart(figures.curves_figure(rows, "val_accuracy", "Validation accuracy", "validation accuracy"),
                             key="run_acc")
    metrics = record.metrics
    models = runs_view.model_rows(record) if record.status == "done" else []
    if models:  # every audited model, the other methods (the data-free AM student ...) included
        table = pd.DataFrame(models)
        st.dataframe(table, hide_index=True, column_config=shared.fitted_columns(table))
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


# 5. two runs side by side --------------------------------------------------------------------------------------------
def compare_section(project: Project, ids: list[str]) -> None:
    st.subheader("Compare two runs")
    if len(ids) < 2:
        st.caption("Start a second run to compare two.")
        return
    cols = st.columns(2)
    a = cols[0].selectbox("Run A", ids, key="runs_compare_a")
    b = cols[1].selectbox("Run B", ids, index=min(1, len(ids) - 1), key="runs_compare_b")
    try:
        comparison = runs_view.compare_runs(project, a, b)
    except (KeyError, ValueError) as err:
        st.info(str(err.args[0] if err.args else err))
        return
    st.markdown("**Config**: the fields that differ")
    if comparison.config:  # static tables: short, read whole, and their text is selectable
        st.table(pd.DataFrame(comparison.config).set_index("field"))
    else:
        st.caption("The two runs have the same config.")
    st.markdown("**Metrics** of every audited model (AUC: the headline attack, with its bootstrap 95% interval)")
    if comparison.metrics:
        st.table(pd.DataFrame(comparison.metrics).set_index(["model", "metric"]))
    else:
        st.caption("Neither run has audited models yet.")


# the page, top to bottom (Streamlit reruns it on every interaction) -------------------------------------------------
st.title("Runs")
shared.show_flash()
project = shared.project()
start_run_form(project)
ids, record = runs_list(project)
run_actions(project, record)
show_run(project, record)
compare_section(project, ids)

