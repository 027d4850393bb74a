"""Issue 10.2-10.4: one process per run (a lock the OS drops when its holder dies), `finetune --resume`
that never touches a finished run or trains with other arguments, and the CLI's reconcile of dead runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.core import jobs
from pipeline.core.project import Project
from pipeline.core.runs import RunBusy, RunRegistry

ROOT = Path(__file__).resolve().parents[2]
CEILING_S = 600  # the holder's handshake is awaited, never timed; the ceiling only keeps a wedge from hanging CI
TINY = ["--limit", "60", "--steps", "4", "--option", "block_out_channels=[8, 16]", "--option", "norm_groups=4",
        "--option", "checkpoint_every=2", "--option", "batch_size=8"]


class Holder:
    """Another process that holds a run's lock (it claims the run, says so, then waits to be killed)."""

    def __init__(self, project_dir: Path, run_id: str) -> None:
        code = ("import sys, time; from pipeline.core.runs import RunRegistry; r = RunRegistry(sys.argv[1]); "
                "c = r.claim(sys.argv[2]); c.__enter__(); print('held', flush=True); sys.stdin.read()")
        self.process = subprocess.Popen([sys.executable, "-c", code, str(project_dir), run_id], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=CEILING_S)


def test_a_second_process_cannot_run_a_locked_run_and_changes_nothing(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("experiment", {})
    with registry.track(run.id):
        pass  # done
    holder = Holder(tmp_path, run.id)
    try:
        assert registry.is_locked(run.id)
        with pytest.raises(RunBusy, match=f"already being run by process {holder.process.pid}"), \
                registry.track(run.id):
            pass
        assert registry.get(run.id).status == "done"  # the loser neither started nor failed it
    finally:
        holder.kill()
    assert not registry.is_locked(run.id)  # kill -9 released it
    with registry.claim(run.id), registry.claim(run.id):  # and this process can take it (nested)
        assert registry.is_locked(run.id)


def test_run_queued_twice_second_gets_a_clear_error(tmp_path: Path, capsys):
    project = Project.open(tmp_path)
    run = project.registry().create("experiment", {})
    holder = Holder(tmp_path, run.id)
    try:
        assert main(["-q", "run", "--project", str(tmp_path), "--queued", run.id]) == 2
        assert f"run {run.id} is already being run by process" in capsys.readouterr().err
        assert project.registry().get(run.id).status == "queued"
    finally:
        holder.kill()


def test_run_queued_on_a_run_that_is_not_queued_is_refused(tmp_path: Path, capsys):
    registry = Project.open(tmp_path).registry()
    run = registry.create("experiment", {})
    registry.fail(run.id, "killed")
    assert main(["-q", "run", "--project", str(tmp_path), "--queued", run.id]) == 2
    assert f"is failed, not queued; `run --resume {run.id}` continues it" in capsys.readouterr().err
    assert registry.get(run.id).status == "failed"


def test_reconcile_trusts_the_lock_over_the_pid(tmp_path: Path, capsys):
    project = Project.open(tmp_path)
    registry = project.registry()
    alive, dead, finished = (registry.create("experiment", {}) for _ in range(3))
    holders = {r.id: Holder(tmp_path, r.id) for r in (alive, dead)}
    for record in (alive, dead):
        registry.start(record.id)
        registry.set_pid(record.id, 2**22 + 7)  # a pid that is not the holder's (as after a pid reuse)
    holders[dead.id].kill()
    with registry.track(finished.id):
        pass
    assert main(["runs", "list", "--project", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"{dead.id} had stopped without a result" in err and alive.id not in err
    assert registry.get(dead.id).status == "failed" and "run --resume" in registry.get(dead.id).error
    assert registry.get(alive.id).status == "running" and registry.get(finished.id).status == "done"
    holders[alive.id].kill()
    assert jobs.reconcile(project) == [alive.id]
    assert not registry.fail_unfinished(finished.id, "late")  # a finished run is never failed afterwards


def _finetune(tmp_path: Path, *extra: str) -> int:
    return main(["-q", "finetune", "--project", str(tmp_path), *TINY, *extra])


def _files(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.glob("*.json")}


def test_finetune_resume_refuses_a_finished_run_and_leaves_it_as_it_was(tmp_path: Path, capsys):
    assert _finetune(tmp_path) == 0
    run_id = capsys.readouterr().out.split("[run ")[1].split("]")[0]
    registry = RunRegistry(tmp_path)
    before = _files(registry.get(run_id).run_dir)
    assert _finetune(tmp_path, "--resume", run_id, "--dataset", "digits", "--limit", "30") == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["-q", "finetune", "--project", str(tmp_path), "--resume", run_id]) == 2
    assert f"run {run_id} is already finished" in capsys.readouterr().err
    assert registry.get(run_id).status == "done" and _files(registry.get(run_id).run_dir) == before


def test_finetune_resume_uses_the_recorded_config_and_refuses_other_arguments(tmp_path: Path, capsys):
    assert _finetune(tmp_path) == 0
    run_id = capsys.readouterr().out.split("[run ")[1].split("]")[0]
    registry = RunRegistry(tmp_path)
    run_dir = registry.get(run_id).run_dir
    registry._update(run_id, status="failed")  # as after a crash at the last step
    (run_dir / "generator" / "backend.json").unlink()
    before = _files(run_dir)
    # another backend, or another step count, is refused before anything is written
    assert main(["-q", "finetune", "--project", str(tmp_path), "--resume", run_id, "--generator", "sd-lora"]) == 2
    assert "generator: 'scratch' -> 'sd-lora'" in capsys.readouterr().err
    assert main(["-q", "finetune", "--project", str(tmp_path), "--resume", run_id, "--steps", "9"]) == 2
    assert "options" in capsys.readouterr().err
    assert registry.get(run_id).status == "failed" and _files(run_dir) == before
    # --resume alone (or with the same arguments) resumes the scratch run with its own config
    assert main(["-q", "finetune", "--project", str(tmp_path), "--resume", run_id]) == 0
    assert registry.get(run_id).status == "done" and (run_dir / "generator" / "backend.json").exists()
    assert _finetune(tmp_path, "--resume", run_id) == 2  # finished now
