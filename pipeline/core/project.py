"""The project folder: caption stores, the run registry and run artefacts under one root."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..captions.store import CaptionStore, list_stores
from .runs import RunRegistry

DEFAULT_PROJECT_ENV = "TCKR_PROJECT"


def default_project_dir() -> Path:
    """``$TCKR_PROJECT`` if set, else ``./workspace``."""
    return Path(os.environ.get(DEFAULT_PROJECT_ENV, "workspace"))


@dataclass(frozen=True)
class Project:
    """Paths of one project folder::

        <root>/registry.sqlite   run registry
        <root>/runs/<id>/        artefacts of each run
        <root>/captions/<name>/  versioned caption stores
    """

    root: Path

    @classmethod
    def open(cls, root: Path | str | None = None) -> Project:
        path = Path(root) if root is not None else default_project_dir()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path.resolve())

    @property
    def captions_dir(self) -> Path:
        return self.root / "captions"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def registry(self) -> RunRegistry:
        return RunRegistry(self.root)

    def caption_store(self, name: str, create: bool = False) -> CaptionStore:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"invalid caption store name {name!r}: use letters, digits, '.', '_' or '-'")
        return CaptionStore.open(self.captions_dir / name, create=create)

    def caption_stores(self) -> list[str]:
        return list_stores(self.captions_dir)

    def confine(self, path: str | Path) -> Path:
        """Resolve ``path`` relative to the project and refuse anything outside it."""
        resolved = (self.root / path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ValueError(f"path {str(path)!r} is outside the project folder {self.root}")
        return resolved
