"""Which rows of the data each optimiser step trains on (the loop's sampler).

Every model has its own generator seeded with its seed: every epoch it draws a fresh permutation of
its rows (of its subset when masks are given), which is cut into batches of ``batch_size``; the same
generator then draws the batch's augmentations. Models of a stacked run with subsets of different
sizes all take the same number of steps: a smaller subset is topped up with the head of a further
permutation of itself to the largest subset's size (a few of its examples twice in that epoch, never
one outside it). So model i of a stacked run sees exactly what it would see trained alone with the
same seed and ``epoch_size`` (tested in ``tests/test_batched.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


class Sampler:
    """Batches of row indices: (B,) for one model, (M, B) for a stack of M models."""

    def __init__(self, seeds: Sequence[int], batch_size: int, masks: torch.Tensor | None = None,
                 epoch_size: int | None = None, stacked: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if masks is not None:
            if masks.ndim != 2 or masks.dtype != torch.bool or len(masks) != len(seeds):
                raise ValueError(f"masks must be a bool tensor (M={len(seeds)}, N); got {tuple(masks.shape)} "
                                 f"{masks.dtype}")
            empty = torch.nonzero(masks.sum(1) == 0).flatten().tolist()
            if empty:
                raise ValueError(f"model(s) {empty} have no training examples in masks")
        if not stacked and len(seeds) != 1:
            raise ValueError("one seed per model: several seeds need stacked=True")
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.batch_size, self.stacked, self.epoch_size = batch_size, stacked, epoch_size
        self.subsets = None if masks is None else [torch.nonzero(m).flatten().cpu() for m in masks]

    @property
    def n_models(self) -> int:
        return len(self.gens)

    def rows_per_epoch(self, n_rows: int) -> int:
        largest = n_rows if self.subsets is None else max(s.numel() for s in self.subsets)
        if self.epoch_size is not None and self.epoch_size < largest:
            raise ValueError(f"epoch_size ({self.epoch_size}) must be >= the largest subset ({largest})")
        return self.epoch_size or largest

    def steps(self, n_rows: int) -> int:
        return max(1, math.ceil(self.rows_per_epoch(n_rows) / self.batch_size))

    def epoch(self, n_rows: int) -> Iterator[torch.Tensor]:
        """This epoch's batches (its permutations are drawn now, before the first batch)."""
        n_epoch = self.rows_per_epoch(n_rows)
        orders = []
        for k, gen in enumerate(self.gens):
            rows = torch.arange(n_rows) if self.subsets is None else self.subsets[k]
            perms = [rows[torch.randperm(rows.numel(), generator=gen)]
                     for _ in range(math.ceil(n_epoch / rows.numel()))]
            orders.append(torch.cat(perms)[:n_epoch])
        order = torch.stack(orders)
        for start in range(0, n_epoch, self.batch_size):
            batch = order[:, start:start + self.batch_size]
            yield batch if self.stacked else batch[0]

    def state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.gens]

    def load_state(self, states: Sequence[torch.Tensor]) -> None:
        for gen, state in zip(self.gens, states, strict=True):
            gen.set_state(state)
