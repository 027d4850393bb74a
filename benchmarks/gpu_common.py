"""What the GPU benchmarks share (``benchmarks/gpu.sh`` runs them): the device rule and the results table.

The device rule: a GPU benchmark runs on CUDA unless it is asked for the CPU (``--device cpu``, or
``--tiny``, which is a CPU smoke test). Without a visible GPU it stops at once instead of falling back
to the CPU, where a full-size Stable Diffusion 2 would eat the GPU time it was given.

The results table: every benchmark appends its rows to one Markdown file (``--markdown FILE``), which
``gpu.sh`` starts with :data:`HEADER`, so that one table holds every figure of a GPU session.
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADER = "| part | row | value | unit | peak GiB | note |\n| --- | --- | --- | --- | --- | --- |\n"


def device_or_exit(requested: str | None, tiny: bool) -> str:
    """The device to run on: ``requested``, else ``cpu`` for a tiny smoke test and ``cuda`` otherwise.
    A CUDA device that is not visible ends the program with a one-line message (exit status 2)."""
    import torch

    device = requested or ("cpu" if tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"{Path(sys.argv[0]).name}: CUDA is not visible (torch {torch.__version__}, built for CUDA "
                 f"{torch.version.cuda}); a GPU benchmark does not fall back to the CPU: pass --device cpu "
                 "(with --tiny for the smoke-test sizes) to run here")
    return device


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: str) -> float | None:
    """Peak GPU memory allocated by tensors since the last :func:`reset_peak` (None on a CPU)."""
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None


def add_row(path: str | Path | None, part: str, row: str, value: float | None, unit: str,
            peak: float | None = None, note: str = "") -> None:
    """Append one row to the Markdown results table at ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    shown = "-" if value is None else f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    cells = [part, row, shown, unit, "-" if peak is None else f"{peak:.2f}", note.replace("|", "/")]
    with open(path, "a", encoding="utf-8") as out:
        out.write("| " + " | ".join(cells) + " |\n")
