"""What a classifier learns from: the plug-ins of the one training loop (:func:`~.train.fit`).

An objective turns one batch into a loss; everything else (batching, augmentation, schedule,
precision, checkpoints, early stopping, progress) is the loop's. The objectives here:

- :class:`HardLabels`: cross-entropy with the labels (label smoothing, MixUp); also for a stack of
  models trained at once (LiRA shadows), where the loss is the sum of each model's mean;
- :class:`SoftLabels`: knowledge distillation from teacher logits stored with the data (GKD's student);
- :class:`OnlineTeacher`: distillation from a teacher that labels every batch as the student sees it
  (augmented, optionally mixed pairwise): data-free students.

A method with a loss of its own adds one class with the same two methods (``methods/bss.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensors import TensorData
from .losses import classification_loss, kd_loss


@dataclass
class Batch:
    """One training step's inputs, on the device: ``x`` (B, C, H, W) augmented (or (M, B, C, H, W) for a
    stack of M models), ``y`` the labels (B,) / (M, B), ``rows`` their rows in ``data`` (the epoch's
    data: stored soft labels live there), ``gen`` the generator of the (first) model's draws."""

    x: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor
    data: TensorData
    gen: torch.Generator


class Objective(Protocol):
    """The loss of one batch; ``start_epoch`` lets a schedule of its own follow the epochs."""

    def start_epoch(self, epoch: int, epochs: int) -> None: ...

    def __call__(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]: ...


class _Plain:
    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Nothing changes between epochs."""


@dataclass
class HardLabels(_Plain):
    """Cross-entropy with the labels; with ``mixup``, MixUp (Zhang et al. 2018, beta(0.2, 0.2))."""

    label_smoothing: float = 0.0
    mixup: bool = False

    def __call__(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x, y = batch.x, batch.y
        if self.mixup:
            if x.ndim == 5:
                raise ValueError("MixUp is not available for stacked models")
            lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=batch.gen)))
                        .beta(0.2, 0.2))
            perm = torch.randperm(len(x), generator=batch.gen).to(x.device)
            return classification_loss(model(lam * x + (1 - lam) * x[perm]).float(), y, self.label_smoothing,
                                       y[perm], lam)
        if x.ndim == 5:  # a stack of models: each model's mean, summed (independent gradients)
            logits = model(x).float()  # (M, B, K)
            per_example = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none",
                                          label_smoothing=self.label_smoothing).view(y.shape)
            loss = per_example.mean(1).sum()
            return {"loss": loss, "ce": loss}
        return classification_loss(model(x).float(), y, self.label_smoothing)


@dataclass
class SoftLabels(_Plain):
    """KD (Hinton et al. 2015) from the teacher logits stored in the data (``data.teacher_logits``)."""

    temperature: float = 4.0
    alpha: float = 1.0  # weight of KD; 1 - alpha weighs cross-entropy with the hard labels
    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.data.teacher_logits is None:
            raise ValueError("SoftLabels needs data with teacher_logits")
        target = batch.data.teacher_logits[batch.rows.cpu()].to(batch.x.device)
        return kd_loss(model(batch.x).float(), target, batch.y, self.temperature, self.alpha, self.label_smoothing)


@dataclass
class OnlineTeacher(_Plain):
    """KD from a teacher that labels each batch as the student sees it (augmented, and with ``mixup``
    mixed pairwise with a uniform weight): the student learns the teacher's function around the
    images, not only at them."""

    teacher: nn.Module
    temperature: float = 4.0
    alpha: float = 1.0
    label_smoothing: float = 0.0
    mixup: bool = False

    def __call__(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch.x
        self.teacher.to(x.device).eval()
        if self.mixup:
            lam = torch.rand((len(x), 1, 1, 1), generator=batch.gen).to(x.device)
            x = lam * x + (1 - lam) * x[torch.randperm(len(x), generator=batch.gen).to(x.device)]
        with torch.no_grad():
            target = self.teacher(x).float()
        return kd_loss(model(x).float(), target, target.argmax(1), self.temperature, self.alpha,
                       self.label_smoothing)
