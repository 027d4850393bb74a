"""Run registry: lifecycle, lineage, cancellation, two concurrent writer processes, archiving and
deleting (with their checks); the Runs page's rows and comparisons (``pipeline.views.runs``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.core.runs import Link, RunBusy, RunCancelled, RunInUse, RunRegistry, config_changes
from pipeline.views import runs as runs_view
from pipeline.views.report import points_from_metrics


def test_lifecycle_config_metrics_and_folder(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("caption", {"captioner": "blip", "batch": 4},
                          links=[Link("data", "dataset", "abc123")])
    assert run.status == "queued" and run.run_dir == tmp_path / "runs" / run.id
    assert json.loads((run.run_dir / "config.json").read_text())["config"]["captioner"] == "blip"
    with registry.track(run.id):
        assert registry.get(run.id).status == "running"
        registry.report(run.id, progress={"stage": "caption", "done": 2}, captioned=2)
    done = registry.get(run.id)
    assert done.status == "done" and done.metrics == {"captioned": 2}
    assert done.progress == {"stage": "caption", "done": 2}
    assert done.links == (Link("data", "dataset", "abc123"),)
    assert done.started_at and done.finished_at


def test_failure_is_recorded_with_the_error(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("train", {})
    with pytest.raises(ZeroDivisionError), registry.track(run.id):
        1 / 0  # noqa: B018
    failed = registry.get(run.id)
    assert failed.status == "failed" and "ZeroDivisionError" in failed.error


def test_cancel_is_noticed_at_the_next_report(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("train", {})
    with pytest.raises(RunCancelled), registry.track(run.id):
        registry.cancel(run.id)
        registry.report(run.id, loss=1.0)
    assert registry.get(run.id).status == "cancelled"


def test_lineage_walks_parent_runs(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    cap = registry.create("caption", {}, links=[Link("data", "dataset", "fp")])
    gen = registry.create("finetune", {}, links=[Link("captions", "captions", "digits@3"),
                                                 Link("parent", "run", cap.id)])
    syn = registry.create("generate", {}, links=[Link("generator", "run", gen.id)])
    lineage = [(depth, link.ref) for depth, _, link in registry.lineage(syn.id)]
    assert (0, gen.id) in lineage and (1, cap.id) in lineage and (2, "fp") in lineage
    assert [r.id for r in registry.list()] == [syn.id, gen.id, cap.id]
    assert [r.id for r in registry.list(kind="caption")] == [cap.id]


def test_unknown_status_filter_lists_valid_ones(tmp_path: Path):
    with pytest.raises(ValueError, match="queued, running, done"):
        RunRegistry(tmp_path).list(status="finished")


def _writer(root: str, worker: int, n: int) -> None:
    registry = RunRegistry(Path(root))
    for k in range(n):
        run = registry.create("bench", {"worker": worker, "k": k})
        registry.start(run.id)
        registry.report(run.id, step=k)
        registry.finish(run.id, worker=worker)


def test_two_processes_writing_at_once(tmp_path: Path):
    RunRegistry(tmp_path)  # create the schema first, as the CLI would
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = RunRegistry(tmp_path).list(limit=100)
    assert len(runs) == 30 and {r.status for r in runs} == {"done"}
    assert sorted(r.metrics["worker"] for r in runs) == [0] * 15 + [1] * 15
    assert len({r.id for r in runs}) == 30


# -- archive, delete, compare (issue 12) ----------------------------------------------------------------------
def _experiment(registry: RunRegistry) -> tuple[str, set[str]]:
    """A finished experiment linked to its stage runs the way ``run_experiment`` links them."""
    exp = registry.create("experiment", {"rounds": 1})
    gen = registry.create("finetune", {}, links=[Link("data", "dataset", "fp")])
    rnd = registry.create("generate", {}, links=[Link("generator", "run", gen.id)])
    teacher = registry.create("teacher", {})
    student = registry.create("student", {}, links=[Link("teacher", "run", teacher.id),
                                                    Link("synthetic round 0", "run", rnd.id)])
    registry.link(exp.id, Link("generator", "run", gen.id), Link("synthetic round 0", "run", rnd.id),
                  Link("teacher", "run", teacher.id), Link("student", "run", student.id))
    for run in (gen, rnd, teacher, student, exp):
        registry.start(run.id)
        registry.finish(run.id)
    return exp.id, {gen.id, rnd.id, teacher.id, student.id}


def test_archive_hides_an_experiment_with_its_stage_runs(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    exp, stages = _experiment(registry)
    other = registry.create("caption", {})
    assert set(registry.archive(exp)) == {exp, *stages}
    assert registry.get(exp).archived and not registry.get(other.id).archived
    assert [r.id for r in registry.list(archived=False)] == [other.id]
    assert {r.id for r in registry.list(archived=True)} == {exp, *stages}
    assert len(registry.list()) == 6  # None: every run, as before
    registry.unarchive(exp)
    assert len(registry.list(archived=False)) == 6
    registry.start(other.id)
    with pytest.raises(RunInUse, match=f"{other.id} is running: cancel it or wait for it to end before archiving"):
        registry.archive(other.id)


def test_delete_removes_the_run_its_stage_runs_and_their_folders(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    exp, stages = _experiment(registry)
    keep = registry.create("caption", {})
    registry.archive(exp)
    (registry.get(exp).run_dir / "metrics.json").write_text("{}")
    assert set(registry.delete(exp)) == {exp, *stages}
    assert [r.id for r in registry.list()] == [keep.id]
    assert sorted(p.name for p in registry.runs_dir.iterdir()) == [keep.id]
    with registry._connect() as db:  # no rows left behind
        assert db.execute("SELECT COUNT(*) FROM links").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM archived").fetchone()[0] == 0


def test_delete_refuses_used_live_and_held_runs(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    exp, stages = _experiment(registry)
    generator = next(r for r in stages if r.startswith("finetune"))
    # an audit made from the experiment, and a generate run made (outside it) from its generator
    audit = registry.create("audit", {}, links=[Link("audited", "run", exp)])
    extra = registry.create("generate", {}, links=[Link("generator", "run", generator)])
    with pytest.raises(RunInUse) as err:
        registry.delete(exp)
    assert f"{audit.id} (as audited)" in str(err.value) and f"{extra.id} (as generator of {generator})" in str(err.value)
    with pytest.raises(RunInUse) as err:
        registry.delete(generator)  # a stage run alone: its experiment and rounds read its weights
    assert f"used by {exp} (as generator)" in str(err.value) and f"{extra.id} (as generator)" in str(err.value)
    assert len(registry.list()) == 7 and all((tmp_path / "runs" / r.id).exists() for r in registry.list())
    with pytest.raises(RunInUse, match=f"{audit.id} is queued: cancel it"):
        registry.delete(audit.id)
    registry.start(audit.id)
    registry.finish(audit.id)
    registry.delete(audit.id)
    registry.start(extra.id)
    registry.fail(extra.id, "boom")
    # another process holds the run's lock (executing or resuming it): RunBusy, nothing deleted
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(registry.get(extra.id).run_dir / ".lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy):
            registry.delete(extra.id)
        assert registry.get(extra.id).status == "failed"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert registry.delete(extra.id) == [extra.id]
    assert set(registry.delete(exp)) == {exp, *stages} and registry.list() == []


def test_delete_plan_says_what_goes_and_why_not(project):
    registry = project.registry()
    exp, stages = _experiment(registry)
    audit = registry.create("audit", {}, links=[Link("audited", "run", exp)])
    plan = runs_view.delete_plan(project, exp)
    assert plan.runs[0] == exp and set(plan.runs[1:]) == stages
    assert plan.users == ((audit.id, "audited"),) and f"used by {audit.id}" in plan.refusal
    assert "is queued" in runs_view.delete_plan(project, audit.id).refusal
    registry.start(audit.id)
    registry.finish(audit.id)
    assert runs_view.delete_plan(project, audit.id) == runs_view.DeletePlan(audit.id, (audit.id,), (), None)


def test_a_dead_run_counts_as_failed_for_delete(project):
    registry = project.registry()
    run = registry.create("experiment", {})
    registry.start(run.id)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    registry.set_pid(run.id, dead.pid)
    with pytest.raises(RunInUse, match="is running"):
        registry.delete(run.id)  # the registry alone cannot tell
    assert runs_view.delete_run(project, run.id) == [run.id]  # reconciled first, like `runs list`


def test_config_changes_lists_each_field_with_both_values():
    a = {"dataset": {"source": "digits", "limit": None}, "rounds": 1, "methods": [["am", {}]]}
    b = {"dataset": {"source": "digits", "limit": 40}, "rounds": 1, "methods": [], "seed": 3}
    assert config_changes(a, b) == [("dataset.limit", None, 40), ("methods", [["am", {}]], []), ("seed", None, 3)]


def test_run_rows_show_live_stage_elapsed_and_no_none(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("experiment", {})
    row = runs_view.run_row(registry.get(run.id))
    assert (row["status"], row["stage"], row["elapsed"], row["teacher AUC"]) == \
        ("queued", "waiting for its process", "–", "–")
    registry.start(run.id)
    registry.report(run.id, progress={"stage": "generate", "done": 30, "total": 120}, teacher_accuracy=0.91234)
    record = registry.get(run.id)
    later = datetime.fromisoformat(record.started_at) + timedelta(minutes=3, seconds=5)
    row = runs_view.run_row(record, now=later)
    assert (row["stage"], row["elapsed"], row["teacher acc"]) == ("generate 30/120", "3m 05s", "0.9123")
    assert None not in row.values()
    registry.finish(run.id)
    record = registry.get(run.id)
    took = (datetime.fromisoformat(record.finished_at) - datetime.fromisoformat(record.started_at)).total_seconds()
    assert runs_view.elapsed(record, now=later + timedelta(hours=5)) == pytest.approx(took)  # not the clock
    assert runs_view.run_row(record)["stage"] == ""
    assert [runs_view.format_duration(s) for s in (None, 0.4, 59, 61, 3600 * 2 + 7 * 60)] == \
        ["–", "0s", "59s", "1m 01s", "2h 07m"]
    assert runs_view.elapsed(replace(record, started_at="2024-01-01T00:00:00"),
                             now=datetime(2024, 1, 1, 0, 1, tzinfo=timezone.utc)) is not None


def test_metric_rows_side_by_side_hand_values():
    def metrics(acc: float, auc: float, ci: list | None, tpr: float | None) -> dict:
        model = {"accuracy": acc, "aop": acc / (2 * auc) ** 2,
                 "mia": {"auc": auc, "auc_ci95": ci, "tpr_at_1pct_fpr": tpr, "attack": "rmia"}}
        return {"teacher": model, "student": model}

    a = points_from_metrics("a", metrics(0.9, 0.6, [0.55, 0.65], 0.02))
    b = points_from_metrics("b", {**metrics(0.8, 0.5, None, None), "methods": {"bss": metrics(0.7, 0.5, None, 0.0)["teacher"]}})
    rows = {(r["model"], r["metric"]): (r["run A"], r["run B"], r["B − A"]) for r in runs_view.metric_rows(a, b)}
    assert rows[("teacher", "accuracy")] == ("0.9000", "0.8000", "-0.1000")
    assert rows[("teacher", "MIA AUC [95% CI]")] == ("0.600 [0.550, 0.650]", "0.500", "-0.1000")
    assert rows[("teacher", "TPR @ 1% FPR")] == ("0.0200", "–", "")  # not measurable in B
    assert rows[("teacher", "AOP")] == (f"{0.9 / 1.44:.4f}", "0.8000", f"{0.8 - 0.9 / 1.44:+.4f}")
    assert rows[("teacher", "audit")] == ("transfer · rmia", "transfer · rmia", "")
    assert rows[("bss", "accuracy")] == ("–", "0.7000", "")
    assert rows[("teacher", "formal ε (guarantee)")] == ("none", "none", "")  # no DP model: no guarantee
    assert rows[("teacher", "empirical ε (an attack's lower bound)")] == ("n/a", "n/a", "")  # not recorded
    assert [m for m, _ in rows][::7] == ["teacher", "student", "bss"]


def test_cli_archives_and_deletes_with_confirmation(project, capsys):
    registry = project.registry()
    exp, stages = _experiment(registry)
    root = ["--project", str(project.root)]
    assert main(["runs", "archive", *root, exp]) == 0 and exp in capsys.readouterr().out
    assert main(["runs", "list", *root]) == 0 and exp not in capsys.readouterr().out
    assert main(["runs", "list", "--archived", *root]) == 0 and exp in capsys.readouterr().out
    assert main(["runs", "delete", *root, exp]) == 2  # not confirmed: nothing deleted
    assert "add --yes" in capsys.readouterr().err and registry.get(exp).archived
    audit = registry.create("audit", {}, links=[Link("audited", "run", exp)])
    assert main(["runs", "delete", "--yes", *root, exp]) == 2
    assert f"used by {audit.id}" in capsys.readouterr().err
    assert main(["runs", "unarchive", *root, exp]) == 0 and not registry.get(exp).archived
    registry.fail(audit.id, "boom")
    assert main(["runs", "delete", "--yes", *root, audit.id]) == 0
    assert main(["runs", "delete", "--yes", *root, exp]) == 0 and registry.list() == []
    assert not any(project.runs_dir.iterdir())
