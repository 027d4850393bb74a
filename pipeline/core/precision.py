"""The product's one mixed-precision policy, used by classifiers and generators alike (nanoGPT's
``ctx = nullcontext() if device_type == 'cpu' else torch.autocast(...)``).

``"auto"`` means bfloat16 autocast on CUDA (no loss scaling needed, Hopper and Ampere run it at full
speed) and on a CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX: oneDNN runs convolutions and
matrix products there about 1.6x faster than in float32, measured with ``benchmarks/throughput.py``);
float32 on any other CPU, where bfloat16 is emulated and slower. ``"fp16"`` / ``"bf16"`` / ``"no"`` ask
for one explicitly.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import lru_cache
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
        return torch.bfloat16 if str(device).startswith("cuda") or native_cpu_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[requested]


@lru_cache(maxsize=1)
def native_cpu_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX tiles)."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


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
