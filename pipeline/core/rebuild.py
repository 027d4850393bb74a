"""``runs rebuild``: the run registry built again from the run folders, which are its source of truth.

Each run folder holds ``config.json`` (kind, config and the links it was created with: written once)
and ``run.json`` (status, metrics, error, times, every link, archived: rewritten with each change, see
:meth:`.runs.RunRegistry._mirror`). A folder from before ``run.json`` was kept is rebuilt from its
``config.json`` alone: finished if it wrote a ``metrics.json``, else failed (and resumable).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .registry_file import RUN_FILE, check, connect, ensure_schema
from .runs import STATUSES, RunBusy, _locked

REF_KINDS = ("dataset", "captions", "run")
_FILES = ("", "-wal", "-shm")  # a SQLite file in WAL mode is these three together


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`rebuild_registry` did."""

    path: Path  # the registry file, rebuilt
    runs: int  # runs recorded in it
    guessed: tuple[str, ...]  # runs without a run.json: status guessed from their files
    skipped: tuple[str, ...]  # folders that are no run, "name (why)"
    kept: Path | None  # the previous file, renamed (None: there was none)


def rebuild_registry(project_dir: Path | str, force: bool = False) -> Rebuilt:
    """Build ``<project>/registry.sqlite`` again from ``<project>/runs/*/``. Refused while a process runs
    one of the runs (it would write into the file being replaced), and for a file that reads whole unless
    ``force``. The previous file is kept beside it as ``registry.sqlite.<time>.bak``."""
    project_dir = Path(project_dir)
    db_path, runs_dir = project_dir / "registry.sqlite", project_dir / "runs"
    # 1. only a damaged or missing file (unless forced), and never under a live run
    problem = check(db_path) if db_path.exists() else "missing"
    if problem is None and not force:
        raise ValueError(f"the run registry {db_path} reads whole; `runs rebuild --force` rebuilds it from the run "
                         "folders anyway (the file is kept beside it)")
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    live = [p.name for p in folders if _locked(p / ".lock")]
    if live:
        raise RunBusy(f"run {', '.join(live)} is being run by a live process; let it end (or cancel it) before "
                      "rebuilding the registry")
    # 2. a new file beside the old one, a row per run folder
    new = db_path.with_name("registry.sqlite.rebuild")
    for suffix in _FILES:
        Path(f"{new}{suffix}").unlink(missing_ok=True)
    ensure_schema(new, runs_dir=None)
    guessed, skipped, runs = [], [], 0
    with connect(new, write=True) as db:
        for folder in folders:
            row, links, archived_at, note = _from_folder(folder)
            if row is None:
                skipped.append(f"{folder.name} ({note})")
                continue
            if note:
                guessed.append(folder.name)
            db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            db.executemany("INSERT OR IGNORE INTO links VALUES (?,?,?,?)",
                           [(folder.name, k["role"], k["ref_kind"], k["ref"]) for k in links])
            if archived_at:
                db.execute("INSERT INTO archived VALUES (?,?)", (folder.name, archived_at))
            runs += 1
    # 3. the old file (with its WAL) kept under another name, the new one in its place
    kept = None
    if db_path.exists():
        kept = db_path.with_name(f"registry.sqlite.{datetime.now().strftime('%Y%m%d-%H%M%S')}.bak")
        for suffix in _FILES:
            if Path(f"{db_path}{suffix}").exists():
                os.replace(f"{db_path}{suffix}", f"{kept}{suffix}")
    for suffix in _FILES[1:]:  # a closed WAL database leaves none; a stray one must not join the new file
        Path(f"{new}{suffix}").unlink(missing_ok=True)
    os.replace(new, db_path)
    return Rebuilt(db_path, runs, tuple(guessed), tuple(skipped), kept)


def _from_folder(folder: Path) -> tuple[dict[str, Any] | None, list[dict[str, str]], str | None, str]:
    """(runs row, links, archived_at, note) of one run folder; row None (and why) for a folder that is
    no run; the note says a status was guessed."""
    config, state = _read(folder / "config.json"), _read(folder / RUN_FILE)
    if config is None and state is None:
        return None, [], None, "neither config.json nor run.json reads"
    config, state = config or {}, state or {}
    note = ""
    status = state.get("status")
    if status not in STATUSES:
        status = "done" if (folder / "metrics.json").exists() else "failed"
        note = "no run.json"
    error = _text(state.get("error"))
    if note and status != "done":
        error = "rebuilt without a run.json (status unknown, taken as failed); resume it if it was unfinished"
    row = {"id": folder.name, "kind": str(state.get("kind") or config.get("kind") or folder.name.split("-")[0]),
           "status": status, "config": json.dumps(config.get("config", {})),
           "metrics": json.dumps(state["metrics"] if isinstance(state.get("metrics"), dict) else {}),
           "error": error, "pid": state.get("pid") if isinstance(state.get("pid"), int) else None,
           "run_dir": str(folder), "created_at": _text(state.get("created_at")) or _created(folder),
           "started_at": _text(state.get("started_at")), "finished_at": _text(state.get("finished_at"))}
    links = state.get("links") if isinstance(state.get("links"), list) else config.get("links", [])
    links = [k for k in links if isinstance(k, dict) and k.get("ref_kind") in REF_KINDS
             and all(isinstance(k.get(key), str) for key in ("role", "ref"))]
    return row, links, _text(state.get("archived_at")), note


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _created(folder: Path) -> str:
    """When a run was created: from its id (``<kind>-YYYYmmdd-HHMMSS-<hex>``, local time), else its folder."""
    parts = folder.name.split("-")
    try:
        when = datetime.strptime("-".join(parts[-3:-1]), "%Y%m%d-%H%M%S").astimezone()
    except ValueError:
        when = datetime.fromtimestamp(folder.stat().st_mtime)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
