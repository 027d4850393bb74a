"""Issue 23.9: SIGTERM or SIGINT to a `run` marks it interrupted at once (cancelled, with the signal and how to
resume it), and its pipeline-shadow worker processes die with it, however it dies (even by kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core import jobs
from pipeline.core.runs import RunRegistry

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CEILING_S = 600  # waits end on the event; the ceiling only keeps a wedge from hanging CI


@pytest.mark.parametrize("sig,code,why", [(signal.SIGTERM, 143, "interrupted by SIGTERM"),
                                           (signal.SIGINT, 130, "interrupted (SIGINT / Ctrl-C)")], ids=["term", "int"])
def test_a_signal_marks_a_run_interrupted_at_once_and_resumable(project, tiny_config, wait_until, sig, code, why):
    from pipeline.experiment import earlier_stages

    # a generator that trains for a long time, so the run is surely busy when the signal comes
    config = replace(tiny_config, generator_options=(("train_steps", 100_000), ("block_out_channels", [8, 16])))
    registry = project.registry()
    run = registry.create("experiment", config)
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "-q", "run", "--project", str(project.root),
                                "--queued", run.id], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def training() -> bool:  # running and past its first steps (its data linked, a stage reporting)
            record = registry.get(run.id)
            return record.status == "running" and record.progress is not None

        assert wait_until(training, gone=lambda: process.poll() is not None), \
            process.stderr.read() if process.poll() is not None else ""
        process.send_signal(sig)  # to the run's process alone, as `kill PID` or a service manager
        assert process.wait(timeout=CEILING_S) == code
        assert process.stderr.read().strip().splitlines()[-1] == ("interrupted" if sig == signal.SIGINT else why)
        record = registry.get(run.id)  # read before any other command could reconcile it
        assert record.status == "cancelled"
        assert record.error == f"{why}; `python -m pipeline run --resume {run.id}` continues it"
        earlier_stages(record, config, {k.role: k.ref for k in record.links}["data"], resume=True)  # resumable
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_ctrl_c_marks_a_run_interrupted_with_the_reason(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("finetune", {})
    with pytest.raises(KeyboardInterrupt), registry.track(run.id):
        raise KeyboardInterrupt
    record = registry.get(run.id)
    assert record.status == "cancelled"
    assert record.error == f"interrupted (SIGINT / Ctrl-C); `python -m pipeline finetune --resume {run.id}` continues it"


def hold(spec: str, progress) -> None:
    """A pipeline shadow that does not end (a long training): writes its pid to ``spec``/started, then waits."""
    Path(spec, "started").write_text(str(os.getpid()))
    threading.Event().wait()


PARENT = """
import sys
from pathlib import Path
import numpy as np
from test_interrupts import hold
from pipeline.cli.main import interrupted_by_signals
from pipeline.privacy.pipeline_shadows import PipelineShadows, ShadowJob
root = Path(sys.argv[1])
jobs = {i: ShadowJob(i, str(root / f"job-{i}"), hold, str(root / f"job-{i}")) for i in range(2)}
with interrupted_by_signals():  # as the CLI runs a command
    PipelineShadows(root / "cache", {}, np.zeros((2, 4), bool), jobs, workers=2).result()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_pipeline_shadow_workers_die_with_the_run(tmp_path: Path, wait_until, sig):
    """SIGTERM: the run stops its workers on its way out; kill -9 (nothing runs in the parent): each worker
    sees its parent gone and exits."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, text=True)
    started = [tmp_path / f"job-{i}" / "started" for i in range(2)]
    workers: list[int] = []
    try:
        assert wait_until(lambda: all(p.exists() and p.read_text() for p in started),
                          gone=lambda: parent.poll() is not None), parent.stderr.read() if parent.poll() else ""
        workers = [int(p.read_text()) for p in started]
        os.kill(parent.pid, sig)
        parent.wait(timeout=CEILING_S)
        # a worker dies within a second of its parent: a minute is a failure, not a slow machine
        assert wait_until(lambda: not any(jobs._alive(pid) for pid in workers), timeout=60), "orphaned workers"
        if sig == signal.SIGKILL:
            assert "the process that started it is gone" in (tmp_path / "job-0" / "worker.log").read_text()
        else:
            assert "RunInterrupted: SIGTERM" in parent.stderr.read()
    finally:
        for pid in [parent.pid, *workers]:
            if jobs._alive(pid):
                os.kill(pid, signal.SIGKILL)
