"""Versioned caption store: one record per image, every save a new version, stale saves refused.

Layout of a store folder (``<project>/captions/<store>/``)::

    HEAD                  current version number, rewritten atomically
    versions/000001.json  one file per version: header + the records it changed
    snapshots/000050.jsonl  full state every ``SNAPSHOT_EVERY`` versions (speeds up loading)
    pending/<key>.jsonl   captions of an unfinished captioning job (lets it resume)
    .lock                 fcntl lock serialising writers across processes

A version file holds ``{"version", "parent", "created_at", "author", "message", "records": [...]}``
where each record is ``{"id", "label", "caption", "source", "timestamp", "status", "curator"}``
(``caption`` None means deleted). Versions are deltas, so a hand edit of one caption costs one small
file, not a rewrite of 50,000 records. The state at version v is the latest record per id over
versions 1..v.

Review workflow: every caption has a ``status``, ``machine`` (written by a captioner or an import) →
``edited`` (changed by hand) → ``reviewed`` (approved by a curator, text unchanged), and a ``curator``:
who last edited or reviewed it. A hand edit of a reviewed caption makes it ``edited`` again. Files
written before statuses existed lack both keys: the status is read from ``source`` (captioner "hand" =
edited) and the curator of a hand edit is its version's author.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.common import atomic_write_text
from ..core.project import Project

logger = logging.getLogger(__name__)

SNAPSHOT_EVERY = 50
# The longest caption a store holds, and so what import accepts and export writes. Longer is a broken file,
# not a caption: text encoders read 77 tokens (a few hundred characters), and a caption of tens of kilobytes
# is nearly always a CSV double quote left open, swallowing the rows after it.
MAX_CAPTION_CHARS = 10_000
HAND_EDIT = {"captioner": "hand", "model": None, "params": {}}
STATUSES = ("machine", "edited", "reviewed")  # review workflow order


@dataclass(frozen=True)
class CaptionRecord:
    """The caption of one image and where it came from."""

    id: str  # stable image id from the data layer
    label: str  # class name
    caption: str  # the caption text
    source: Mapping[str, Any]  # {"captioner", "model", "params"}; captioner "hand" = edited by hand
    timestamp: str  # ISO-8601 UTC time the caption was written
    status: str = ""  # machine | edited | reviewed; "" = from ``source`` (hand = edited, else machine)
    curator: str = ""  # who last edited or reviewed it by hand ("" for a machine caption)

    def __post_init__(self) -> None:
        if not self.status:  # frozen: the derived default has to be set through object.__setattr__
            object.__setattr__(self, "status", "edited" if self.source.get("captioner") == "hand" else "machine")
        elif self.status not in STATUSES:
            raise ValueError(f"unknown caption status {self.status!r}; valid: {', '.join(STATUSES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "caption": self.caption, "source": dict(self.source),
                "timestamp": self.timestamp, "status": self.status, "curator": self.curator}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], author: str = "") -> CaptionRecord:
        """``author``: the version's author, the curator of a hand edit saved before records named one."""
        source = data.get("source") or {}
        curator = data.get("curator")
        if curator is None:
            curator = author if source.get("captioner") == "hand" else ""
        return cls(data["id"], data["label"], data["caption"], source, data.get("timestamp") or "",
                   data.get("status") or "", curator)

    @property
    def edited_by_hand(self) -> bool:
        """The text was written by a person (it may be reviewed since)."""
        return self.source.get("captioner") == "hand"

    @property
    def reviewed(self) -> bool:
        return self.status == "reviewed"

    @property
    def curated(self) -> bool:
        """A person edited or reviewed it: a captioner replaces it only when asked by name."""
        return self.status != "machine"


def check_caption(image_id: str, caption: str | None, where: str = "") -> None:
    """Refuse a caption longer than :data:`MAX_CAPTION_CHARS` (``None``, a deletion, passes); ``where``
    starts the message."""
    if caption is not None and len(caption) > MAX_CAPTION_CHARS:
        raise ValueError(f"{where}the caption of {image_id!r} is {len(caption):,} characters; captions are limited "
                         f"to {MAX_CAPTION_CHARS:,} characters: shorten it")


@dataclass(frozen=True)
class VersionInfo:
    """Header of one saved version."""

    version: int
    parent: int
    created_at: str
    author: str
    message: str
    changed: int  # number of records this version wrote


@dataclass(frozen=True)
class CaptionChange:
    """One difference between two versions."""

    id: str
    before: str | None
    after: str | None


class CaptionStoreDamaged(ValueError):
    """A store file cannot be read (a truncated version file, garbage in HEAD); the message names the file
    and how to restore the store. ``version``: the damaged version, None for HEAD."""

    def __init__(self, message: str, version: int | None) -> None:
        super().__init__(message)
        self.version = version


class CaptionConflictError(RuntimeError):
    """A save based on a stale version would overwrite someone else's edit."""

    def __init__(self, store: str, base: int, head: int, ids: list[str]) -> None:
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        super().__init__(
            f"caption store {store!r}: your edit is based on version {base}, but version {head} "
            f"already changed {shown}; reload the captions and apply your edit again"
        )
        self.base, self.head, self.ids = base, head, ids


@dataclass
class CaptionStore:
    """A folder of versioned captions. Safe for several processes writing at once."""

    root: Path
    _cache: tuple[int, dict[str, CaptionRecord]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    @classmethod
    def open(cls, root: Path, create: bool = True) -> CaptionStore:
        root = Path(root)
        if not (root / "HEAD").exists():
            if not create:
                raise FileNotFoundError(f"no caption store at {root}")
            (root / "versions").mkdir(parents=True, exist_ok=True)
            (root / "snapshots").mkdir(exist_ok=True)
            atomic_write_text(root / "HEAD", "0\n")
        return cls(root)

    def meta(self) -> dict[str, Any]:
        """What the store captions: dataset name, fingerprint and class names (set on first use)."""
        path = self.root / "meta.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def bind(self, dataset_name: str, fingerprint: str, class_names: list[str]) -> None:
        """Tie the store to one dataset; refuse to mix captions of different data in one store."""
        meta = self.meta()
        if meta and meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"caption store {self.name!r} holds captions of dataset {meta.get('dataset')!r} "
                f"(fingerprint {meta.get('fingerprint', '')[:12]}), not of {dataset_name!r} "
                f"(fingerprint {fingerprint[:12]}); choose another store name"
            )
        if not meta:
            atomic_write_text(self.root / "meta.json", json.dumps(
                {"dataset": dataset_name, "fingerprint": fingerprint, "classes": class_names}, indent=2))

    # -- reading --------------------------------------------------------------------------------
    def head(self) -> int:
        """The newest version number (0 for an empty store)."""
        path = self.root / "HEAD"
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if not re.fullmatch(r"\d*", text):
            newest = max(self._version_files(), default=0)
            raise CaptionStoreDamaged(
                f"caption store {self.name!r}: {path} holds {text[:40]!r}, not a version number; the newest "
                f"version file is {self._version_path(newest).name}: restore with `captions rollback {self.name} "
                f"{newest}`", None)
        return int(text or 0)

    def records(self, version: int | None = None) -> dict[str, CaptionRecord]:
        """State at ``version`` (default: head) as {image id: record}; deleted ids are absent."""
        head = self.head()
        version = head if version is None else version
        if not 0 <= version <= head:
            raise ValueError(f"caption store {self.name!r} has versions 0..{head}, not {version}")
        if self._cache and self._cache[0] == version:
            return dict(self._cache[1])
        if version == head and self._cache and self._cache[0] < version:
            # another save happened since we last read: apply just the new deltas
            state = self._apply(dict(self._cache[1]), self._cache[0] + 1, version)
        else:
            state = self._replay(version)
        if version == head:
            self._cache = (version, state)
        return dict(state)

    def get(self, image_id: str, version: int | None = None) -> CaptionRecord | None:
        return self.records(version).get(image_id)

    def history(self) -> list[VersionInfo]:
        """Headers of every version, oldest first."""
        return [self._header(v) for v in range(1, self.head() + 1)]

    def diff(self, a: int, b: int) -> list[CaptionChange]:
        """Captions that differ between versions ``a`` and ``b`` (sorted by id)."""
        old, new = self.records(a), self.records(b)
        changes = []
        for image_id in sorted(set(old) | set(new)):
            before = old[image_id].caption if image_id in old else None
            after = new[image_id].caption if image_id in new else None
            if before != after:
                changes.append(CaptionChange(image_id, before, after))
        return changes

    # -- writing --------------------------------------------------------------------------------
    def save(
        self,
        records: Iterable[CaptionRecord],
        base_version: int | None = None,
        author: str = "",
        message: str = "",
    ) -> int:
        """Write ``records`` as a new version and return its number.

        ``base_version`` is the version the caller's edit started from. If any record being saved
        was changed by a version after it, the save is refused with :class:`CaptionConflictError`;
        edits to other images are merged on top of the newer head. ``None`` skips the check (for
        jobs that own the records they write, such as a captioning run).
        """
        records = list(records)
        with self._locked():
            head = self.head()
            if base_version is not None and base_version != head:
                touched = self._changed_since(base_version, {r.id for r in records})
                if touched:
                    raise CaptionConflictError(self.name, base_version, head, sorted(touched))
            return self._write_version(head, records, author, message)

    def save_captioned(
        self,
        records: Iterable[CaptionRecord],
        since: int,
        replace: Collection[str] = (),
        author: str = "",
        message: str = "",
    ) -> tuple[int, list[str]]:
        """Write a captioner's ``records`` as a new version without overwriting a person's work.

        A record is dropped when the caption it would replace is edited or reviewed at head, unless
        its id is in ``replace`` (the curated captions the user agreed to replace, as they were at
        version ``since``) and it has not changed since: an edit or review made while the job ran
        always wins. Returns the new version (the head when nothing is left) and the ids kept.
        """
        records = list(records)
        with self._locked():
            head = self.head()
            current = self.records(head)
            changed = self._changed_since(since, {r.id for r in records}) if replace else set()
            kept = {r.id for r in records if r.id in current and current[r.id].curated
                    and (r.id not in replace or r.id in changed)}
            records = [r for r in records if r.id not in kept]
            version = self._write_version(head, records, author, message) if records else head
        return version, sorted(kept)

    def edit(
        self,
        captions: Mapping[str, str],
        base_version: int,
        author: str = "",
        message: str = "edited by hand",
    ) -> int:
        """Hand edits {image id: new caption} based on ``base_version``; see :meth:`save`.

        An edited caption gets status ``edited`` and ``author`` as its curator, also when it was
        reviewed before (the new text has not been reviewed). Unchanged captions are left alone.
        """
        current = self._current(captions)
        author = author or os.environ.get("USER", "")
        stamp = _now()
        changed = [
            CaptionRecord(i, current[i].label, text.strip(), HAND_EDIT, stamp, "edited", author)
            for i, text in captions.items()
            if text.strip() != current[i].caption
        ]
        if not changed:
            return self.head()
        return self.save(changed, base_version=base_version, author=author, message=message)

    def review(self, ids: Iterable[str], base_version: int, reviewer: str, message: str = "") -> int:
        """Mark captions reviewed by ``reviewer`` without changing their text, as one new version.

        Captions already reviewed are skipped (no version when none is left). Refused like an edit
        (:class:`CaptionConflictError`) when a caption changed after ``base_version``: the reviewer
        approved the text they saw, not a newer one.
        """
        if not reviewer.strip():
            raise ValueError("name the reviewer: a review records who approved the captions")
        wanted = list(dict.fromkeys(ids))
        current = self._current(wanted)
        changed = [replace(current[i], status="reviewed", curator=reviewer.strip())
                   for i in wanted if not current[i].reviewed]
        if not changed:
            return self.head()
        return self.save(changed, base_version=base_version, author=reviewer.strip(),
                         message=message or f"reviewed {len(changed)} caption(s)")

    def rollback(self, version: int, author: str = "") -> int:
        """Make the state of ``version`` current again, as a new version (history is kept).

        A store damaged after ``version`` (garbage in HEAD, a version file that cannot be read) takes no new
        version on top: HEAD goes back to ``version`` instead and the later version files are set aside in
        ``versions/set-aside-<time>/`` (kept, not deleted)."""
        try:
            target, current = self.records(version), self.records()
        except CaptionStoreDamaged as err:
            if err.version is not None and err.version <= version:
                raise
            return self._rewind(version)
        stamp = _now()
        changes = [r for i, r in target.items() if current.get(i) != r]
        # ids that did not exist at the target version are deleted (caption None)
        changes += [CaptionRecord(i, current[i].label, None, HAND_EDIT, stamp)  # type: ignore[arg-type]
                    for i in current if i not in target]
        return self.save(changes, author=author, message=f"rollback to version {version}")

    # -- pending work (resumable captioning) --------------------------------------------------------
    def pending_path(self, key: str) -> Path:
        return self.root / "pending" / f"{key}.jsonl"

    def read_pending(self, key: str) -> dict[str, CaptionRecord]:
        """Records appended by an unfinished job; a torn last line (crash mid-write) is dropped."""
        path = self.pending_path(key)
        found: dict[str, CaptionRecord] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = CaptionRecord.from_dict(json.loads(line))
                except (ValueError, KeyError):
                    continue
                found[record.id] = record
        return found

    def append_pending(self, key: str, records: Iterable[CaptionRecord]) -> None:
        records = list(records)
        for record in records:  # refused now, not when the job's captions are saved
            check_caption(record.id, record.caption)
        path = self.pending_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def clear_pending(self, key: str) -> None:
        self.pending_path(key).unlink(missing_ok=True)

    # -- internals ------------------------------------------------------------------------------
    def _write_version(self, head: int, records: list[CaptionRecord], author: str, message: str) -> int:
        """Write ``records`` as version head + 1 (the caller holds the lock)."""
        for record in records:
            check_caption(record.id, record.caption)
        version = head + 1
        payload = {
            "version": version,
            "parent": head,
            "created_at": _now(),
            "author": author or os.environ.get("USER", ""),
            "message": message,
            "records": [r.to_dict() for r in records],
        }
        atomic_write_text(self._version_path(version), json.dumps(payload, ensure_ascii=False) + "\n")
        atomic_write_text(self.root / "HEAD", f"{version}\n")
        if version % SNAPSHOT_EVERY == 0:
            self._write_snapshot(version)
        logger.info("caption store %s: saved version %d (%d records)", self.name, version, len(records))
        return version

    def _current(self, ids: Iterable[str]) -> dict[str, CaptionRecord]:
        """The head state; every id in ``ids`` must have a caption."""
        current = self.records(self.head())
        unknown = [i for i in ids if i not in current]
        if unknown:
            raise KeyError(f"no caption for image ids {unknown[:5]} in store {self.name!r}")
        return current

    def _version_path(self, version: int) -> Path:
        return self.root / "versions" / f"{version:06d}.json"

    def _version_files(self) -> list[int]:
        return sorted(int(p.stem) for p in (self.root / "versions").glob("*.json") if re.fullmatch(r"\d+", p.stem))

    def _read_version(self, version: int) -> dict[str, Any]:
        path = self._version_path(version)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("records"), list) or not all(
                    isinstance(r, dict) and {"id", "label", "caption"} <= r.keys() for r in data["records"]):
                raise ValueError("not a version of captions")
        except (OSError, ValueError) as err:
            back = f"go back to version {version - 1} with `captions rollback {self.name} {version - 1}`"
            raise CaptionStoreDamaged(f"caption store {self.name!r}: version file {path} cannot be read ({err}); "
                                      f"restore it from a backup, or {back}", version) from None
        return data

    def _rewind(self, version: int) -> int:
        """HEAD back to ``version`` of a store damaged after it; later version files and snapshots set aside."""
        newest = max(self._version_files(), default=0)
        if not 0 <= version <= newest:
            raise ValueError(f"caption store {self.name!r} has version files 0..{newest}, not {version}")
        self._replay(version)  # the target itself must be readable
        with self._locked():
            later = [v for v in self._version_files() if v > version]
            aside = self.root / "versions" / f"set-aside-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
            if later:
                aside.mkdir()
                for v in later:
                    self._version_path(v).rename(aside / self._version_path(v).name)
            for snapshot in (self.root / "snapshots").glob("*.jsonl"):
                if int(snapshot.stem) > version:
                    snapshot.unlink()
            atomic_write_text(self.root / "HEAD", f"{version}\n")
            self._cache = None
        moved = f"versions {later[0]}..{later[-1]}" if len(later) > 1 else f"version {later[0]}" if later else ""
        logger.warning("caption store %s: back at version %d%s", self.name, version,
                       f"; {moved} set aside in {aside}" if later else "")
        return version

    def _header(self, version: int) -> VersionInfo:
        data = self._read_version(version)
        return VersionInfo(data["version"], data["parent"], data["created_at"], data.get("author", ""),
                           data.get("message", ""), len(data["records"]))

    def _replay(self, version: int) -> dict[str, CaptionRecord]:
        snapshots = sorted(int(p.stem) for p in (self.root / "snapshots").glob("*.jsonl") if p.stem.isdigit())
        for start in reversed([s for s in snapshots if s <= version]):
            path = self.root / "snapshots" / f"{start:06d}.jsonl"
            try:
                state = {r.id: r for r in (CaptionRecord.from_dict(json.loads(line))
                                           for line in path.read_text(encoding="utf-8").splitlines())}
            except (OSError, ValueError, KeyError) as err:  # a snapshot only speeds loading up: do without it
                logger.warning("caption store %s: snapshot %s cannot be read (%s); replaying versions instead",
                               self.name, path, err)
                continue
            return self._apply(state, start + 1, version)
        return self._apply({}, 1, version)

    def _apply(self, state: dict[str, CaptionRecord], first: int, last: int) -> dict[str, CaptionRecord]:
        for v in range(first, last + 1):
            version = self._read_version(v)
            for data in version["records"]:
                if data["caption"] is None:
                    state.pop(data["id"], None)
                else:
                    state[data["id"]] = CaptionRecord.from_dict(data, author=version.get("author", ""))
        return state

    def _changed_since(self, base: int, ids: set[str]) -> set[str]:
        touched: set[str] = set()
        for v in range(base + 1, self.head() + 1):
            touched |= {r["id"] for r in self._read_version(v)["records"] if r["id"] in ids}
        return touched

    def _write_snapshot(self, version: int) -> None:
        # records(), not _replay(): a store that has the previous state in memory only applies the
        # newest delta (a replay of 50k captions took a second, in the middle of someone's save)
        lines = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
                        for r in self.records(version).values())
        atomic_write_text(self.root / "snapshots" / f"{version:06d}.jsonl", lines)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def list_stores(captions_dir: Path) -> list[str]:
    """Names of the caption stores in a project's captions folder."""
    if not Path(captions_dir).is_dir():
        return []
    return sorted(p.name for p in Path(captions_dir).iterdir() if (p / "HEAD").exists())


def caption_store(project: Project, name: str, create: bool = False) -> CaptionStore:
    """The project's caption store ``name`` (``<project>/captions/<name>``); ``create`` makes a new one."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"invalid caption store name {name!r}: use letters, digits, '.', '_' or '-'")
    return CaptionStore.open(project.captions_dir / name, create=create)


def caption_stores(project: Project) -> list[str]:
    """Names of the project's caption stores."""
    return list_stores(project.captions_dir)
