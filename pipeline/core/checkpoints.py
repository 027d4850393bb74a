"""The product's one checkpoint format: ``torch.save`` files written atomically (temporary file, fsync,
rename: a crash leaves the old file or the new one, never half of one) and read back with
``weights_only=True`` (tensors, numbers, strings, lists and dicts only: a file of ours never needs
pickled code, and loading one cannot run any)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def save(path: Path, state: Any) -> None:
    """Write ``state`` (a state dict, or a dict of them with plain values) to ``path`` atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:  # on disk before the rename
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # half a file (a full disk, an interrupt) would hold its space
        raise


def load(path: Path, device: Any = "cpu") -> Any:
    """Read a file written by :func:`save` (or a plain ``torch.save`` of tensors) onto ``device``."""
    import torch

    return torch.load(Path(path), map_location=device, weights_only=True)
