"""DP-SGD for a generator's training step (Abadi et al. 2016; for diffusion models Dockhorn et al. 2023, DPDM).

A diffusion loss is an expectation over noise draws and timesteps, so one draw per example makes the
clipped per-example gradient very noisy. DPDM's *noise multiplicity* (sec. 4) draws K noise / timestep
pairs per example and averages their losses *before* the per-example gradient is clipped: the
sensitivity stays one example's, the variance drops by K, the privacy cost is unchanged.

The per-example gradients come from ``torch.func`` (``vmap`` over examples of ``grad`` of a
``functional_call``), which handles any module a forward pass handles, the diffusers UNets included —
what Opacus' ``GradSampleModule(grad_sample_mode="functorch")`` does per layer, done once for the
whole loss here because each example's loss spans K forward rows. Clipping, Gaussian noise and
averaging are Opacus' ``DPOptimizer``; the noise multiplier comes from Opacus' accountant
(:func:`pipeline.privacy.accounting.calibrate`) for the target (ε, δ) over the planned steps. Batches
are Poisson-sampled (each example joins a step with probability q = batch / N, as the accountant
assumes) and processed in chunks of ``physical_batch`` examples whose clipped gradients Opacus sums
before one noisy step (virtual steps: a large logical batch in bounded memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..privacy.accounting import DPPart, calibrate, check_accountant, default_delta, spent

if TYPE_CHECKING:  # torch loads lazily: the scratch backend's module stays cheap to import
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPSettings:
    """A generator's DP-SGD budget and mechanism."""

    epsilon: float  # target ε over the planned steps
    delta: float | None = None  # target δ (None: 1 / (10 N), below 1/N)
    max_grad_norm: float = 1.0  # per-example clipping bound C
    noise_multiplicity: int = 4  # K noise / timestep draws per example, averaged before clipping (DPDM)
    # RDP (Mironov 2017, as in DPDM): calibrating takes seconds; PRV (Gopi et al. 2021) is tighter but ~5x slower
    accountant: str = "rdp"  # Opacus accountant: rdp | prv | gdp
    physical_batch: int = 64  # examples per forward / backward chunk (memory), not the logical batch

    def __post_init__(self) -> None:
        check_accountant(self.accountant)
        if not self.epsilon > 0 or not self.max_grad_norm > 0:
            raise ValueError("dp epsilon and max_grad_norm must be positive")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"dp delta must be in (0, 1), got {self.delta}")
        if self.noise_multiplicity < 1 or self.physical_batch < 1:
            raise ValueError("noise_multiplicity and physical_batch must be at least 1")


class DPStep:
    """Poisson sampling, per-example gradients, Opacus clipping + noise, and the accounting of one
    trained part. ``loss_fn(params, *example)`` is one example's loss (its K draws averaged)."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: DPSettings, n: int,
                 batch_size: int, planned_steps: int, seed: int, part: str = "generator") -> None:
        import torch
        from opacus.optimizers import DPOptimizer

        self.module, self.settings, self.n, self.part = module, settings, n, part
        self.delta = settings.delta if settings.delta is not None else default_delta(n)
        self.sample_rate = min(1.0, batch_size / n)
        self.expected_batch = self.sample_rate * n
        self.planned_steps = planned_steps
        # 1. the noise for the target (ε, δ) over every planned step (refuses an impossible budget)
        self.noise_multiplier = calibrate(settings.epsilon, self.delta, self.sample_rate, planned_steps,
                                          settings.accountant)
        # 2. Opacus' optimiser: clip each example's gradient to C, sum, add N(0, σ²C²), divide by E[batch]
        self.names = [name for name, p in module.named_parameters() if p.requires_grad]
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=settings.max_grad_norm, expected_batch_size=max(1, round(self.expected_batch)),
                                     loss_reduction="mean", generator=torch.Generator().manual_seed(seed + 1))
        self.steps_taken = 0

    def sample(self, rng: torch.Generator) -> torch.Tensor:
        """Poisson sampling: the indices of the examples in this step's batch (possibly none)."""
        import torch

        return torch.nonzero(torch.rand(self.n, generator=rng) < self.sample_rate).flatten()

    def step(self, loss_fn: Callable[..., torch.Tensor], example_data: Sequence[torch.Tensor]) -> float:
        """One noisy optimiser step on the sampled examples (leading dim of every tensor in ``example_data``);
        returns their mean loss (NaN for an empty batch, which still takes its noisy step)."""
        import torch
        from torch.func import functional_call, grad_and_value, vmap

        params = {name: p for name, p in self.module.named_parameters() if p.requires_grad}
        frozen = {name: p.detach() for name, p in self.module.named_parameters() if not p.requires_grad}
        buffers = dict(self.module.named_buffers())
        detached = {name: p.detach() for name, p in params.items()}

        def one(trainable: dict[str, torch.Tensor], *example: torch.Tensor) -> torch.Tensor:
            return loss_fn(lambda *a, **k: functional_call(self.module, ({**trainable, **frozen}, buffers), a, k),
                           *example)

        per_example = vmap(grad_and_value(one), in_dims=(None, *([0] * len(example_data))), randomness="different")
        b = len(example_data[0])
        chunks = [slice(i, i + self.settings.physical_batch) for i in range(0, b, self.settings.physical_batch)]
        losses = []
        for k, chunk in enumerate(chunks or [None]):
            if chunk is None:  # an empty Poisson batch: a zero gradient, the noise is still added
                for p in params.values():
                    p.grad_sample = torch.zeros((1, *p.shape), device=p.device, dtype=p.dtype)
            else:
                grads, values = per_example(detached, *(t[chunk] for t in example_data))
                losses.append(values.detach())
                for name, p in params.items():
                    p.grad_sample = grads[name]
            if k < len(chunks) - 1:
                self.optimizer.signal_skip_step(do_skip=True)  # clip and accumulate only
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.steps_taken += 1
        return float(torch.cat(losses).mean()) if losses else float("nan")

    def record(self, steps: int | None = None) -> DPPart:
        """What this part spent after ``steps`` noisy steps (default: those this object took)."""
        steps = self.steps_taken if steps is None else steps
        epsilon = spent([(self.noise_multiplier, self.sample_rate, steps)], self.delta, self.settings.accountant)
        return DPPart(self.part, epsilon, self.delta, self.settings.accountant, self.noise_multiplier,
                      self.sample_rate, steps, self.settings.max_grad_norm, self.settings.epsilon)

    def describe(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "delta": self.delta,
                "planned_steps": self.planned_steps, "noise_multiplicity": self.settings.noise_multiplicity}
