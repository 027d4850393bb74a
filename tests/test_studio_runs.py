"""The Runs page in AppTest: the form builds and starts an ExperimentConfig, the live panel shows
progress, curves, throughput and the log, and cancels a run; the Trade-offs page builds its figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_experiment import tiny_config
from test_jobs import _wait
from test_studio_report import add_finished_run, fake_metrics

from pipeline.cli.main import main
from pipeline.core import jobs
from pipeline.core.common import Progress, write_json

APP = str(Path(__file__).resolve().parents[1] / "studio" / "app.py")


@pytest.fixture
def env(project, monkeypatch):
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    return project


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_form_builds_the_config_and_starts_the_run(env, monkeypatch):
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
    at.number_input(key="run_shadows").set_value(4)
    at.number_input(key="run_rounds").set_value(1)
    at.number_input(key="run_gen_steps_scratch").set_value(10)
    at.selectbox(key="run_preset").set_value("tiny (smoke test)")
    at.multiselect(key="run_methods").set_value(["am", "dp-sgd ε=1"])
    at.number_input(key="run_gate").set_value(2)
    at.run()
    at.button(key="run_start").click().run()
    assert not at.exception and not at.error
    [config] = started
    assert config.methods == (("am", {}), ("dp-sgd", {"epsilon": 1.0})) and config.copy_gate == 2
    assert config.dataset.limit == 40 and config.teacher.epochs == 2 and config.distill.student.epochs == 1
    assert config.audit.n_shadows == 4 and config.rounds == 1 and config.generator == "scratch"
    options = dict(config.generator_options)
    assert options["train_steps"] == 10 and options["block_out_channels"] == [8, 16]
    assert any("Started run" in s.value for s in at.success)
    assert at.selectbox(key="runs_selected").value.startswith("experiment-")
    assert config.store_version is None  # default: caption what is missing, use the newest


def test_a_curated_caption_version_can_be_pinned(env, monkeypatch):
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


def test_bad_generator_option_is_refused_before_start(env):
    at = open_page("runs")
    at.text_input(key="run_extra_scratch").input('{"no_such_field": 1}').run()
    assert any("Invalid settings" in e.value for e in at.error)
    assert at.button(key="run_start").disabled


def test_live_panel_shows_progress_curves_log_and_cancels(env):
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
        assert "teacher: epoch 2" in at.code[0].value
        at.button(key="run_cancel").click().run()
        assert registry.get(run.id).status == "cancelled"
        assert worker.wait(timeout=10) != 0  # the process group was interrupted
    finally:
        worker.kill()


def test_finished_and_failed_runs(env):
    done = add_finished_run(env, fake_metrics())
    env.registry().report(done, teacher_auc=0.6, student_accuracy=0.9, student_auc=0.52, class_fidelity=0.81,
                          frechet_distance=3.5, precision=0.7, recall=0.6, cas=0.55)
    failed = env.registry().create("experiment", {})
    env.registry().fail(failed.id, "ValueError: boom")
    at = open_page("runs")
    at.selectbox(key="runs_selected").set_value(done).run()
    assert at.get("page_link")
    shown = {m.label: m.value for m in at.metric}
    assert shown["Class fidelity"] == "0.810" and shown["CAS"] == "0.550" and shown["Precision / recall"] == "0.70 / 0.60"
    at.selectbox(key="runs_selected").set_value(failed.id).run()
    assert any("boom" in e.value for e in at.error)


STAMPED = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S* "  # a log line's timestamp


def test_a_failed_background_run_logs_its_stages_and_traceback(env):
    """Issue item 17: a real queued run that fails in the finetune stage (a patch that does not divide
    the digits' 8 px side) leaves its stage messages, the error and the traceback in log.txt."""
    base = tiny_config()
    config = replace(base, dataset=replace(base.dataset, limit=40), generator_options=(("patch", 3),),
                     audit=replace(base.audit, modes=("transfer",)))  # no pipeline-shadow workers
    run_id = jobs.start_experiment(env, config)
    registry = env.registry()
    assert _wait(lambda: not jobs._alive(registry.get(run_id).pid)), "the run's process did not end"
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


def test_a_cancelled_queued_run_logs_the_stage_it_stopped_in(env, monkeypatch, capsys):
    """What a queued run writes to its log (its stderr) when a cancel interrupts it mid-stage."""
    run = env.registry().create("experiment", tiny_config())

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


def test_tradeoff_figure_filters_and_exports(env, monkeypatch):
    add_finished_run(env, fake_metrics(teacher=(0.95, 0.62), student=(0.90, 0.52)))
    add_finished_run(env, fake_metrics(teacher=(0.80, 0.70), student=(0.70, 0.55), backend="sd-lora"))
    at = open_page("tradeoffs")
    scatter = plotly_specs(at)[0]
    names = [t.get("name") for t in scatter["data"]]
    assert {"teacher", "student", "Pareto front", "iso-AOP curves"} <= set(names)
    teacher = next(t for t in scatter["data"] if t.get("name") == "teacher")
    assert sorted(teacher["y"]) == [0.8, 0.95]
    front = next(t for t in scatter["data"] if t.get("name") == "Pareto front")
    assert front["x"] == [0.52, 0.62] and front["y"] == [0.90, 0.95]
    table = at.dataframe[0].value
    assert table["Pareto"].tolist().count(True) == 2
    assert len(plotly_specs(at)) == 3  # trade-off, ROC, per-class
    # filters
    at.multiselect(key="to_generators").set_value(["sd-lora"]).run()
    teacher = next(t for t in plotly_specs(at)[0]["data"] if t.get("name") == "teacher")
    assert teacher["y"] == [0.8]
    # export: HTML always, PNG degrades to a message when kaleido finds no browser
    assert at.get("download_button")
    monkeypatch.setattr("studio.figures.to_png", lambda fig: (_ for _ in ()).throw(RuntimeError("no Chrome")))
    at.button(key="to_export_png").click().run()
    assert any("Download the HTML instead" in w.value for w in at.warning)


def test_tradeoff_html_export_is_self_contained(env):
    from pipeline.views.report import points_from_metrics
    from studio import figures

    html = figures.to_html(figures.tradeoff_figure(points_from_metrics("r", fake_metrics())))
    assert "<html>" in html and "Plotly.newPlot" in html and len(html) > 1_000_000 and "Pareto front" in html


def test_empty_project_pages(env):
    assert "No audited models" in open_page("tradeoffs").info[0].value
    assert "No trained generator" in open_page("generations").info[0].value
    write_json(env.root / "x.json", {})
    at = open_page("runs")
    assert at.expander and not at.exception


def test_png_export_renders_with_the_installed_kaleido():
    """Issue 10.18: the README's install gives PNG export (kaleido + a Chromium it finds)."""
    import shutil

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chrome / Chromium on this machine (.ci/run and the Dockerfile install one)")
    from pipeline.views.report import points_from_metrics
    from studio import figures

    png = figures.to_png(figures.tradeoff_figure(points_from_metrics("r", fake_metrics())))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
