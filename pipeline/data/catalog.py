"""Datasets registered with a project by name: the user's own data, wherever it lives.

The studio never opens a path typed into a page outside the project folder (``Project.confine``); a
dataset elsewhere on disk is registered once instead — ``python -m pipeline datasets add NAME SPEC``
or the studio's "Register a dataset" form, both after a confirmation that names the folder — and is
picked by name afterwards (``--dataset NAME``, the studio's dataset list). The catalog is
``<project>/datasets.json``: ``{name: {source, path, image_column, label_column, train_split,
test_split, added}}``, written atomically; the split settings (member fraction, limit, seed) stay per
run.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.common import read_json, write_json
from .datasets import SOURCES, DatasetConfig

CATALOG_FILE = "datasets.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_STORED = ("source", "path", "image_column", "label_column", "train_split", "test_split")


def catalog_path(root: Path) -> Path:
    return Path(root) / CATALOG_FILE


def registered(root: Path) -> dict[str, DatasetConfig]:
    """The project's registered datasets by name (empty when none); a damaged catalog is a one-line error."""
    path = catalog_path(root)
    if not path.is_file():
        return {}
    try:
        entries = read_json(path)
        return {name: DatasetConfig(**{k: entry.get(k) for k in _STORED if entry.get(k) is not None})
                for name, entry in sorted(entries.items())}
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a dataset catalog ({err}); fix or delete it") from err


def lookup(root: Path | None, name: str) -> DatasetConfig | None:
    """The registered dataset called ``name`` in the project at ``root`` (None: not registered)."""
    return registered(root).get(name) if root is not None else None


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"dataset name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    if name in SOURCES:
        raise ValueError(f"dataset name {name!r} is a dataset source; pick another name")
    return name


def resolved(config: DatasetConfig) -> DatasetConfig:
    """``config`` with its path made absolute (a hub id of the ``hf`` source stays as typed); a path that
    does not exist is refused."""
    if config.path is None:
        if config.source != "digits":
            raise ValueError(f"the {config.source} source needs a path: {config.source}:PATH")
        return config
    path = Path(config.path).expanduser()
    if path.exists():
        return replace(config, path=str(path.resolve()))
    if config.source == "hf" and not config.path.startswith((".", "/", "~")):
        return config  # a hub id
    raise ValueError(f"{config.path} does not exist")


def register(root: Path, name: str, config: DatasetConfig, *, replace_existing: bool = False) -> DatasetConfig:
    """Add ``config`` (its path made absolute) to the catalog as ``name``; returns what was stored."""
    check_name(name)
    config = resolved(config)
    entries = _entries(root)
    if name in entries and not replace_existing:
        raise ValueError(f"a dataset called {name!r} is already registered ({_where(entries[name])}); "
                         "remove it first or pick another name")
    entries[name] = {**{k: getattr(config, k) for k in _STORED}, "added": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(catalog_path(root), entries)
    return config


def unregister(root: Path, name: str) -> None:
    """Forget ``name`` (the data itself is not touched)."""
    entries = _entries(root)
    if name not in entries:
        raise ValueError(f"no dataset called {name!r} is registered; registered: {', '.join(entries) or 'none'}")
    del entries[name]
    write_json(catalog_path(root), entries)


def name_of(root: Path | None, config: DatasetConfig) -> str | None:
    """The registered name of ``config``'s data (its split settings aside), if it has one."""
    if root is None or config.path is None:
        return None
    return next((name for name, known in registered(root).items()
                 if all(getattr(known, k) == getattr(config, k) for k in _STORED)), None)


def suggested_name(root: Path, folder: str) -> str:
    """A free catalog name from a folder's name ("chest-xray", then "chest-xray-2", ...)."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder).strip("-._")[:60] or "dataset"
    base = base if base not in SOURCES else f"{base}-data"
    taken = registered(root)
    return next(name for n in range(1, len(taken) + 2) if (name := base if n == 1 else f"{base}-{n}") not in taken)


def _entries(root: Path) -> dict[str, dict[str, Any]]:
    registered(root)  # a damaged catalog is refused before it is rewritten
    path = catalog_path(root)
    return read_json(path) if path.is_file() else {}


def _where(entry: dict[str, Any]) -> str:
    return f"{entry.get('source')}:{entry.get('path')}"
