"""Classifier training shared by the teacher, the student and sequential shadow models.

AdamW with a per-step cosine schedule, label smoothing, TCKR's augmentations (random crop, flip,
AugMix; MixUp for hard labels), AMP on CUDA, early stopping on a validation set, a checkpoint after
every epoch and resume from it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..core.common import Progress, ProgressFn, check_loss, no_progress, resolve_device
from .losses import classification_loss, kd_loss

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("crop", "flip", "augmix", "mixup")


@dataclass(frozen=True)
class TrainConfig:
    """One classifier training recipe (teacher, student and shadows share it)."""

    model: str = "tiny-cnn"  # classifier name: tiny-cnn | small-cnn | any timm model
    pretrained: bool = False  # timm pretrained weights (needs the Hub or a local cache)
    image_size: int | None = None  # resize inputs to this side (None: keep the dataset's size)
    epochs: int = 30  # passes over the training data
    batch_size: int = 64  # images per step
    lr: float = 3e-3  # peak AdamW learning rate (cosine-annealed per step)
    weight_decay: float = 5e-4  # AdamW weight decay
    label_smoothing: float = 0.0  # for hard labels
    augment: tuple[str, ...] = ("crop",)  # of crop, flip, augmix, mixup (flip is wrong for digits)
    crop_padding: int = 1  # random crop: pad this many pixels, crop back (random shift)
    patience: int | None = None  # early stopping: epochs without validation gain (None: off)
    amp: bool = True  # bfloat16 autocast on CUDA
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # weights, data order and augmentation

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", tuple(self.augment))
        unknown = set(self.augment) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}; valid: {', '.join(AUGMENTATIONS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1 or self.crop_padding < 0:
            raise ValueError("weight_decay and crop_padding must be >= 0 and label_smoothing in [0, 1)")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be at least 1 or null, got {self.image_size}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0 or null, got {self.patience}")


@dataclass
class TensorData:
    """Images as float tensors in [0, 1] (N, C, H, W), hard labels (N,), optional teacher logits (N, K)."""

    x: torch.Tensor
    y: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    ids: list[str] | None = None  # image ids of the rows, for real images

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0


def images_to_tensor(images: list[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images -> float tensor (N, 3, H, W) in [0, 1]; resized to ``size`` if given."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def augment_batch(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random shift (pad + crop), horizontal flip and AugMix on a batch, per image."""
    if "augmix" in config.augment:
        from torchvision.transforms import v2

        augmix = v2.AugMix()
        x = torch.stack([augmix((img * 255).to(torch.uint8)).float() / 255 for img in x])
    if "crop" in config.augment and config.crop_padding > 0:
        p = config.crop_padding
        n, _, h, w = x.shape
        padded = F.pad(x, (p, p, p, p))
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
        cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    if "flip" in config.augment:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str = "auto") -> torch.Tensor:
    """Logits (N, K) on the CPU for images (N, C, H, W)."""
    device = resolve_device(device)
    model = model.to(device).eval()
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, data: TensorData, num_classes: int, device: str = "auto") -> dict[str, Any]:
    """Accuracy, per-class accuracy and mean cross-entropy of ``model`` on ``data``."""
    logits = predict_logits(model, data.x, device=device)
    pred = logits.argmax(1)
    correct = (pred == data.y).float()
    per_class = [float(correct[data.y == k].mean()) if (data.y == k).any() else float("nan")
                 for k in range(num_classes)]
    return {"accuracy": float(correct.mean()), "per_class_accuracy": per_class,
            "loss": float(F.cross_entropy(logits, data.y))}


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine annealing of the learning rate from its peak at step 0 to 0 at ``total_steps``
    (the schedule every classifier of the product trains with)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))


def fit_classifier(
    model: nn.Module,
    data_for_epoch: Callable[[int], TensorData],
    config: TrainConfig,
    val: TensorData | None = None,
    checkpoint: Path | None = None,
    progress: ProgressFn = no_progress,
    stage: str = "train",
    kd_temperature: float = 4.0,
    kd_alpha: float = 1.0,
    teacher: nn.Module | None = None,
    teacher_mixup: bool = False,
) -> TrainResult:
    """Train ``model``; epoch e uses ``data_for_epoch(e)`` (lets the student switch synthetic rounds).

    Data with ``teacher_logits`` is trained with :func:`~pipeline.classifiers.losses.kd_loss`, otherwise with
    cross-entropy (plus MixUp if asked). With a ``teacher`` (eval mode) the KD targets come from it on
    each batch as the student sees it (augmented, and with ``teacher_mixup`` mixed pairwise with a
    uniform weight): the teacher labels every image the student trains on, not only the stored ones.
    ``checkpoint`` is a file rewritten after every epoch; if it exists, training resumes from it.
    """
    # 1. set up model, optimiser and schedule
    device = resolve_device(config.device)
    gen = torch.Generator().manual_seed(config.seed)
    model = model.to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    first = data_for_epoch(0)
    steps_per_epoch = max(1, math.ceil(len(first) / config.batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * steps_per_epoch
    scheduler = cosine_schedule(optimizer, total)
    result = TrainResult(model)
    best_score, best_state, start_epoch, stale, resumed_seconds = -1.0, None, 0, 0, 0.0

    # 2. resume from the checkpoint if there is one
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start_epoch, result.history = state["epoch"] + 1, state["history"]
        best_score, best_state, stale = state["best_score"], state["best_state"], state["stale"]
        result.best_epoch = state["best_epoch"]
        if "torch_rng" in state:  # dropout draws from the global stream: resume it where it was
            torch.set_rng_state(state["torch_rng"])
        resumed_seconds = state.get("seconds", 0.0)
        if config.patience is not None and stale > config.patience:
            start_epoch = config.epochs  # it had stopped early: nothing left to train
        logger.info("resumed %s from epoch %d", stage, start_epoch)

    # 3. epochs
    started = time.monotonic()
    use_amp = config.amp and device.startswith("cuda")
    first_loss: float | None = None
    for epoch in range(start_epoch, config.epochs):
        data = data_for_epoch(epoch)
        model.train()
        order = torch.randperm(len(data), generator=gen)
        sums: dict[str, float] = {}
        for step, start in enumerate(range(0, len(data), config.batch_size)):
            idx = order[start:start + config.batch_size]
            x = augment_batch(data.x[idx], config, gen).to(device)
            y = data.y[idx].to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                if teacher is not None:
                    if teacher_mixup:
                        lam = torch.rand((len(x), 1, 1, 1), generator=gen).to(device)
                        x = lam * x + (1 - lam) * x[torch.randperm(len(x), generator=gen).to(device)]
                    with torch.no_grad():
                        target = teacher(x).float()
                    parts = kd_loss(model(x).float(), target, target.argmax(1), kd_temperature, kd_alpha,
                                    config.label_smoothing)
                elif data.teacher_logits is not None:
                    parts = kd_loss(model(x).float(), data.teacher_logits[idx].to(device), y,
                                    kd_temperature, kd_alpha, config.label_smoothing)
                elif "mixup" in config.augment:
                    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
                                .beta(0.2, 0.2))
                    perm = torch.randperm(len(x), generator=gen).to(device)
                    parts = classification_loss(model(lam * x + (1 - lam) * x[perm]).float(), y,
                                                config.label_smoothing, y[perm], lam)
                else:
                    parts = classification_loss(model(x).float(), y, config.label_smoothing)
            value = float(parts["loss"].detach())
            check_loss(value, first_loss, stage, f"epoch {epoch + 1}, step {step + 1}", config.lr)
            first_loss = value if first_loss is None else first_loss
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            scheduler.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            progress(Progress(stage, epoch * steps_per_epoch + step + 1, total,
                              {"epoch": epoch + 1, "loss": float(parts["loss"].detach())}))
        row = {"epoch": epoch + 1, **{k: v / (step + 1) for k, v in sums.items()}}
        # 4. validate, keep the best weights, stop early
        if val is not None and len(val):
            metrics = evaluate(model, val, int(val.y.max()) + 1, device=device)
            row["val_accuracy"], row["val_loss"] = metrics["accuracy"], metrics["loss"]
            score = metrics["accuracy"] - 1e-6 * metrics["loss"]
            if score > best_score:
                best_score, stale, result.best_epoch = score, 0, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        result.history.append(row)
        progress(Progress(stage, (epoch + 1) * steps_per_epoch, total,
                          {"epoch_end": 1, **{k: round(v, 4) for k, v in row.items()}}))
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, gen, epoch, result, best_score,
                             best_state, stale, resumed_seconds + time.monotonic() - started)
        if config.patience is not None and stale > config.patience:
            logger.info("%s: early stop at epoch %d (best %d)", stage, epoch + 1, result.best_epoch)
            break
    # 5. best weights back
    if best_state is not None and config.patience is not None:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history)
    result.epochs_run = len(result.history)
    result.seconds = resumed_seconds + time.monotonic() - started
    return result


def _save_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, gen: torch.Generator,
                     epoch: int, result: TrainResult, best_score: float, best_state: Any, stale: int,
                     seconds: float) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": gen.get_state(), "epoch": epoch,
                "history": result.history, "best_score": best_score, "best_state": best_state,
                "stale": stale, "best_epoch": result.best_epoch, "torch_rng": torch.get_rng_state(),
                "seconds": seconds}, tmp)
    with open(tmp, "rb") as f:  # on disk before the rename: a crash leaves the old or the new checkpoint
        os.fsync(f.fileno())
    tmp.replace(path)
