"""Small helpers every stage shares: progress events, atomic files, config records, seeding."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jsonable import to_jsonable  # noqa: F401  (re-exported: schema.py needs it without this module)


@dataclass(frozen=True)
class Progress:
    """One progress report from a long-running step."""

    stage: str  # e.g. "caption", "finetune", "generate"
    done: int  # units finished so far
    total: int | None  # units in all, when known
    info: dict[str, Any] = field(default_factory=dict)  # extra figures (loss, images/s, ...)


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default progress callback: reports nothing."""


def resume_command(kind: str, run_id: str) -> str | None:
    """The command that continues an interrupted run of ``kind`` (None: such a run is started again)."""
    return {"experiment": f"python -m pipeline run --resume {run_id}",
            "finetune": f"python -m pipeline finetune --resume {run_id}"}.get(kind)


def safe_filename(name: str, empty: str = "_") -> str:
    """A file-name-safe form of a label: letters, digits, ``-_.`` kept, anything else ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or empty


def config_hash(obj: Any, length: int = 12) -> str:
    """A stable short hash of a config (or any JSON-able object)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader never sees a half-written file, and a crash leaves either the old or the new file.
    The file keeps its mode when it exists, else gets the one ``open(path, "w")`` would give
    (``mkstemp`` makes 0600 files, which other users and group-shared projects could not read).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it.

    ``os.umask`` can only read the mask by setting it, and another thread creating a file between the
    set and the restore would get the wrong mode; Linux shows the mask in /proc/self/status instead.
    Elsewhere the set-and-restore is the only way (a brief race, on platforms this rarely runs on).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` (dataclasses allowed) as indented JSON."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (when installed) from one number."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is a dependency; this only guards odd installs
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """'auto' -> the precision policy's weight dtype (bfloat16 on CUDA, float32 elsewhere: see
    :mod:`pipeline.core.precision`); or a torch dtype by name."""
    import torch

    from .precision import weight_dtype

    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype == "auto":
        return weight_dtype(device)
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(names)}")
    return names[dtype]


def from_dict(cls: type, data: Any, source: str = "") -> Any:
    """A config dataclass from plain JSON data (a file, a run's saved config), checked against its schema
    (:func:`pipeline.core.schema.parse`): wrong types, NaN, unknown fields and broken rules are a
    one-line :class:`~pipeline.core.schema.ConfigError`; ``source`` names where the data came from."""
    from .schema import parse

    return parse(cls, data, source=source)


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite or exploding loss; the message names stage, epoch and cause."""


def check_loss(loss: float, first: float | None, stage: str, where: str, lr: float, factor: float = 50.0) -> None:
    """Raise :class:`TrainingDiverged` when ``loss`` is not finite or has grown ``factor`` x past the
    first step's loss: stop at once, instead of reporting a diverged model as a result."""
    import math

    # the floor of 1 keeps a model that starts almost trained (tiny first loss) from tripping it
    exploded = first is not None and math.isfinite(first) and loss > factor * max(first, 1.0)
    if math.isfinite(loss) and not exploded:
        return
    what = f"loss {loss:.4g}" + (f", {loss / max(first, 1.0):.0f}x the first step's {first:.4g}" if exploded else "")
    raise TrainingDiverged(
        f"{stage} diverged at {where} ({what}); the learning rate ({lr:g}) is likely too high: lower it "
        "(e.g. 10x), or check the inputs for NaN / Inf")
