"""A full disk, recognised however it surfaces, turned into one line that names the folder.

Python raises ``OSError(ENOSPC)`` with the file's name; safetensors (Rust) raises ``SafetensorError`` with
"No space left on device (os error 28)" in its text; SQLite says "database or disk is full" or, when its
shared-memory index cannot grow, "disk I/O error"; ``torch.save`` says "basic_ios::clear: iostream error"
and nothing else. The last two are recognised by the free space left where the write failed.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from .common import resume_command

LOW_SPACE_BYTES = 4 * 2**20  # a write failed and less than this is free: the disk is full
_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left; disk quota exceeded
_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "database or disk is full")
_WRITE_ERRORS = (OSError, RuntimeError, sqlite3.Error)  # what a failed write raises, when it says no more


class DiskFull(OSError):
    """No space left on the device that holds ``folder``: one line that says where, and what to do."""

    def __init__(self, folder: Path | str, detail: str = "", run: tuple[str, str] | None = None) -> None:
        super().__init__(errno.ENOSPC, "no space left on device", str(folder))
        self.folder, self.detail, self.run = Path(folder), detail, run  # run: (id, kind) marked failed

    def __str__(self) -> str:
        free = _free_bytes(self.folder)
        where = f"disk full: no space left on the device of {self.folder}"
        if free is not None:
            where += f" ({free / 2**20:.1f} MiB free)"
        then = "then rerun the command"
        if self.run is not None:
            resume = resume_command(self.run[1], self.run[0])
            then = f"run {self.run[0]} failed; " + (f"`{resume}` continues it" if resume else "rerun it")
        detail = f" [{self.detail}]" if self.detail else ""
        return f"{where}{detail}. Free space there (or move the project), {then}"

    def for_run(self, run_id: str, kind: str) -> DiskFull:
        """The same full disk, said of the run that stopped (an experiment's, around its stage run's)."""
        return DiskFull(self.folder, self.detail, (run_id, kind))


def full_disk(err: BaseException, folder: Path | str | None = None) -> DiskFull | None:
    """A :class:`DiskFull` if ``err`` (or an error it was raised from or during) comes from a full disk,
    naming the folder of the file whose write failed (else ``folder``); None otherwise."""
    chain = list(_chain(err))
    for e in chain:
        if isinstance(e, DiskFull):
            return e
    for e in chain:
        named = Path(e.filename).parent if isinstance(e, OSError) and e.filename else folder
        if (isinstance(e, OSError) and e.errno in _ERRNOS) or any(t in str(e).lower() for t in _TEXTS):
            return DiskFull(named or Path.cwd(), _one_line(e))
    if folder is not None:
        free = _free_bytes(Path(folder))
        for e in chain:
            if (isinstance(e, _WRITE_ERRORS) or type(e).__name__ == "SafetensorError") \
                    and free is not None and free < LOW_SPACE_BYTES:
                return DiskFull(folder, _one_line(e))
    return None


def _chain(err: BaseException):
    """``err``, then what it was raised from or while handling, each once."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _free_bytes(folder: Path) -> int | None:
    """Free bytes (for this user) on the device of ``folder`` or of its nearest existing parent."""
    for path in (folder, *folder.parents):
        if path.exists():
            try:
                return shutil.disk_usage(path).free
            except OSError:
                return None
    return None
