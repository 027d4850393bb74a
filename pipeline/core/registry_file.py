"""The run registry's SQLite file under faults: its schema, waiting for a lock, and errors in one line.

* WAL mode (persistent in the file): a reader never waits for a writer and never blocks one, so reads
  run in plain transactions and only writes take the write lock.
* A writer waits for another process's lock in steps of ``LOCK_STEP_S`` (SQLite's busy timeout), saying
  in the log that it waits and since when, for up to ``LOCK_WAIT_S``; then :class:`RegistryLocked`.
* A damaged file (SQLITE_CORRUPT, SQLITE_NOTADB), or an empty one beside run folders, is
  :class:`RegistryDamaged`: one line with the way back, ``runs rebuild``, which builds the file again
  from the run folders (``run.json``, kept by every change of a run's status, metrics or lineage, and
  ``config.json``: the source of truth).
* A full disk is :class:`~.disk.DiskFull`, naming the project folder.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from .disk import DiskFull, full_disk

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
RUN_FILE = "run.json"  # in each run folder: the run's row as the registry last recorded it
LOCK_STEP_S = 5.0  # SQLite's busy timeout: a lock held longer than this is said in the log
LOCK_WAIT_S = 600.0  # a writer gives up after waiting this long for another process's lock
NOTE_EVERY_S = 60.0  # how often a long wait is said again

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued','running','done','failed','cancelled')),
    config TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    progress TEXT,
    error TEXT,
    pid INTEGER,
    run_dir TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind, created_at);
CREATE TABLE IF NOT EXISTS links (
    run_id TEXT NOT NULL REFERENCES runs(id),
    role TEXT NOT NULL,
    ref_kind TEXT NOT NULL CHECK (ref_kind IN ('dataset','captions','run')),
    ref TEXT NOT NULL,
    PRIMARY KEY (run_id, role, ref)
);
CREATE TABLE IF NOT EXISTS archived (run_id TEXT PRIMARY KEY REFERENCES runs(id), archived_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""


class RegistryError(RuntimeError):
    """The registry file cannot be read or written; the message says why and what to do."""


class RegistryDamaged(RegistryError):
    """The registry file is damaged (or lost beside existing run folders): ``runs rebuild`` restores it."""


class RegistryLocked(RegistryError):
    """Another process held the registry's write lock for longer than ``LOCK_WAIT_S``."""


@contextmanager
def connect(db_path: Path, write: bool = False, wait: float | None = None,
            step: float | None = None) -> Iterator[sqlite3.Connection]:
    """One transaction on the registry file, committed on exit (rolled back on an error). A writer waits
    up to ``wait`` seconds (default ``LOCK_WAIT_S``) for another process's lock, ``step`` (default
    ``LOCK_STEP_S``) at a time; sqlite errors come out as :class:`RegistryError` / :class:`DiskFull`."""
    wait = LOCK_WAIT_S if wait is None else wait
    step = LOCK_STEP_S if step is None else step
    try:
        db = sqlite3.connect(db_path, timeout=step if write else wait, isolation_level=None)
    except sqlite3.Error as err:
        _reraise(err, db_path)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        if write:
            _begin_write(db, db_path, wait)
        else:
            db.execute("BEGIN")
        yield db
        db.execute("COMMIT")
    except sqlite3.Error as err:
        _reraise(err, db_path)
    finally:
        db.close()  # an uncommitted transaction (after an error) is rolled back


def ensure_schema(db_path: Path, runs_dir: Path | None) -> None:
    """Create the tables in a new (or empty) registry file; a no-op read for one that has them. An empty
    file beside run folders (in ``runs_dir``) is a lost registry: :class:`RegistryDamaged`, not a fresh
    start that would list no runs."""
    with connect(db_path) as db:
        ready, wal = _has_schema(db), db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    if not wal:  # a new file, or one a tool put back in rollback mode (where readers wait for writers)
        _set_wal(db_path)
    if ready:
        return
    with connect(db_path, write=True) as db:
        if _has_schema(db):  # another process made it meanwhile
            return
        folders = [p.name for p in runs_dir.glob("*/config.json")] if runs_dir and runs_dir.is_dir() else []
        if folders:
            raise RegistryDamaged(
                f"the run registry {db_path} is empty but {runs_dir} holds {len(folders)} run folders; "
                f"rebuild it from them: python -m pipeline runs rebuild --project {db_path.parent}")
        for statement in SCHEMA.split(";"):
            db.execute(statement)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))


def check(db_path: Path) -> str | None:
    """None if the registry file reads whole (SQLite's quick check), else what is wrong with it."""
    try:
        with connect(db_path) as db:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if not _has_schema(db):
                return "it has no runs table"
    except RegistryDamaged as err:
        return str(err.__cause__ or err)
    return None if problems == ["ok"] else "; ".join(problems[:3])


def _set_wal(db_path: Path) -> None:
    """Put the file in WAL mode (it stays so): outside a transaction, which cannot change it."""
    try:
        db = sqlite3.connect(db_path, timeout=LOCK_WAIT_S, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
    except sqlite3.Error as err:
        _reraise(err, db_path)


def _has_schema(db: sqlite3.Connection) -> bool:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"runs", "links", "archived", "meta"} <= tables:
        return False
    return db.execute("SELECT 1 FROM meta WHERE key='schema_version'").fetchone() is not None


def _begin_write(db: sqlite3.Connection, db_path: Path, wait: float) -> None:
    """``BEGIN IMMEDIATE`` (the write lock), retried while another process holds the lock, with a log line
    when the wait starts and every ``NOTE_EVERY_S`` after."""
    started = time.monotonic()
    noted = None
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            if noted is not None:
                logger.warning("the run registry %s is free again after %.0f s; going on", db_path,
                               time.monotonic() - started)
            return
        except sqlite3.OperationalError as err:
            waited = time.monotonic() - started
            if not _busy(err) or waited >= wait:
                raise
            if noted is None or time.monotonic() - noted >= NOTE_EVERY_S:
                logger.warning("the run registry %s is locked by another process; waiting for the lock "
                               "(%.0f s so far, at most %.0f s)", db_path, waited, wait)
                noted = time.monotonic()


def _busy(err: sqlite3.Error) -> bool:
    return getattr(err, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) \
        or "database is locked" in str(err)


def _reraise(err: sqlite3.Error, db_path: Path) -> NoReturn:
    translated = _translated(err, db_path)
    if translated is err:
        raise err
    raise translated from err


def _translated(err: sqlite3.Error, db_path: Path) -> BaseException:
    """The error to show for a sqlite error: what it means for the registry, in one line (``err`` itself
    for a programming error, which should stay loud)."""
    name = getattr(err, "sqlite_errorname", "")
    project = db_path.parent
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return RegistryDamaged(f"the run registry {db_path} is damaged ({err}); rebuild it from the run "
                               f"folders: python -m pipeline runs rebuild --project {project}")
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        full = full_disk(err, project)
        if full is not None or name.startswith("SQLITE_FULL"):
            return full or DiskFull(project, str(err))
        return RegistryError(f"the run registry {db_path} could not be read or written ({err}); check the "
                             "disk and the file's permissions")
    if _busy(err):
        return RegistryLocked(f"the run registry {db_path} stayed locked by another process ({err}); end "
                              f"what holds it (an open sqlite3 shell, a backup: `fuser {db_path}` names it) "
                              "and retry")
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        return RegistryError(f"the run registry {db_path} cannot be opened for writing ({err}); check the "
                             "project folder's permissions")
    return err
