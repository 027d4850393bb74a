"""Background runs: start a real detached process, cancel it, and notice runs whose process died."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from pipeline.core import jobs


def test_start_then_cancel_a_background_run(project, tiny_config, wait_until):
    # a generator that trains for a long time, so the run is surely still busy when cancelled
    config = replace(tiny_config, generator_options=(("train_steps", 100_000), ("block_out_channels", [8, 16])))
    run_id = jobs.start_experiment(project, config)
    registry = project.registry()
    pid = lambda: registry.get(run_id).pid  # noqa: E731
    assert wait_until(lambda: registry.get(run_id).status == "running"
                      and (registry.get(run_id).progress or {}).get("stage") == "finetune",
                      gone=lambda: pid() is not None and not jobs._alive(pid())), jobs.read_log(project, run_id)
    jobs.cancel(project, run_id)
    record = registry.get(run_id)
    assert wait_until(lambda: not jobs._alive(record.pid)), "the run's process did not stop"
    assert registry.get(run_id).status == "cancelled"
    assert "Traceback" not in jobs.read_log(project, run_id)

    # resumed in the background (the studio's Resume button): the same generator run continues
    generator = {link.role: link.ref for link in registry.get(run_id).links}["generator"]
    jobs.resume_experiment(project, run_id)
    assert registry.get(run_id).status in ("queued", "running")
    with pytest.raises(ValueError, match="only an interrupted experiment can be resumed"):
        jobs.resume_experiment(project, run_id)
    assert wait_until(lambda: registry.get(run_id).status == "running"
                      and registry.get(generator).status == "running",
                      gone=lambda: not jobs._alive(registry.get(run_id).pid)), jobs.read_log(project, run_id)
    assert {link.role: link.ref for link in registry.get(run_id).links}["generator"] == generator
    jobs.cancel(project, run_id)
    assert wait_until(lambda: not jobs._alive(registry.get(run_id).pid)), "the resumed run did not stop"
    assert registry.get(run_id).status == "cancelled"


def test_reconcile_marks_runs_with_a_dead_process_failed(project):
    registry = project.registry()
    run = registry.create("experiment", {})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    registry.set_pid(run.id, dead.pid)
    registry.start(run.id)
    registry.set_pid(run.id, dead.pid)  # start() records the caller's pid; pretend another process ran it
    assert jobs.reconcile(project) == [run.id]
    assert registry.get(run.id).status == "failed"
    assert jobs.reconcile(project) == []
