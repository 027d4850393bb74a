"""Issue 23.8: the run registry under faults. A damaged or emptied registry.sqlite is one line that says
how to rebuild it, and `runs rebuild` restores it from the run folders; a live run outlasts another
process's long lock (its final status kept even past the wait); a full disk, however it surfaces, is one
line naming the folder, with the run failed and resumable."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.core import common, jobs, registry_file
from pipeline.core.disk import full_disk
from pipeline.core.project import Project
from pipeline.core.runs import Link, RunRegistry
from pipeline.experiment import earlier_stages

ROOT = Path(__file__).resolve().parents[2]
CEILING_S = 600  # waits end on the event; the ceiling only keeps a wedge from hanging CI


def _runs_of_every_shape(registry: RunRegistry) -> None:
    """An experiment linked to its stage runs, done, with metrics; a failed run; an archived one; a queued one."""
    gen = registry.create("finetune", {"steps": 4}, links=[Link("data", "dataset", "fp")])
    with registry.track(gen.id):
        registry.report(gen.id, final_loss=0.5)
    exp = registry.create("experiment", {"rounds": 1}, links=[Link("data", "dataset", "fp")])
    registry.start(exp.id)
    registry.link(exp.id, Link("generator", "run", gen.id), Link("captions", "captions", "digits@1"))
    registry.finish(exp.id, student_accuracy=0.9)
    failed = registry.create("teacher", {"epochs": 2})
    registry.start(failed.id)
    registry.fail(failed.id, "ValueError: boom")
    old = registry.create("caption", {})
    with registry.track(old.id):
        pass
    registry.archive(old.id)
    registry.create("experiment", {"rounds": 2})  # queued


def _shape(registry: RunRegistry) -> dict[str, tuple]:
    return {r.id: (r.kind, r.status, r.config, r.metrics, r.error, sorted(r.links, key=str), r.archived,
                   r.created_at, r.finished_at) for r in registry.list(limit=100)}


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a database" * 300, "emptied": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage", "emptied"])
def test_a_damaged_registry_is_one_line_and_rebuild_restores_it_from_the_run_folders(tmp_path: Path, capsys, how):
    registry = Project.open(tmp_path).registry()
    _runs_of_every_shape(registry)
    before = _shape(registry)
    _damage(registry.db_path, how)

    for argv in (["runs", "list"], ["runs", "show", next(iter(before))]):
        assert main([*argv, "--project", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"python -m pipeline runs rebuild --project {tmp_path}" in err, err

    assert main(["runs", "rebuild", "--project", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"from {len(before)} run folders" in out and "kept as" in out
    assert _shape(RunRegistry(tmp_path)) == before  # kinds, statuses, configs, metrics, errors, lineage, archive
    assert main(["runs", "list", "--project", str(tmp_path), "--archived"]) == 0
    listed = capsys.readouterr().out
    assert all(run_id in listed for run_id in before)
    # a registry that reads whole is only rebuilt when asked to
    assert main(["runs", "rebuild", "--project", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err



def test_the_studio_says_a_damaged_registry_in_one_line_and_rebuilds_it(env):
    from streamlit.testing.v1 import AppTest

    from pipeline.core.launch import STUDIO_APP

    registry = env.registry()
    _runs_of_every_shape(registry)
    before = _shape(registry)
    _damage(registry.db_path, "garbage")

    at = AppTest.from_file(str(STUDIO_APP), default_timeout=180).run()
    at.switch_page("views/runs.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert [e.value.count("\n") for e in at.error] == [0] and "runs rebuild" in at.error[0].value
    at.button[0].click().run()  # "Rebuild the registry from the run folders"
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error and any(f"from {len(before)} run folders" in m.value for m in at.success)
    assert _shape(RunRegistry(env.root)) == before


def test_the_studio_says_a_full_disk_in_one_line_naming_the_folder(env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from pipeline.core.launch import STUDIO_APP

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(env.root / "runs" / "x" / "run.json"))

    monkeypatch.setattr(RunRegistry, "list", full)
    at = AppTest.from_file(str(STUDIO_APP), default_timeout=180).run()
    at.switch_page("views/runs.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.error) == 1 and at.error[0].value.startswith(f"disk full: no space left on the device of "
                                                               f"{env.root / 'runs' / 'x'}"), at.error

class LockHolder:
    """Another process that holds the registry's write lock until released (a backup, a sqlite3 shell)."""

    def __init__(self, db_path: Path) -> None:
        code = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
                "db.execute('BEGIN IMMEDIATE'); print('held', flush=True); sys.stdin.read()")
        self.process = subprocess.Popen([sys.executable, "-c", code, str(db_path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=CEILING_S)


def test_a_live_run_waits_out_a_long_lock_and_says_so(tmp_path: Path, monkeypatch, caplog, wait_until):
    monkeypatch.setattr(registry_file, "LOCK_STEP_S", 0.2)  # say so after 0.2 s, not 5 s
    registry = RunRegistry(tmp_path)
    run = registry.create("experiment", {})
    registry.start(run.id)
    holder = LockHolder(registry.db_path)
    try:
        registry.report(run.id, progress={"stage": "teacher", "done": 1, "total": 9})  # dropped, not waited for
        assert registry.get(run.id).status == "running"  # reads never wait
        outcome: list[BaseException | None] = []

        def finish() -> None:
            try:
                registry.finish(run.id, student_accuracy=0.9)
                outcome.append(None)
            except BaseException as err:  # noqa: BLE001 - handed to the test's thread
                outcome.append(err)

        writer = threading.Thread(target=finish)
        with caplog.at_level(logging.WARNING, logger="pipeline"):
            writer.start()
            assert wait_until(lambda: "waiting for the lock" in caplog.text, gone=lambda: not writer.is_alive()), \
                outcome
    finally:
        holder.release()
    writer.join(CEILING_S)
    assert outcome == [None]
    record = registry.get(run.id)
    assert record.status == "done" and record.metrics == {"student_accuracy": 0.9}


def test_a_run_that_ends_under_a_lock_past_the_wait_keeps_its_status(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(registry_file, "LOCK_STEP_S", 0.1)
    monkeypatch.setattr(registry_file, "LOCK_WAIT_S", 0.5)
    project = Project.open(tmp_path)
    registry = project.registry()
    run = registry.create("experiment", {})
    with registry.track(run.id):
        holder = LockHolder(registry.db_path)  # taken while the run works; held past its end
    try:
        assert registry.get(run.id).status == "running"  # the registry could not take it ...
        assert common.read_json(run.run_dir / "run.json")["status"] == "done"  # ... its run.json did
    finally:
        holder.release()
    assert jobs.reconcile(project) == []  # not a dead run: its end is copied from the run.json
    assert registry.get(run.id).status == "done"


class FullDisk:
    """Every atomic write fails with ``first`` once the run writes ``trigger`` (then with ENOSPC), as on a
    disk that filled up; ``free()`` gives the space back."""

    def __init__(self, monkeypatch, trigger: str, first: BaseException) -> None:
        self.monkeypatch, self.trigger, self.first, self.full = monkeypatch, trigger, first, False
        real = common.atomic_write_bytes

        def write(path: Path, data: bytes) -> None:
            if Path(path).name == trigger and not self.full:
                self.full = True
                raise self.first
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real(path, data)

        monkeypatch.setattr(common, "atomic_write_bytes", write)

    def free(self) -> None:
        self.monkeypatch.undo()


def _safetensor_error() -> BaseException:
    from safetensors import SafetensorError

    return SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                           '"No space left on device" })')


@pytest.mark.parametrize("first,run_log", [("oserror", False), ("safetensors", True)])
def test_a_full_disk_is_one_line_naming_the_folder_and_the_run_stays_resumable(
        tmp_path: Path, capsys, caplog, monkeypatch, tiny_config, first, run_log):
    project = Project.open(tmp_path)
    run = project.registry().create("experiment", tiny_config)  # queued, as the studio queues a run
    error = OSError(errno.ENOSPC, "No space left on device") if first == "oserror" else _safetensor_error()
    disk = FullDisk(monkeypatch, "membership.json", error)  # the experiment's first write of its own

    argv = [*(["--run-log"] if run_log else []), "-q", "run", "--project", str(tmp_path), "--queued", run.id]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "disk full" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"no space left on the device of {run.run_dir}" in lines[0]
    assert f"`python -m pipeline run --resume {run.id}` continues it" in lines[0]
    if not run_log:  # a terminal shows warnings too (the CLI's logging level): none, only the line
        assert err.count("\n") == 1, err
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    # the run's row says so at once (its run.json, on the full disk, could not), and the run resumes once
    # there is space again
    record = project.registry().get(run.id)
    assert record.status == "failed" and record.error.startswith(f"disk full: no space left on the device of {run.run_dir}")
    assert record.error.endswith(f"`python -m pipeline run --resume {run.id}` continues it")
    disk.free()
    assert main(["runs", "list", "--project", str(tmp_path)]) == 0
    assert project.registry().get(run.id).status == "failed"
    earlier_stages(record, tiny_config, dict((k.role, k.ref) for k in record.links)["data"], resume=True)


def test_full_disk_is_recognised_however_it_surfaces(tmp_path: Path, monkeypatch):
    named = full_disk(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a" / "b.json")))
    assert named is not None and named.folder == tmp_path / "a"
    assert full_disk(_safetensor_error(), tmp_path).folder == tmp_path
    during = RuntimeError("disk I/O error")
    during.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert full_disk(during, tmp_path) is not None  # the second error, raised while handling the first
    torch_says = RuntimeError("basic_ios::clear: iostream error")  # all torch.save says
    assert full_disk(torch_says, tmp_path) is None  # space left: another fault
    monkeypatch.setattr("shutil.disk_usage", lambda _: type("Usage", (), {"free": 1024})())
    assert full_disk(torch_says, tmp_path).folder == tmp_path
    assert full_disk(ValueError("bad input"), tmp_path) is None
