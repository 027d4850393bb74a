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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    with open(run.run_dir / "log.txt", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--quiet", "run", "--project", str(project.root),
             "--queued", run.id],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    registry.set_pid(run.id, process.pid)
    logger.info("started run %s as process %d", run.id, process.pid)
    return run.id


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
    """Mark as failed the running runs whose process is gone (killed, machine restarted)."""
    registry = project.registry()
    dead = []
    for record in registry.list(status="running") + registry.list(status="queued"):
        if record.pid and not _alive(record.pid):
            registry.fail(record.id, "the run's process ended without recording a result")
            dead.append(record.id)
    return dead


def read_log(project: Project, run_id: str, max_bytes: int = 20_000) -> str:
    """The last ``max_bytes`` of a run's log."""
    path = project.registry().get(run_id).run_dir / "log.txt"
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        return f.read().decode("utf-8", errors="replace")


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
