"""The product's one mixed-precision policy, used by classifiers and generators alike (nanoGPT's
``ctx = nullcontext() if device_type == 'cpu' else torch.autocast(...)``).

``"auto"`` means bfloat16 autocast on CUDA (no loss scaling needed, Hopper and Ampere run it at full
speed) and float32 on a CPU. ``"fp16"`` / ``"bf16"`` / ``"no"`` ask for one explicitly; half precision
on a CPU is only taken when asked for by name.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

PRECISIONS = ("auto", "no", "bf16", "fp16")


def compute_dtype(device: str, requested: str = "auto") -> Any:
    """The dtype autocast computes in on ``device`` for ``requested`` (None: plain float32)."""
    import torch

    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; valid: {', '.join(PRECISIONS)}")
    if requested == "no":
        return None
    if requested == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[requested]


def autocast(device: str, requested: str = "auto") -> AbstractContextManager:
    """``torch.autocast`` in the policy's dtype for ``device`` (a no-op context for float32)."""
    import torch

    dtype = compute_dtype(device, requested)
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def weight_dtype(device: str, requested: str = "auto") -> Any:
    """The dtype frozen weights are kept in (inference, or the frozen base of a LoRA): the compute dtype
    on CUDA, float32 on a CPU."""
    import torch

    dtype = compute_dtype(device, requested)
    return dtype if dtype is not None and str(device).startswith("cuda") else torch.float32
