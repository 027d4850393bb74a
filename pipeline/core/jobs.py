"""Background runs for the studio: start an experiment as a detached process that survives page
reloads, follow its log and events, cancel it, and notice runs whose process died."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import to_jsonable, write_json
from .project import Project

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the repository root (pipeline/core/jobs.py)


def start_experiment(project: Project, config: Any) -> str:
    """Queue an experiment run and start it in its own process group; returns the run id."""
    registry = project.registry()
    run = registry.create("experiment", config)
    write_json(run.run_dir / "experiment_config.json", to_jsonable(config))
    _launch(project, run.id, "--queued")
    return run.id


def resume_experiment(project: Project, run_id: str) -> None:
    """Continue an interrupted (failed, cancelled or killed) experiment in the background: finished
    stages are reused (``run --resume``). Refused for a finished run or one whose process still runs."""
    reconcile(project)
    record = project.registry().get(run_id)
    if record.kind != "experiment" or record.status not in ("failed", "cancelled"):
        raise ValueError(f"run {run_id} is a {record.status} {record.kind} run; only an interrupted experiment "
                         "can be resumed")
    project.registry().requeue(run_id)  # shown as waiting until the new process claims it
    _launch(project, run_id, "--resume")


def _launch(project: Project, run_id: str, how: str) -> None:
    """``python -m pipeline run --queued|--resume ID`` as a detached process logging to the run's log.txt."""
    registry = project.registry()
    run_dir = registry.get(run_id).run_dir
    # unbuffered: what the run prints reaches log.txt as it happens, in order with its log lines
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(run_dir / "log.txt", "ab") as log:
        # --run-log: timestamped stage messages, warnings and a failure's traceback (the Runs page shows them)
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--quiet", "--run-log", "run", "--project", str(project.root),
             how, run_id],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    registry.set_pid(run_id, process.pid)
    logger.info("started run %s (%s) as process %d", run_id, how.strip("-"), process.pid)


def cancel(project: Project, run_id: str) -> None:
    """Mark the run cancelled and interrupt its process (it records itself as cancelled)."""
    registry = project.registry()
    record = registry.get(run_id)
    registry.cancel(run_id)
    # a run already marked cancelled whose process still lives (a cancel that raced it) is signalled too
    if record.pid and record.status in ("queued", "running", "cancelled") and _alive(record.pid):
        try:
            os.killpg(record.pid, signal.SIGINT)  # KeyboardInterrupt in the job: clean cancel
        except (ProcessLookupError, PermissionError):
            pass


def reconcile(project: Project) -> list[str]:
    """Mark as failed the running runs whose process is gone (killed, machine restarted); a run whose
    ``run.json`` says how it ended (the registry could not take it then) is recorded as it says.

    A running run holds its lock file while it lives (``RunRegistry.claim``), which is exact even
    when its process id has been reused; a queued run (not claimed yet, or requeued for a resume) and
    a run from before locks are judged by their process id."""
    registry = project.registry()
    dead = []
    for record in registry.list(status="running", limit=10_000) + registry.list(status="queued", limit=10_000):
        if record.status == "running" and (record.run_dir / ".lock").exists():
            gone = not registry.is_locked(record.id)
        else:
            gone = bool(record.pid) and not _alive(record.pid)
        if gone and registry.adopt_end(record.id):  # it ended, but could only say so in its run.json
            continue
        # the status is re-checked in the same transaction: a run that finished meanwhile stays done
        if gone and registry.fail_unfinished(record.id, "the run's process ended without recording a result "
                                             "(killed or the machine restarted)"
                                             + ("; `run --resume` continues it" if record.kind == "experiment" else "")):
            dead.append(record.id)
    return dead


def read_log(project: Project, run_id: str, max_bytes: int = 20_000) -> str:
    """The last ``max_bytes`` of a run's log, from the start of a line (the log grows while a run lives)."""
    path = project.registry().get(run_id).run_dir / "log.txt"
    try:
        with open(path, "rb") as f:
            start = max(0, os.fstat(f.fileno()).st_size - max_bytes)
            f.seek(start)
            tail = f.read(max_bytes)
    except FileNotFoundError:
        return ""
    if start and b"\n" in tail:  # drop the cut first line (a part of a line, maybe of a UTF-8 character)
        tail = tail.split(b"\n", 1)[1]
    return tail.decode("utf-8", errors="replace")


def read_events(project: Project, run_id: str) -> list[dict[str, Any]]:
    """Progress events a run logged (``events.jsonl``): stage, done, total and figures."""
    path = project.registry().get(run_id).run_dir / "events.jsonl"
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (finished child not yet reaped) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True
