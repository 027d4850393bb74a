"""Shared fixtures: small image folders and a project folder in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 8,
                       splits: bool = False) -> Path:
    """PNG files root/<class>/<n>.png (or root/{train,test}/<class>/...), class-coloured."""
    rng = np.random.default_rng(0)
    for split in (("train", "test") if splits else (None,)):
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + 100 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{n:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def project(tmp_path: Path):
    from pipeline.core.project import Project

    return Project.open(tmp_path / "project")
