"""Run registry: every stage run recorded in SQLite with its config, status, metrics and lineage.

Schema (``<project>/registry.sqlite``; the file, its waits and its errors: :mod:`.registry_file`)::

    runs(id TEXT PRIMARY KEY, kind TEXT, status TEXT, config TEXT (JSON), metrics TEXT (JSON),
         progress TEXT (JSON: latest progress event), error TEXT, pid INTEGER, run_dir TEXT,
         created_at TEXT, started_at TEXT, finished_at TEXT)
    links(run_id TEXT, role TEXT, ref_kind TEXT, ref TEXT)   -- lineage: what a run was made from
    archived(run_id TEXT PRIMARY KEY, archived_at TEXT)       -- runs hidden from the default lists
    meta(key TEXT PRIMARY KEY, value TEXT)                    -- schema_version

``ref_kind`` is "dataset" (fingerprint), "captions" ("<store>@<version>") or "run" (a parent run
id); ``role`` says what the parent was used as ("data", "captions", "generator", "teacher", ...).
Artefacts of a run live in ``<project>/runs/<id>/``. An experiment *owns* the stage runs it links to
(generator, synthetic rounds, teacher, student, methods; their images and weights mostly live in the
experiment's folder): archiving or deleting it takes them along. A run that another run was made from
(a link to it, or to a stage run it owns) is never deleted.

The run folders are the source of truth: ``config.json`` (kind, config, first links) is written when
the run is created, ``run.json`` (status, metrics, error, times, links, archived) with every change of
them, in the transaction that makes it; :func:`rebuild_registry` builds the file again from them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .common import read_json, resume_command, to_jsonable, write_json
from .disk import full_disk
from .registry_file import (
    RUN_FILE,
    SCHEMA_VERSION,  # noqa: F401 - part of this module's interface
    RegistryError,
    RegistryLocked,
    connect,
    ensure_schema,
)

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelled")
LIVE = ("queued", "running")  # a process is (about to be) executing the run
ENDED = ("done", "failed", "cancelled")
PROGRESS_WAIT_S = 0.5  # a progress report waits this long for the registry's lock, then is dropped
PROGRESS_PAUSE_S = 10.0  # after a dropped report, progress is not offered to a locked registry for this long


@dataclass(frozen=True)
class Link:
    """One lineage edge: the run was made from ``ref`` (of ``ref_kind``) used as ``role``."""

    role: str
    ref_kind: str
    ref: str


@dataclass(frozen=True)
class RunRecord:
    """One row of the registry."""

    id: str
    kind: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    progress: dict[str, Any] | None
    error: str | None
    pid: int | None
    run_dir: Path
    created_at: str
    started_at: str | None
    finished_at: str | None
    links: tuple[Link, ...] = field(default=())
    archived: bool = False  # hidden from the default lists (``RunRegistry.archive``)


class RunCancelled(Exception):
    """Raised inside a run when someone asked for it to be cancelled."""


class RunInterrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP; SIGINT is Python's own KeyboardInterrupt) stopped the process: raised in
    its main thread, so that a run records itself interrupted on its way out (the CLI installs the handler).
    Its text is the signal's name."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunBusy(ValueError):
    """Another process is executing this run (it holds the run's lock)."""


class RunInUse(ValueError):
    """The run is live, or other runs were made from it: it cannot be deleted."""


# run locks this process holds: lock file -> (open file, depth). flock locks belong to an open file, so
# a second flock of the same file from this process would fail against itself; nested claims (the
# experiment claims its run, then ``track`` claims it again) share the one open file instead.
_HELD: dict[str, list[Any]] = {}


class RunRegistry:
    """Runs of one project. Each call opens its own short transaction, so several processes can
    write at once (SQLite serialises them; a writer waits for another's lock, saying so in the log)."""

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = Path(project_dir)
        self.db_path = self.project_dir / "registry.sqlite"
        self.runs_dir = self.project_dir / "runs"
        self.project_dir.mkdir(parents=True, exist_ok=True)
        ensure_schema(self.db_path, self.runs_dir)  # a read when the file has its tables
        self._progress_paused_until = float("-inf")

    @contextmanager
    def _connect(self, write: bool = False, wait: float | None = None,
                 step: float | None = None) -> Iterator[sqlite3.Connection]:
        """One transaction (:func:`.registry_file.connect`): reads never wait, writes wait for the lock."""
        with connect(self.db_path, write, wait, step) as db:
            yield db

    # -- writing --------------------------------------------------------------------------------
    def create(self, kind: str, config: Any, links: list[Link] | tuple[Link, ...] = ()) -> RunRecord:
        """Register a queued run, make its folder and save its resolved config there."""
        run_id = f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        config_json = to_jsonable(config)
        write_json(run_dir / "config.json", {"kind": kind, "config": config_json,
                                             "links": [to_jsonable(link) for link in links]})
        with self._connect(write=True) as db:
            db.execute(
                "INSERT INTO runs (id, kind, status, config, run_dir, created_at) VALUES (?,?,?,?,?,?)",
                (run_id, kind, "queued", json.dumps(config_json), str(run_dir), _now()),
            )
            db.executemany("INSERT OR IGNORE INTO links VALUES (?,?,?,?)",
                           [(run_id, k.role, k.ref_kind, k.ref) for k in links])
            self._mirror(db, run_id)
        return self.get(run_id)

    def set_pid(self, run_id: str, pid: int) -> None:
        """Record the process that will execute a queued run (for cancel and crash detection)."""
        self._update(run_id, pid=pid)

    def start(self, run_id: str) -> None:
        self._update(run_id, status="running", started_at=_now(), pid=os.getpid())

    def report(self, run_id: str, progress: dict[str, Any] | None = None, **metrics: Any) -> None:
        """Store the latest progress event and/or merge metrics into the run's metrics; raises
        :class:`RunCancelled` once someone asked the run to stop."""
        if not metrics:
            self._report_progress(run_id, progress)
            return
        with self._connect(write=True) as db:
            merged = {**json.loads(self._status(db, run_id)["metrics"]), **to_jsonable(metrics)}
            db.execute("UPDATE runs SET metrics=? WHERE id=?", (json.dumps(merged), run_id))
            if progress is not None:
                db.execute("UPDATE runs SET progress=? WHERE id=?",
                           (json.dumps(to_jsonable(progress)), run_id))
            self._mirror(db, run_id)

    def _report_progress(self, run_id: str, progress: dict[str, Any] | None) -> None:
        """A progress event: dropped, not waited for, while another process holds the registry's lock (a
        live run must not stall on its progress bar; the next event goes through once the lock is free).
        A cancel request is read first, which never waits."""
        with self._connect() as db:
            self._status(db, run_id)
        if progress is None or time.monotonic() < self._progress_paused_until:
            return
        try:
            with self._connect(write=True, wait=0.0, step=PROGRESS_WAIT_S) as db:
                db.execute("UPDATE runs SET progress=? WHERE id=?", (json.dumps(to_jsonable(progress)), run_id))
        except RegistryLocked:
            self._progress_paused_until = time.monotonic() + PROGRESS_PAUSE_S
            logger.info("progress of run %s not recorded for %.0f s: the run registry is locked by another "
                        "process", run_id, PROGRESS_PAUSE_S)

    @staticmethod
    def _status(db: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        row = db.execute("SELECT metrics, status FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id!r}")
        if row["status"] == "cancelled":
            raise RunCancelled(run_id)
        return row

    def finish(self, run_id: str, **metrics: Any) -> None:
        if metrics:
            self.report(run_id, **metrics)
        self._update(run_id, status="done", finished_at=_now())

    def fail(self, run_id: str, error: str) -> None:
        self._update(run_id, status="failed", finished_at=_now(), error=error)

    def requeue(self, run_id: str) -> None:
        """Put an interrupted run back in the queue (before a process resumes it)."""
        self._update(run_id, status="queued", error=None, finished_at=None)

    def fail_unfinished(self, run_id: str, error: str) -> bool:
        """Mark a queued or running run failed; False (and no change) if it ended meanwhile."""
        with self._connect(write=True) as db:
            cursor = db.execute("UPDATE runs SET status='failed', finished_at=?, error=? "
                                "WHERE id=? AND status IN ('queued','running')", (_now(), error, run_id))
            self._mirror(db, run_id)
            return cursor.rowcount > 0

    def adopt_end(self, run_id: str) -> str | None:
        """The status a live run's ``run.json`` says it ended with, recorded in the registry now (the run
        could not record it there: the registry stayed locked, or was full); None if the file says none."""
        try:
            recorded = read_json(self.runs_dir / run_id / RUN_FILE)
        except (OSError, ValueError):
            return None
        status = recorded.get("status") if isinstance(recorded, dict) else None
        if status not in ENDED:
            return None
        with self._connect(write=True) as db:
            cursor = db.execute("UPDATE runs SET status=?, finished_at=?, error=? WHERE id=? AND status IN "
                                "('queued','running')", (status, recorded.get("finished_at"), recorded.get("error"),
                                                         run_id))
            self._mirror(db, run_id)
        return status if cursor.rowcount else None

    def cancel(self, run_id: str, reason: str | None = None) -> None:
        """Mark a run cancelled; a running job notices at its next progress report and stops."""
        record = self.get(run_id)
        if record.status in ENDED:
            return
        self._update(run_id, status="cancelled", finished_at=_now(), **({"error": reason} if reason else {}))

    def link(self, run_id: str, *links: Link) -> None:
        with self._connect(write=True) as db:
            db.executemany("INSERT OR IGNORE INTO links VALUES (?,?,?,?)",
                           [(run_id, k.role, k.ref_kind, k.ref) for k in links])
            self._mirror(db, run_id)

    def relink(self, run_id: str, link: Link) -> None:
        """Make ``link`` the run's only link in its role (a resumed stage replaces the interrupted one)."""
        with self._connect(write=True) as db:
            db.execute("DELETE FROM links WHERE run_id=? AND role=?", (run_id, link.role))
            db.execute("INSERT INTO links VALUES (?,?,?,?)", (run_id, link.role, link.ref_kind, link.ref))
            self._mirror(db, run_id)

    def _update(self, run_id: str, **values: Any) -> None:
        columns = ", ".join(f"{k}=?" for k in values)
        with self._connect(write=True) as db:
            cursor = db.execute(f"UPDATE runs SET {columns} WHERE id=?", (*values.values(), run_id))
            if cursor.rowcount == 0:
                raise KeyError(f"no run {run_id!r}")
            self._mirror(db, run_id)

    def _mirror(self, db: sqlite3.Connection, run_id: str) -> None:
        """The run's row as its folder's ``run.json``, written in the transaction that changed the row (so
        the file follows the commits in their order; a write that fails undoes the change)."""
        folder = self.runs_dir / run_id
        row = db.execute(f"{_SELECT} WHERE runs.id=?", (run_id,)).fetchone()
        if row is None or not folder.is_dir():
            return
        links = db.execute("SELECT role, ref_kind, ref FROM links WHERE run_id=?", (run_id,)).fetchall()
        write_json(folder / RUN_FILE, {
            **{key: row[key] for key in ("id", "kind", "status", "error", "pid", "created_at", "started_at",
                                         "finished_at", "archived_at")},
            "metrics": json.loads(row["metrics"]),
            "links": [{"role": k["role"], "ref_kind": k["ref_kind"], "ref": k["ref"]} for k in links]})

    # -- reading --------------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            row = db.execute(f"{_SELECT} WHERE runs.id=?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run {run_id!r} in {self.db_path}")
            links = db.execute("SELECT role, ref_kind, ref FROM links WHERE run_id=?", (run_id,)).fetchall()
        return _record(row, links)

    def list(self, kind: str | None = None, status: str | None = None, limit: int = 200,
             archived: bool | None = None) -> list[RunRecord]:
        """Newest first; ``archived``: None lists every run, False only unarchived, True only archived ones."""
        query, args = f"{_SELECT} WHERE 1=1", []
        if kind:
            query, args = query + " AND kind=?", [*args, kind]
        if status:
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
            query, args = query + " AND status=?", [*args, status]
        if archived is not None:
            query += f" AND archived.run_id IS {'NOT ' if archived else ''}NULL"
        query += " ORDER BY created_at DESC, runs.rowid DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(query, (*args, limit)).fetchall()
            links = db.execute("SELECT run_id, role, ref_kind, ref FROM links").fetchall()
        by_run: dict[str, list[Any]] = {}
        for link in links:
            by_run.setdefault(link["run_id"], []).append(link)
        records = []
        for row in rows:
            try:
                records.append(_record(row, by_run.get(row["id"], [])))
            except (ValueError, TypeError) as err:  # one damaged row does not hide every other run
                logger.warning("skipping run %s: its row in %s cannot be read (%s)", row["id"], self.db_path, err)
        return records

    def lineage(self, run_id: str) -> list[tuple[int, RunRecord | None, Link]]:
        """Every ancestor of a run, depth first: (depth, parent record or None, link)."""
        out: list[tuple[int, RunRecord | None, Link]] = []
        seen = {run_id}

        def walk(rid: str, depth: int) -> None:
            for link in self.get(rid).links:
                parent = self.get(link.ref) if link.ref_kind == "run" else None
                out.append((depth, parent, link))
                if parent is not None and parent.id not in seen:  # a shared ancestor is walked once
                    seen.add(parent.id)
                    walk(parent.id, depth + 1)

        walk(run_id, 0)
        return out

    def users(self, run_id: str) -> list[tuple[str, str]]:
        """(run id, role) of every run made from ``run_id`` (that links to it), oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT links.run_id, links.role FROM links JOIN runs ON runs.id = links.run_id "
                              "WHERE ref_kind='run' AND ref=? ORDER BY runs.created_at", (run_id,)).fetchall()
        return [(row[0], row[1]) for row in rows]

    def owned(self, run_id: str) -> list[str]:
        """The run, then the stage runs it owns: an experiment's linked runs (generator, synthetic rounds,
        teacher, student, methods), whose artefacts mostly live in the experiment's own folder."""
        record = self.get(run_id)
        if record.kind != "experiment":
            return [run_id]
        with self._connect() as db:
            known = {row[0] for row in db.execute("SELECT id FROM runs")}
        return [run_id, *dict.fromkeys(k.ref for k in record.links
                                       if k.ref_kind == "run" and k.ref in known and k.ref != run_id)]

    # -- archiving and deleting -------------------------------------------------------------------
    def archive(self, run_id: str) -> list[str]:
        """Hide a run and the stage runs it owns from the default lists (``list(archived=False)``);
        returns their ids. Refused for a live run: cancel it or let it end first."""
        ids = self.owned(run_id)
        with self._connect(write=True) as db:
            _refuse_live(db, run_id, ids, "archiving")
            db.executemany("INSERT OR IGNORE INTO archived VALUES (?,?)", [(i, _now()) for i in ids])
            for i in ids:
                self._mirror(db, i)
        return ids

    def unarchive(self, run_id: str) -> list[str]:
        """Show an archived run (and the stage runs it owns) in the default lists again."""
        ids = self.owned(run_id)
        with self._connect(write=True) as db:
            db.executemany("DELETE FROM archived WHERE run_id=?", [(i,) for i in ids])
            for i in ids:
                self._mirror(db, i)
        return ids

    def deletable(self, run_id: str) -> list[str]:
        """The ids :meth:`delete` would remove (the run, then the stage runs it owns), or :class:`RunInUse`
        saying why it would refuse."""
        ids = self.owned(run_id)
        with self._connect() as db:
            _refuse_live(db, run_id, ids, "deleting")
            _refuse_used(db, run_id, ids)
        return ids

    def delete(self, run_id: str) -> list[str]:
        """Delete a run for good: its registry rows and its folder, with the stage runs it owns; returns
        their ids. Refused (:class:`RunInUse`) for a live run and for a run that another run was made
        from (it would lose its lineage, and maybe the weights or images it reads): delete that one
        first, or archive instead. :class:`RunBusy` if a process holds one of the runs."""
        # 1. what goes, and whether anything forbids it
        ids = self.deletable(run_id)
        with ExitStack() as stack:
            # 2. hold their locks: a process that starts one of them meanwhile stops at its claim
            for rid in ids:
                if (self.runs_dir / rid).is_dir():
                    stack.enter_context(self.claim(rid))
            # 3. the rows, in one transaction that checks again (a resume may have requeued one)
            marks = ",".join("?" * len(ids))
            with self._connect(write=True) as db:
                _refuse_live(db, run_id, ids, "deleting")
                _refuse_used(db, run_id, ids)
                for table, column in (("links", "run_id"), ("archived", "run_id"), ("runs", "id")):
                    db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
            # 4. the folders, which no registry row points at any more
            for rid in ids:
                if (self.runs_dir / rid).is_dir():
                    shutil.rmtree(self.runs_dir / rid)
        return ids

    # -- running ------------------------------------------------------------------------------
    @contextmanager
    def claim(self, run_id: str) -> Iterator[None]:
        """Hold the run's lock (``runs/<id>/.lock``) while executing it: a second process that tries to
        run the same run gets :class:`RunBusy` before it touches anything. The operating system drops
        the lock when the holder dies (even by ``kill -9``), so a dead run is never locked out."""
        path = str(self.get(run_id).run_dir / ".lock")
        held = _HELD.get(path)
        if held is not None:  # this process already holds it (nested stage)
            held[1] += 1
        else:
            handle = open(path, "a+")  # noqa: SIM115 - held open for the lifetime of the claim
            if not _try_lock(handle, attempts=10):  # a few tries: `is_locked` probes hold it for microseconds
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise RunBusy(f"run {run_id} is already being run by {holder}; wait for it or cancel it "
                              "(`runs cancel`)")
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}\n")
            handle.flush()
            held = _HELD[path] = [handle, 1]
        try:
            yield
        finally:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[path]
                held[0].close()  # closing the file releases the lock

    def is_locked(self, run_id: str) -> bool:
        """Whether some live process (this one included) holds the run's lock."""
        return _locked(self.get(run_id).run_dir / ".lock")

    @contextmanager
    def track(self, run_id: str) -> Iterator[RunRecord]:
        """Claim the run's lock and mark it running; on exit mark it done, failed (with the error) or
        cancelled (with the reason: a request, or the signal that interrupted it). A run that another
        process holds raises :class:`RunBusy` and is left as it was. A full disk comes out as
        :class:`~.disk.DiskFull` (one line naming the folder, and how to continue the run)."""
        with self.claim(run_id):
            record = self.get(run_id)
            try:
                self.start(run_id)  # inside: a signal that lands while it writes still ends the run
                yield self.get(run_id)
            except (RunCancelled, KeyboardInterrupt) as err:
                self._end(run_id, "cancelled", _interruption(err, record))
                raise
            except BaseException as err:
                full = full_disk(err, record.run_dir)
                if full is None:
                    self._end(run_id, "failed", f"{type(err).__name__}: {err}")
                    raise
                full = full.for_run(run_id, record.kind)
                self._end(run_id, "failed", str(full))
                raise full from err
            self._end(run_id, "done")

    def _end(self, run_id: str, status: str, error: str | None = None) -> None:
        """Record how a run ended: failed always; cancelled unless it had ended; done only from running.
        Where the run's ``run.json`` cannot be written (a full disk), the row alone is recorded: it often
        still fits, as SQLite reuses its WAL's pages (the file follows with the run's next change). A
        registry that cannot take it (locked past ``LOCK_WAIT_S``, full, damaged) must not lose it nor hide
        why the run ended: it goes to the ``run.json`` alone (:meth:`adopt_end` copies it into the registry
        when the next command reconciles), and where that fails too it is logged."""
        allowed = {"failed": STATUSES, "cancelled": LIVE, "done": ("running",)}[status]
        marks = ",".join("?" * len(allowed))
        update = (f"UPDATE runs SET status=?, finished_at=?, error=? WHERE id=? AND status IN ({marks})",
                  (status, _now(), error, run_id, *allowed))
        unrecorded: BaseException | None = None
        for mirror in (True, False):
            try:
                with self._connect(write=True) as db:
                    db.execute(*update)
                    if mirror:
                        self._mirror(db, run_id)
                if unrecorded is not None:
                    logger.info("run %s ended %s; its run.json could not say so (%s)", run_id, status, unrecorded)
                return
            except RegistryError as err:
                unrecorded = err
                break
            except OSError as err:
                unrecorded = unrecorded or err  # the first cause: a full disk said by the mirror, not by SQLite
        path = self.runs_dir / run_id / RUN_FILE
        try:
            recorded = read_json(path)
            if recorded.get("status") in allowed:
                write_json(path, {**recorded, "status": status, "finished_at": _now(), "error": error})
            logger.warning("run %s ended %s; the run registry could not record it (%s), its run.json did (the "
                           "next command copies it into the registry)", run_id, status, unrecorded)
        except (OSError, ValueError) as err:
            # on a full disk the error the caller raises says so, and the next command marks the run failed
            log = logger.info if full_disk(unrecorded) is not None and status != "done" else logger.error
            log("run %s ended %s, but neither the run registry nor its run.json could record it (%s); the next "
                "command marks it failed", run_id, status, unrecorded)
            if status == "done":
                raise unrecorded from err


_SELECT = "SELECT runs.*, archived.archived_at FROM runs LEFT JOIN archived ON archived.run_id = runs.id"


def _record(row: sqlite3.Row, links: list[Any]) -> RunRecord:
    return RunRecord(
        id=row["id"], kind=row["kind"], status=row["status"], config=json.loads(row["config"]),
        metrics=json.loads(row["metrics"]), progress=json.loads(row["progress"]) if row["progress"] else None,
        error=row["error"], pid=row["pid"], run_dir=Path(row["run_dir"]), created_at=row["created_at"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        links=tuple(Link(k["role"], k["ref_kind"], k["ref"]) for k in links),
        archived=row["archived_at"] is not None,
    )


def _interruption(err: BaseException, record: RunRecord) -> str:
    """Why a run was cancelled, and how it goes on."""
    if isinstance(err, RunCancelled):
        why = "cancelled on request"
    elif isinstance(err, RunInterrupted):
        why = f"interrupted by {err}"
    else:
        why = "interrupted (SIGINT / Ctrl-C)"
    resume = resume_command(record.kind, record.id)
    return why + (f"; `{resume}` continues it" if resume else "")


def _refuse_live(db: sqlite3.Connection, run_id: str, ids: list[str], doing: str) -> None:
    marks = ",".join("?" * len(ids))
    live = db.execute(f"SELECT id, status FROM runs WHERE id IN ({marks}) AND status IN ('queued','running')",
                      ids).fetchall()
    if live:
        what = ", ".join(f"{row[0]} is {row[1]}" for row in live)
        raise RunInUse(f"run {what}: cancel it or wait for it to end before {doing} {run_id}")


def _refuse_used(db: sqlite3.Connection, run_id: str, ids: list[str]) -> None:
    marks = ",".join("?" * len(ids))
    users = db.execute(f"SELECT run_id, role, ref FROM links WHERE ref_kind='run' AND ref IN ({marks}) "
                       f"AND run_id NOT IN ({marks}) ORDER BY run_id", [*ids, *ids]).fetchall()
    if users:
        what = ", ".join(f"{row[0]} (as {row[1]}{'' if row[2] == run_id else f' of {row[2]}'})" for row in users)
        raise RunInUse(f"run {run_id} is used by {what}: delete those first, or archive {run_id} instead")


def config_changes(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(field, value in a, value in b)`` for every leaf where two configs (dataclasses or JSON) differ;
    a field one side lacks is None there."""
    a, b = to_jsonable(a), to_jsonable(b)
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += config_changes(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def config_differences(recorded: Any, given: Any) -> list[str]:
    """``field: recorded -> given`` for every leaf where two configs (dataclasses or JSON) differ."""
    return [f"{name}: {a!r} -> {b!r}" for name, a, b in config_changes(recorded, given)]


def _locked(path: Path) -> bool:
    """Whether some live process (this one included) holds the lock file ``path``."""
    if str(path) in _HELD:
        return True
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        return not _try_lock(handle)  # closing the file releases our probe


def _try_lock(handle: Any, attempts: int = 1) -> bool:
    """An exclusive advisory lock on an open file (POSIX ``flock``), without waiting for a holder:
    ``attempts`` tries 50 ms apart."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process exclusion (the product runs on Linux and macOS)
        return True
    for attempt in range(attempts):
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.05)
    return False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RecordedProgress:
    """The one progress throttle: forwards every event to ``forward`` and, at most once per ``every_s``
    seconds (and always at the end of a stage or an epoch), hands the latest as a JSON-able record to
    each of ``sinks`` (the run registry, where a cancel request is noticed; a run's ``events.jsonl``;
    a worker process's stdout)."""

    def __init__(self, *sinks: Callable[[dict[str, Any]], None], forward: Callable[[Any], None] | None = None,
                 every_s: float = 1.0) -> None:
        self.sinks, self.forward, self.every_s = sinks, forward, every_s
        self.last = float("-inf")

    def __call__(self, event: Any) -> None:
        if self.forward is not None:
            self.forward(event)
        ended = bool(event.info.get("epoch_end")) or (event.total is not None and event.done >= event.total)
        now = time.monotonic()
        if not ended and now - self.last < self.every_s:
            return
        self.last = now
        record = {"t": round(time.time(), 2), "stage": event.stage, "done": event.done, "total": event.total,
                  **to_jsonable(event.info)}
        for sink in self.sinks:
            sink(record)

    @classmethod
    def for_run(cls, registry: RunRegistry, run_id: str, forward: Callable[[Any], None] | None = None,
                events: Path | None = None, every_s: float = 1.0) -> RecordedProgress:
        """Progress of a registered run: the registry (and ``events`` lines, for live curves)."""
        sinks: list[Callable[[dict[str, Any]], None]] = [lambda r: registry.report(run_id, progress=r)]
        if events is not None:
            sinks.insert(0, lambda r: _append_line(events, r))
        return cls(*sinks, forward=forward, every_s=every_s)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
