"""The Runs page in AppTest: the form builds and starts an ExperimentConfig (also from a preset or a
clone of a run), the table shows live status, the live panel shows progress, curves, throughput and the
log, and cancels a run; two runs compare side by side; runs are archived and deleted with their checks;
the Trade-offs page builds its figures."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from PIL import Image, ImageColor
from streamlit.testing.v1 import AppTest

from pipeline.cli.main import main
from pipeline.core import jobs
from pipeline.core.common import Progress, to_jsonable, write_json
from pipeline.core.runs import Link
from pipeline.data.datasets import DatasetConfig, load_dataset
from pipeline.presets import DataProfile, preset_config


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


@pytest.fixture
def started(monkeypatch) -> list:
    """Configs the Start button starts (registered as queued runs; the real start spawns a process)."""
    configs = []

    def fake_start(project, config):
        configs.append(config)
        return project.registry().create("experiment", config).id

    monkeypatch.setattr("pipeline.core.jobs.start_experiment", fake_start)
    return configs


@pytest.fixture
def fragments(monkeypatch) -> dict:
    """``run_every`` of each fragment the page registers, by function name (AppTest fires no timers)."""
    seen, real = {}, st.fragment

    def spy(func=None, *, run_every=None):
        def wrap(f):
            seen[f.__name__] = run_every
            return real(f, run_every=run_every)
        return wrap if func is None else wrap(func)

    monkeypatch.setattr(st, "fragment", spy)
    return seen


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The page's dataframe or table that has ``column`` (a column or an index level)."""
    frames = [d.value for d in [*at.dataframe, *at.table]]
    return next(f.reset_index() if column in f.index.names else f for f in frames
                if column in f.columns or column in f.index.names)


def finished_run(project, config: dict, metrics: dict) -> str:
    registry = project.registry()
    run = registry.create("experiment", config)
    registry.start(run.id)
    write_json(run.run_dir / "metrics.json", metrics)
    registry.finish(run.id, teacher_accuracy=metrics["teacher"]["accuracy"])
    return run.id


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_form_builds_the_config_and_starts_the_run(env, monkeypatch, open_page):
    started = []

    def fake_start(project, config):  # the real one spawns `python -m pipeline run --queued`
        run = project.registry().create("experiment", config)
        started.append(config)
        return run.id

    monkeypatch.setattr("pipeline.core.jobs.start_experiment", fake_start)
    at = open_page("runs")
    at.number_input(key="run_limit").set_value(40)
    at.number_input(key="run_teacher_epochs").set_value(2)
    at.number_input(key="run_student_epochs").set_value(1)
    at.number_input(key="run_floor").set_value(200)
    at.number_input(key="run_shadows").set_value(4)
    at.number_input(key="run_rounds").set_value(1)
    at.number_input(key="run_gen_steps_scratch").set_value(10)
    at.selectbox(key="run_size_scratch").set_value("tiny (smoke test)")
    at.multiselect(key="run_methods").set_value(["am", "dp-sgd ε=1"])
    at.number_input(key="run_gate").set_value(2)
    at.run()
    at.button(key="run_start").click().run()
    assert not at.exception and not at.error
    [config] = started
    assert config.methods == (("am", {}), ("dp-sgd", {"epsilon": 1.0})) and config.copy_gate == 2
    assert config.dataset.limit == 40 and config.teacher.epochs == 2 and config.distill.student.epochs == 1
    assert config.teacher.min_steps == config.distill.student.min_steps == 200
    assert config.audit.n_shadows == 4 and config.rounds == 1 and config.generator == "scratch"
    options = dict(config.generator_options)
    assert options["train_steps"] == 10 and options["block_out_channels"] == [8, 16]
    assert any("Started run" in s.value for s in at.success)
    assert at.selectbox(key="runs_selected").value.startswith("experiment-")
    assert config.store_version is None  # default: caption what is missing, use the newest


def test_a_curated_caption_version_can_be_pinned(env, monkeypatch, open_page):
    started = []
    monkeypatch.setattr("pipeline.core.jobs.start_experiment",
                        lambda project, config: started.append(config) or
                        project.registry().create("experiment", config).id)
    at = open_page("runs")
    at.number_input(key="run_store_version").set_value(3).run()
    assert any("needs the caption store" in e.value for e in at.error)
    at.text_input(key="run_store").input("digits").run()
    at.button(key="run_start").click().run()
    assert not at.error
    [config] = started
    assert config.store == "digits" and config.store_version == 3


def test_a_dp_generator_epsilon_starts_a_dp_run(env, monkeypatch, open_page):
    started = []
    monkeypatch.setattr("pipeline.core.jobs.start_experiment",
                        lambda project, config: started.append(config) or
                        project.registry().create("experiment", config).id)
    at = open_page("runs")
    at.number_input(key="run_gate").set_value(1)
    at.number_input(key="run_dp_epsilon").set_value(4.0).run()
    assert any("copy gate" in e.value for e in at.error)  # DP refuses the copy gate, said on the page
    at.number_input(key="run_gate").set_value(0).run()
    at.button(key="run_start").click().run()
    assert not at.error
    [config] = started
    assert config.privacy == "dp" and config.epsilon == 4.0 and config.store is None
    assert config.student_distill().labels == "class"


def test_bad_generator_option_is_refused_before_start(env, open_page):
    at = open_page("runs")
    at.text_input(key="run_extra_scratch").input('{"no_such_field": 1}').run()
    assert any("Invalid settings" in e.value for e in at.error)
    assert at.button(key="run_start").disabled


def test_live_panel_shows_progress_curves_log_and_cancels(env, open_page):
    registry = env.registry()
    run = registry.create("experiment", {"dataset": {"source": "digits"}})
    registry.start(run.id)
    # stands in for the run's process; SIGINT at its default even when the test runner ignores it
    # (a runner started in the background with `&` hands SIGINT ignored to its children)
    worker = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, "
                               "signal.SIG_DFL); time.sleep(60)"], start_new_session=True)
    registry.set_pid(run.id, worker.pid)
    registry.report(run.id, progress={"stage": "teacher", "done": 4, "total": 8})
    events = [{"stage": "generate", "done": 10, "total": 10, "images_per_s": 4.5},
              {"stage": "teacher", "done": 4, "total": 8, "epoch_end": 1, "epoch": 1, "loss": 2.0, "val_accuracy": 0.4},
              {"stage": "teacher", "done": 8, "total": 8, "epoch_end": 1, "epoch": 2, "loss": 1.5, "val_accuracy": 0.6}]
    (run.run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run.run_dir / "log.txt").write_text("teacher: epoch 2\n")
    try:
        at = open_page("runs")
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Status"] == "running" and metrics["Generation"] == "4.5 images/s"
        assert at.get("progress")[0].value == 50  # percent
        specs = plotly_specs(at)
        assert [t["y"] for t in specs[0]["data"]] == [[2.0, 1.5]]  # the teacher's loss per epoch
        # issue 25 item 7: axes in words, not the event keys ("val_accuracy")
        assert [s["layout"]["yaxis"]["title"]["text"] for s in specs] == ["training loss", "validation accuracy"]
        assert "teacher: epoch 2" in at.code[0].value
        at.button(key="run_cancel").click().run()
        assert registry.get(run.id).status == "cancelled"
        assert worker.wait(timeout=10) != 0  # the process group was interrupted
    finally:
        worker.kill()


def test_finished_and_failed_runs(env, add_finished_run, fake_metrics, open_page):
    from pipeline.views.legend import model_name

    metrics = fake_metrics()
    metrics["teacher"]["mia"]["empirical_epsilon"] = 0.42
    # issue 25 item 7: the per-run table left out the other students (the data-free AM one)
    metrics["methods"] = {"am": {**metrics["student"], "accuracy": 0.7, "reads_real_training_images": False}}
    done = add_finished_run(env, metrics)
    env.registry().report(done, teacher_auc=0.6, student_accuracy=0.9, student_auc=0.52, class_fidelity=0.81,
                          frechet_distance=3.5, precision=0.7, recall=0.6, cas=0.55, teacher_formal_epsilon="none",
                          teacher_empirical_epsilon=0.42)
    failed = env.registry().create("experiment", {})
    env.registry().fail(failed.id, "ValueError: boom")
    at = open_page("runs")
    at.selectbox(key="runs_selected").set_value(done).run()
    assert at.get("page_link")
    shown = {m.label: m.value for m in at.metric}
    assert shown["Class fidelity"] == "0.810" and shown["CAS"] == "0.550" and shown["Precision / recall"] == "0.70 / 0.60"
    models = next(d.value for d in at.dataframe if "model" in d.value.columns).set_index("model")
    assert list(models.index) == [model_name(role) for role in ("teacher", "student", "am")]
    assert models.loc[model_name("am"), "test accuracy"] == "0.7000"
    assert models.loc[model_name("teacher"), "formal ε (guarantee)"] == "none"
    assert models.loc[model_name("teacher"), "empirical ε (an attack's lower bound)"] == "0.42"
    assert models.loc[model_name("student"), "empirical ε (an attack's lower bound)"] == "n/a"  # not recorded
    at.selectbox(key="runs_selected").set_value(failed.id).run()
    assert any("boom" in e.value for e in at.error)


STAMPED = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S* "  # a log line's timestamp


def test_a_failed_background_run_logs_its_stages_and_traceback(env, tiny_config, wait_until, open_page):
    """Issue item 17: a real queued run that fails in the finetune stage (a patch that does not divide
    the digits' 8 px side) leaves its stage messages, the error and the traceback in log.txt."""
    base = tiny_config
    config = replace(base, dataset=replace(base.dataset, limit=40), generator_options=(("patch", 3),),
                     audit=replace(base.audit, modes=("transfer",)))  # no pipeline-shadow workers
    run_id = jobs.start_experiment(env, config)
    registry = env.registry()
    assert wait_until(lambda: not jobs._alive(registry.get(run_id).pid)), "the run's process did not end"
    log = jobs.read_log(env, run_id)
    assert registry.get(run_id).status == "failed", log
    assert re.search(STAMPED + r"INFO .*caption", log, re.M), log  # timestamped INFO stage messages
    assert re.search(STAMPED + r"ERROR .*failed after the caption stage", log, re.M), log  # before a finetune step
    assert re.search(STAMPED + r"ERROR .*not a multiple of patch 3", log, re.M), log
    assert "Traceback (most recent call last)" in log and "scratch.py" in log, log
    tail = jobs.read_log(env, run_id, max_bytes=300)
    assert log.endswith(tail) and f"\n{tail}" in log  # a tail starts at a line
    at = open_page("runs")
    at.selectbox(key="runs_selected").set_value(run_id).run()
    [panel] = [e for e in at.expander if e.label == "Log"]
    assert panel.proto.expanded and "Traceback (most recent call last)" in panel.code[0].value


def test_a_cancelled_queued_run_logs_the_stage_it_stopped_in(env, monkeypatch, capsys, tiny_config):
    """What a queued run writes to its log (its stderr) when a cancel interrupts it mid-stage."""
    run = env.registry().create("experiment", tiny_config)

    def interrupted(config, project, progress, **_):
        progress(Progress("caption", 40, 40))
        progress(Progress("finetune", 3, 100, {"loss": 0.5}))
        raise KeyboardInterrupt  # the SIGINT of jobs.cancel

    monkeypatch.setattr("pipeline.experiment.run_experiment", interrupted)
    # the command line jobs.start_experiment gives a background run
    assert main(["--quiet", "--run-log", "run", "--project", str(env.root), "--queued", run.id]) == 130
    log = capsys.readouterr().err
    assert re.search(STAMPED + r"INFO .*finetune: started", log, re.M), log
    assert re.search(STAMPED + r"WARNING .*cancelled during the finetune stage \(3/100\)", log, re.M), log
    assert "Traceback" not in log


def test_tradeoff_figure_filters_and_exports(env, monkeypatch, add_finished_run, fake_metrics, open_page):
    from pipeline.views.legend import model_name

    teacher_name = model_name("teacher")
    gone = add_finished_run(env, fake_metrics(teacher=(0.95, 0.62), student=(0.90, 0.52)))
    add_finished_run(env, fake_metrics(teacher=(0.80, 0.70), student=(0.70, 0.55), backend="sd-lora"))
    at = open_page("tradeoffs")
    scatter = plotly_specs(at)[0]
    names = [t.get("name") for t in scatter["data"]]
    assert {teacher_name, model_name("student"), "Pareto front", "iso-AOP curves"} <= set(names)
    teacher = next(t for t in scatter["data"] if t.get("name") == teacher_name)
    assert sorted(teacher["y"]) == [0.8, 0.95]
    front = next(t for t in scatter["data"] if t.get("name") == "Pareto front")
    assert front["x"] == [0.52, 0.62] and front["y"] == [0.90, 0.95]
    table = at.table[0].value
    assert table["Pareto front"].tolist().count("yes") == 2
    assert len(plotly_specs(at)) == 3  # trade-off, ROC, per-class
    # filters
    at.multiselect(key="to_generators").set_value(["sd-lora"]).run()
    teacher = next(t for t in plotly_specs(at)[0]["data"] if t.get("name") == teacher_name)
    assert teacher["y"] == [0.8]
    # an archived run leaves the plot until the toggle asks for archived runs too
    env.registry().archive(gone)
    at = open_page("tradeoffs")
    assert sorted(next(t for t in plotly_specs(at)[0]["data"] if t.get("name") == teacher_name)["y"]) == [0.8]
    at.toggle(key="to_archived").set_value(True).run()
    assert sorted(next(t for t in plotly_specs(at)[0]["data"] if t.get("name") == teacher_name)["y"]) == [0.8, 0.95]
    # export: HTML always, PNG degrades to a message when kaleido finds no browser
    assert at.get("download_button")
    monkeypatch.setattr("studio.figures.to_png", lambda fig: (_ for _ in ()).throw(RuntimeError("no Chrome")))
    at.button(key="to_export_png").click().run()
    assert any("Download the HTML instead" in w.value for w in at.warning)


def test_tradeoff_html_export_is_self_contained(env, fake_metrics):
    from pipeline.views.report import points_from_metrics
    from studio import figures

    html = figures.to_html(figures.tradeoff_figure(points_from_metrics("r", fake_metrics())))
    assert "<html>" in html and "Plotly.newPlot" in html and len(html) > 1_000_000 and "Pareto front" in html


def test_empty_project_pages(env, open_page):
    assert "No audited models" in open_page("tradeoffs").info[0].value
    assert "No trained generator" in open_page("generations").info[0].value
    write_json(env.root / "x.json", {})
    at = open_page("runs")
    assert at.expander and not at.exception


def test_png_export_renders_with_the_installed_kaleido(fake_metrics):
    """Issue 10.18: the README's install gives PNG export (kaleido + a Chromium it finds)."""
    import shutil

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chrome / Chromium on this machine (.ci/run and the Dockerfile install one)")
    import plotly.graph_objects as go

    from pipeline.views.legend import look
    from pipeline.views.report import points_from_metrics
    from studio import figures

    figure = figures.tradeoff_figure(points_from_metrics("r", fake_metrics()))
    png = figures.to_png(figure)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the points are drawn: against the same figure with its points moved off the axes (same axes, lines and
    # legend), the export has a solid block of the teacher's and of the student's marker colour (8 x 8 px
    # here; error bars are 2 px lines, the legend's markers are in both images)
    bare = go.Figure(figure)
    for trace in bare.data:
        if trace.mode == "markers":
            trace.x = [10.0] * len(trace.x)
    drawn, without = (np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=int) for b in (png, figures.to_png(bare)))
    assert drawn.shape == without.shape == (1040, 2200, 3)  # 1100 x 520 at scale 2
    for role in ("teacher", "student"):
        rgb = np.array(ImageColor.getrgb(look(role).color))
        new = (np.abs(drawn - rgb).sum(-1) <= 30) & (np.abs(without - rgb).sum(-1) > 30)
        assert _has_solid_block(new, 5), role


def _has_solid_block(mask, side: int) -> bool:
    """Whether some side x side block of ``mask`` is all True."""
    s = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return bool((s[side:, side:] - s[:-side, side:] - s[side:, :-side] + s[:-side, :-side] == side * side).any())


# -- issue 12: runs management -------------------------------------------------------------------------------
def test_the_table_shows_live_status_stage_and_elapsed_and_refreshes_while_live(env, fragments, add_finished_run,
                                                                               fake_metrics, open_page):
    registry = env.registry()
    done = add_finished_run(env, fake_metrics())
    running = registry.create("experiment", {"dataset": {"source": "digits"}})
    registry.start(running.id)  # its process: this one, alive
    registry.report(running.id, progress={"stage": "teacher", "done": 4, "total": 8})
    queued = registry.create("experiment", {})  # its process has not claimed it yet
    dead = registry.create("experiment", {})
    registry.start(dead.id)
    registry.set_pid(dead.id, dead_pid())  # marked running, its process gone
    at = open_page("runs")
    rows = table(at, "elapsed").set_index("run")
    assert rows.loc[running.id, "status"] == "running" and rows.loc[running.id, "stage"] == "teacher 4/8"
    assert re.fullmatch(r"\d+s|\d+m \d\ds", rows.loc[running.id, "elapsed"])
    assert (rows.loc[queued.id, "status"], rows.loc[queued.id, "elapsed"]) == ("queued", "–")
    assert rows.loc[dead.id, "status"] == "failed"  # judged like `runs list`
    assert rows.loc[done, "teacher acc"] == "0.9500" and rows.loc[done, "student AUC"] == "–"
    assert not rows.isna().any().any() and "None" not in rows.to_string()
    assert fragments["runs_table"] == 2.0  # refreshed while a run is live
    registry.finish(running.id)
    registry.cancel(queued.id)
    at.run()
    assert fragments["runs_table"] is None
    rows = table(at, "elapsed").set_index("run")
    assert rows.loc[running.id, "status"] == "done" and rows.loc[running.id, "stage"] == "all stages done"


def test_clone_fills_the_form_and_starts_the_same_config(env, started, tiny_config, open_page):
    base = tiny_config
    original = replace(
        base, dataset=replace(base.dataset, limit=40, member_fraction=0.4), store="digits", store_version=2,
        template="class", cardinality=1.5, rounds=1, copy_gate=1, cas_epochs=3,
        generator_options=(("train_steps", 12), ("sampling_steps", 3), ("block_out_channels", [8, 16]),
                           ("norm_groups", 4), ("batch_size", 16), ("checkpoint_every", 5), ("guidance_scale", 3.0)),
        teacher=replace(base.teacher, epochs=3, lr=0.01),  # lr: not in the form, kept from the clone
        distill=replace(base.distill, regen_every=2, temperature=2.0,
                        student=replace(base.distill.student, model="small-cnn", epochs=2)),
        audit=replace(base.audit, n_shadows=6, pipeline_shadows=1, views=("orig",)),
        methods=(("am", {"images_per_class": 4, "steps": 5}), ("dp-sgd", {"epsilon": 8.0})))
    run = env.registry().create("experiment", original)
    env.registry().fail(run.id, "ValueError: boom")
    at = open_page("runs")
    at.button(key="run_clone").click().run()
    assert not at.exception and any("Cloned run" in s.value for s in at.success)
    assert at.number_input(key="run_teacher_epochs").value == 3 and at.selectbox(key="run_student").value == "small-cnn"
    assert at.selectbox(key="run_size_scratch").value == "tiny (smoke test)"
    assert json.loads(at.text_input(key="run_extra_scratch").value) == {"checkpoint_every": 5, "guidance_scale": 3.0}
    assert any(f"a clone of run {run.id}" in i.value for i in at.info)
    at.number_input(key="run_rounds").set_value(2).run()  # what the user changes before starting
    at.button(key="run_start").click().run()
    assert not at.error
    [config] = started
    assert config.rounds == 2
    assert dict(config.generator_options) == {**dict(original.generator_options), "keep_checkpoints": 4}
    same = {"rounds": 1, "generator_options": ()}
    assert to_jsonable(replace(config, **same)) == to_jsonable(replace(original, **same))


def test_a_preset_fills_the_form_from_the_data(env, started, open_page):
    at = open_page("runs")
    at.selectbox(key="run_data_preset").set_value("quick").run()  # picking a preset fills the form
    assert not at.exception and not at.error
    expected, why = preset_config(DatasetConfig(), DataProfile.of(load_dataset(DatasetConfig())), "quick")
    [note] = [i.value for i in at.info if "quick preset" in i.value]
    assert all(line in note for line in why)
    assert at.number_input(key="run_teacher_epochs").value == expected.teacher.epochs == 30
    at.button(key="run_start").click().run()
    [config] = started
    assert dict(config.generator_options).items() >= dict(expected.generator_options).items()
    assert to_jsonable(replace(config, generator_options=())) == to_jsonable(replace(expected, generator_options=()))
    at.button(key="run_form_reset").click().run()  # back to the defaults
    assert at.number_input(key="run_teacher_epochs").value == 60 and not any("preset" in i.value for i in at.info)


def test_two_runs_side_by_side(env, fake_metrics, open_page):
    a = finished_run(env, {"dataset": {"source": "digits"}, "rounds": 1}, fake_metrics(teacher=(0.95, 0.60)))
    metrics = fake_metrics(teacher=(0.80, 0.70))
    metrics["methods"] = {"am": fake_metrics(student=(0.70, 0.51))["student"]}
    b = finished_run(env, {"dataset": {"source": "digits", "limit": 40}, "rounds": 2}, metrics)
    at = open_page("runs")
    at.selectbox(key="runs_compare_a").set_value(a)
    at.selectbox(key="runs_compare_b").set_value(b).run()
    config = table(at, "field").to_dict("records")
    assert config == [{"field": "dataset.limit", "run A": "–", "run B": "40"},
                      {"field": "rounds", "run A": "1", "run B": "2"}]
    rows = table(at, "metric").set_index(["model", "metric"])
    assert tuple(rows.loc[("teacher", "accuracy")]) == ("0.9500", "0.8000", "-0.1500")
    assert tuple(rows.loc[("teacher", "MIA AUC [95% CI]")]) == ("0.600 [0.580, 0.620]", "0.700 [0.680, 0.720]",
                                                                "+0.1000")
    assert rows.loc[("student", "TPR @ 1% FPR"), "run A"] == "0.0500"
    assert rows.loc[("teacher", "AOP"), "run A"] == f"{0.95 / 1.44:.4f}"
    assert tuple(rows.loc[("am", "accuracy")]) == ("–", "0.7000", "")  # a method only run B trained
    at.selectbox(key="runs_compare_b").set_value(a).run()
    assert any("two different runs" in i.value for i in at.info)


def test_archive_hides_a_run_and_unarchive_brings_it_back(env, add_finished_run, fake_metrics, open_page):
    registry = env.registry()
    old = add_finished_run(env, fake_metrics())
    add_finished_run(env, fake_metrics())
    at = open_page("runs")
    at.selectbox(key="runs_selected").set_value(old).run()
    at.button(key="run_archive").click().run()
    assert registry.get(old).archived and any("Archived run" in s.value for s in at.success)
    assert old not in at.selectbox(key="runs_selected").options and old not in set(table(at, "elapsed")["run"])
    at.toggle(key="runs_archived").set_value(True).run()
    assert table(at, "elapsed").set_index("run").loc[old, "archived"] == "yes"
    at.selectbox(key="runs_selected").set_value(old).run()
    at.button(key="run_unarchive").click().run()
    assert not registry.get(old).archived
    running = registry.create("experiment", {})
    registry.start(running.id)  # live (this process): archiving it is refused, with the reason
    at.run()
    at.selectbox(key="runs_selected").set_value(running.id).run()
    at.button(key="run_archive").click().run()
    assert any("is running" in e.value for e in at.error) and not registry.get(running.id).archived


def test_delete_asks_for_confirmation_and_refuses_live_or_used_runs(env, add_finished_run, fake_metrics, open_page):
    registry = env.registry()
    used = add_finished_run(env, fake_metrics())
    audit = registry.create("audit", {}, links=[Link("audited", "run", used)])
    registry.start(audit.id)
    registry.finish(audit.id)
    running = registry.create("experiment", {})
    registry.start(running.id)  # live (this process)
    at = open_page("runs")
    at.selectbox(key="runs_selected").set_value(running.id).run()
    assert at.button(key="run_delete").disabled and any("is running" in w.value for w in at.warning)
    at.selectbox(key="runs_selected").set_value(used).run()  # an audit was made from it: refused, named
    assert at.button(key="run_delete").disabled
    assert any(f"used by {audit.id} (as audited)" in w.value for w in at.warning)
    assert any(audit.id in m.value for m in at.markdown if "Used by" in m.value)
    registry.delete(audit.id)
    at.run()
    assert at.button(key="run_delete").disabled  # not confirmed yet
    at.checkbox(key=f"run_delete_sure_{used}").check().run()
    at.button(key="run_delete").click().run()
    assert any(f"Deleted run {used}" in s.value for s in at.success)
    with pytest.raises(KeyError):
        registry.get(used)
    assert not (env.runs_dir / used).exists() and used not in at.selectbox(key="runs_selected").options


# -- issue 25 item 7: the runs page read by a new user ---------------------------------------------------------------
def test_runs_table_headers_fit_and_one_entry_per_dataset(env, add_finished_run, fake_metrics, open_page):
    """A finished run's stage cell says so, no header is cut ("student AU…"), and the dataset list has one
    entry for the digits however many runs (with their limits) used them."""
    done = add_finished_run(env, fake_metrics())
    registry = env.registry()
    limited = registry.create("experiment", {"dataset": {"source": "digits", "limit": 40}})
    registry.start(limited.id)
    registry.finish(limited.id)
    at = open_page("runs")
    assert set(table(at, "elapsed").set_index("run").loc[[done, limited.id], "stage"]) == {"all stages done"}
    runs_table = next(d for d in at.dataframe if "elapsed" in d.value.columns)
    widths = json.loads(runs_table.proto.columns)
    for header in runs_table.value.columns:  # about 8 px a character at the table's font, plus the sort arrow
        assert widths.get(header, {}).get("width", 0) >= 8 * len(header) + 24, header
    options = at.selectbox(key="run_dataset").options
    assert [o for o in options if o.startswith("digits")] == ["digits (built-in)"]


def test_an_experiment_owns_the_caption_run_it_made(audited_run):
    """Archiving an experiment left its caption run listed: the experiment links the caption run it made
    as one of its stage runs, which archive (and delete) take along."""
    project, run_id = audited_run
    registry = project.registry()
    made = [r.id for r in registry.list(kind="caption", limit=10_000)]
    assert len(made) == 1 and made[0] in registry.owned(run_id)
