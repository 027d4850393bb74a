"""The project folder: caption stores, the run registry and run artefacts under one root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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

    def confine(self, path: str | Path) -> Path:
        """Resolve ``path`` relative to the project and refuse anything outside it."""
        resolved = (self.root / path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ValueError(f"path {str(path)!r} is outside the project folder {self.root}")
        return resolved
