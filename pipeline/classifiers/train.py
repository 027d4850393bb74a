"""The one classifier training loop: teacher, students of every method, shadows (one at a time or
vmap-stacked), CAS and DP-SGD all train through :func:`fit`.

The loop owns batching (:class:`~.batches.Sampler`), augmentation (:class:`~.augment.Augment`), the
AdamW optimiser with a per-step cosine schedule, the precision policy (:mod:`pipeline.core.precision`),
divergence checks, validation with early stopping, a checkpoint after every epoch (resumed from when
it exists) and progress events. What differs between trainings is a plug-in:

- the *objective* (:mod:`.objectives`): hard labels, stored soft labels, an online teacher, or a
  method's own loss (boundary samples);
- the *model*: one ``nn.Module`` or a :class:`~.stacked.StackedModels` with a stacked sampler;
- a *privacy wrapper* (``methods/dp.py``): Opacus' DP-SGD wraps the model, optimiser and sampler.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..core import checkpoints
from ..core.common import Progress, ProgressFn, check_loss, no_progress, resolve_device
from ..core.precision import autocast
from ..core.schema import schema
from ..data.tensors import TensorData, images_to_tensor  # noqa: F401  (images_to_tensor: re-exported)
from .augment import AUGMENTATIONS, Augment
from .batches import Sampler
from .objectives import Batch, Objective

logger = logging.getLogger(__name__)


@schema
@dataclass(frozen=True)
class TrainConfig:
    """One classifier training recipe (teacher, student and shadows share it)."""

    model: str = "tiny-cnn"  # classifier name: tiny-cnn | small-cnn | small-resnet | any timm model
    pretrained: bool = False  # timm pretrained weights (needs the Hub or a local cache)
    image_size: int | None = None  # resize inputs to this side (None: keep the dataset's size)
    epochs: int = 30  # passes over the training data (a set of middling size)
    min_steps: int = 0  # floor: at least this many optimiser steps (a small set gets more passes)
    max_steps: int | None = None  # ceiling: at most this many optimiser steps (a large set gets fewer passes)
    batch_size: int = 64  # images per step
    lr: float = 3e-3  # peak AdamW learning rate (cosine-annealed per step)
    weight_decay: float = 5e-4  # AdamW weight decay
    label_smoothing: float = 0.0  # for hard labels
    augment: tuple[str, ...] = ("crop",)  # of crop, flip, augmix, mixup (flip is wrong for digits)
    crop_padding: int = 1  # random crop: pad this many pixels, crop back (random shift)
    patience: int | None = None  # early stopping: epochs without validation gain, once past min_steps (None: off)
    patience_share: float | None = None  # or: without gain for this share of the planned epochs (sized to the data)
    amp: bool = True  # mixed precision by the product's policy (bfloat16 autocast on CUDA)
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
        if self.min_steps < 0 or (self.max_steps is not None and self.max_steps < max(1, self.min_steps)):
            raise ValueError(f"need 0 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1 or self.crop_padding < 0:
            raise ValueError("weight_decay and crop_padding must be >= 0 and label_smoothing in [0, 1)")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be at least 1 or null, got {self.image_size}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0 or null, got {self.patience}")
        if self.patience_share is not None and not 0 < self.patience_share <= 1:
            raise ValueError(f"patience_share must be in (0, 1] or null, got {self.patience_share}")
        if self.seed < 0:  # shadows' seeds derive from it through numpy, which takes no negative seed
            raise ValueError(f"seed must be >= 0, got {self.seed}")


    def planned_epochs(self, steps_per_epoch: int) -> int:
        """Epochs to train: ``epochs`` passes, lengthened to reach ``min_steps`` optimiser steps and
        shortened to stay within ``max_steps`` (whole epochs, at least one)."""
        steps = max(self.epochs * steps_per_epoch, self.min_steps)
        if self.max_steps is not None:
            steps = min(steps, self.max_steps)
        return max(1, math.ceil(steps / steps_per_epoch))

    @property
    def early_stopping(self) -> bool:
        return self.patience is not None or self.patience_share is not None

    def patience_epochs(self, planned_epochs: int) -> int | None:
        """Early stopping's patience in epochs: ``patience``, or ``patience_share`` of the planned epochs."""
        if self.patience is not None:
            return self.patience
        if self.patience_share is not None:
            return max(1, math.ceil(self.patience_share * planned_epochs))
        return None

    def plan(self, n_images: int) -> str:
        """The planned length in words, e.g. '1,020 steps (340 epochs of 3 batches: the floor of steps)'."""
        per_epoch = max(1, math.ceil(n_images / self.batch_size))
        epochs = self.planned_epochs(per_epoch)
        why = ("the floor of steps" if epochs > self.epochs else "the ceiling of steps" if epochs < self.epochs
               else f"{self.epochs} epochs")
        patience = self.patience_epochs(epochs)
        stop = f"; stops early after {patience} epochs without validation gain" \
            if patience is not None and epochs <= self.epochs else ""  # past the floor only at its end
        return f"{epochs * per_epoch:,} steps ({epochs} epochs of {per_epoch} batches: {why}{stop})"


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0


class PrivacyWrapper(Protocol):
    """Replaces the model, optimiser and sampler for private training (see ``methods/dp.py``)."""

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, n_rows: int, config: TrainConfig
             ) -> tuple[nn.Module, torch.optim.Optimizer, Sampler]: ...

    def epoch_info(self) -> dict[str, float]: ...


DataFn = Callable[[int], TensorData]


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str = "auto") -> torch.Tensor:
    """Logits (N, K) on the CPU for images (N, C, H, W), in large no-grad batches."""
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


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any, loss: torch.Tensor) -> None:
    """Back-propagate ``loss`` and take one optimiser and schedule step: the only place in the product
    where a classifier's weights change."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


@dataclass
class StackedValidation:
    """Validation of a stack of models: model i on the rows ``masks[i]`` of ``data`` (its own carve-out)."""

    data: TensorData
    masks: torch.Tensor  # (M, N) bool

    def __len__(self) -> int:
        return int(self.masks.any(0).sum())


Validation = TensorData | StackedValidation


@dataclass
class _State:
    """What the loop carries between epochs (and through a checkpoint); early stopping is per model (a
    stack's models stop each at its own epoch, as each would alone)."""

    epoch: int = 0  # the next epoch to train
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: list[float] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    steps: int = 0  # optimiser steps taken
    seconds: float = 0.0
    first_loss: float | None = None

    @classmethod
    def fresh(cls, n_models: int) -> _State:
        return cls(best_score=[-1.0] * n_models, best_epoch=[0] * n_models, stale=[0] * n_models,
                   stopped=[False] * n_models)


@dataclass
class _Run:
    """One training's fixed parts, built by :func:`fit`'s first step."""

    model: nn.Module
    objective: Objective
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: Sampler
    augment: Augment
    device: str
    stage: str
    epochs: int  # planned (the recipe's epochs within its floor and ceiling of steps)
    steps_per_epoch: int
    progress: ProgressFn

    @property
    def patience(self) -> int | None:
        return self.config.patience_epochs(self.epochs)

    @property
    def total(self) -> int:
        return self.epochs * self.steps_per_epoch


def fit(model: nn.Module, data: TensorData | DataFn, objective: Objective, config: TrainConfig, *,
        val: Validation | None = None, checkpoint: Path | None = None, progress: ProgressFn = no_progress,
        stage: str = "train", sampler: Sampler | None = None, private: PrivacyWrapper | None = None) -> TrainResult:
    """Train ``model`` on ``data`` (or ``data(epoch)``: a student moving through synthetic rounds) with
    ``objective`` and the ``config`` recipe, for ``config.planned_epochs`` epochs.

    ``val`` early-stops when ``config.patience`` is set, once past ``config.min_steps`` (the best epoch's
    weights are kept; a :class:`StackedValidation` does so per model); ``checkpoint`` is rewritten after
    every epoch and resumed from when it exists; ``sampler`` defaults to one model seeded with
    ``config.seed``; ``private`` wraps the training for DP-SGD.
    """
    # 1. device, data, sampler, optimiser and schedule (a privacy wrapper replaces what it needs)
    if private is not None and checkpoint is not None:
        raise ValueError("private training is not resumable: pass no checkpoint")
    device = resolve_device(config.device)
    data_for_epoch = data if callable(data) else (lambda _epoch: data)
    trained, model = model, model.to(device)
    sampler = sampler or Sampler([config.seed], config.batch_size)
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                                         weight_decay=config.weight_decay)
    n_rows = len(data_for_epoch(0))
    if private is not None:
        model, optimizer, sampler = private.wrap(model, optimizer, n_rows, config)
    per_epoch = sampler.steps(n_rows)
    epochs = config.planned_epochs(per_epoch)
    run = _Run(model, objective, config, optimizer, cosine_schedule(optimizer, epochs * per_epoch), sampler,
               Augment.of(config.augment, config.crop_padding), device, stage, epochs, per_epoch, progress)
    # 2. resume from the checkpoint if there is one
    state = _resume(run, checkpoint) if checkpoint is not None and Path(checkpoint).exists() else \
        _State.fresh(sampler.n_models)
    # 3. epochs: train, validate (keeping the best weights), checkpoint, stop early
    started = time.monotonic()
    for epoch in range(state.epoch, epochs):
        row = _train_epoch(run, data_for_epoch(epoch), epoch, state)
        row.update(private.epoch_info() if private is not None else {})
        _validate(run, val, row, state)
        state.history.append(row)
        state.epoch = epoch + 1
        progress(Progress(stage, (epoch + 1) * per_epoch, run.total,
                          {"epoch_end": 1, **{k: round(v, 4) for k, v in row.items()}}))
        if checkpoint is not None:
            _save(run, checkpoint, state, state.seconds + time.monotonic() - started)
        if all(state.stopped):
            logger.info("%s: early stop at epoch %d of %d (best %s)", stage, epoch + 1, epochs, state.best_epoch)
            break
    # 4. a model that stopped early gets its best weights back; one that ran its whole schedule keeps its
    # final, annealed weights (a small validation set picks a worse epoch by chance more often than not)
    best_epoch = _restore_best(run, state) if state.best_state is not None and any(state.stopped) else \
        len(state.history)
    return TrainResult(trained, state.history, best_epoch, len(state.history),
                       state.seconds + time.monotonic() - started)


def _restore_best(run: _Run, state: _State) -> int:
    """The stopped models' best weights into the model (each its own slice of a stack); returns the
    latest best epoch among them."""
    stopped = [i for i, done in enumerate(state.stopped) if done]
    if len(state.stopped) == 1:
        run.model.load_state_dict(state.best_state)
    else:
        current = run.model.state_dict()
        for name, value in current.items():
            value[stopped] = state.best_state[name][stopped]
        run.model.load_state_dict(current)
    return max(state.best_epoch[i] for i in stopped)


def _train_epoch(run: _Run, data: TensorData, epoch: int, state: _State) -> dict[str, float]:
    """One pass: batches from the sampler, augmented, through the objective, one optimiser step each."""
    run.model.train()
    run.objective.start_epoch(epoch, run.epochs)
    sums: dict[str, float] = {}
    steps = 0
    for rows in run.sampler.epoch(len(data)):
        if rows.numel() == 0:  # Poisson sampling (DP-SGD) can draw an empty batch
            continue
        x = run.augment(data.x[rows], run.sampler.gens).to(run.device)
        batch = Batch(x, data.y[rows].to(run.device), rows, data, run.sampler.gens[0])
        with autocast(run.device, "auto" if run.config.amp else "no"):
            parts = run.objective(run.model, batch)
        value = float(parts["loss"].detach()) / run.sampler.n_models
        check_loss(value, state.first_loss, run.stage, f"epoch {epoch + 1}, step {steps + 1}", run.config.lr)
        state.first_loss = value if state.first_loss is None else state.first_loss
        optimizer_step(run.optimizer, run.scheduler, parts["loss"])
        steps += 1
        state.steps += 1
        for key, part in parts.items():
            sums[key] = sums.get(key, 0.0) + float(part.detach()) / run.sampler.n_models
        info = {"epoch": epoch + 1, "loss": value}
        run.progress(Progress(run.stage, epoch * run.steps_per_epoch + steps, run.total,
                              info if run.sampler.n_models == 1 else {**info, "models": run.sampler.n_models}))
    return {"epoch": epoch + 1, **{k: v / max(steps, 1) for k, v in sums.items()}}


def _validate(run: _Run, val: Validation | None, row: dict[str, float], state: _State) -> None:
    """Validation accuracy and loss into ``row``; each model's best weights so far kept, and a model
    stopped once ``patience`` epochs passed without gain after the floor of steps."""
    if val is None or not len(val):
        return
    scores = _scores(run.model, val, run.device)
    row["val_accuracy"] = sum(a for a, _ in scores) / len(scores)
    row["val_loss"] = sum(v for _, v in scores) / len(scores)
    patience, past_floor = run.patience, state.steps >= run.config.min_steps
    improved = []
    for i, (accuracy, loss) in enumerate(scores):
        if state.stopped[i]:
            continue
        score = accuracy - 1e-6 * loss
        if score > state.best_score[i]:
            state.best_score[i], state.stale[i], state.best_epoch[i] = score, 0, int(row["epoch"])
            improved.append(i)
        else:
            state.stale[i] += 1
        state.stopped[i] = patience is not None and past_floor and state.stale[i] > patience
    if improved and patience is not None:
        _keep_best(run.model, state, improved)


def _scores(model: nn.Module, val: Validation, device: str) -> list[tuple[float, float]]:
    """(accuracy, mean cross-entropy) of every model on its validation rows."""
    if isinstance(val, TensorData):
        metrics = evaluate(model, val, int(val.y.max()) + 1, device=device)
        return [(metrics["accuracy"], metrics["loss"])]
    rows = torch.nonzero(val.masks.any(0)).flatten()
    x, y, masks = val.data.x[rows], val.data.y[rows], val.masks[:, rows]
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 256].to(device)[None].expand(len(masks), *x[i:i + 256].shape)).float().cpu()
                            for i in range(0, len(x), 256)], dim=1)  # (M, n, K)
    out = []
    for m, mask in enumerate(masks):
        lm, ym = logits[m][mask], y[mask]
        out.append((float((lm.argmax(1) == ym).float().mean()), float(F.cross_entropy(lm, ym))))
    return out


def _keep_best(model: nn.Module, state: _State, improved: list[int]) -> None:
    """Copy the current weights of the models that improved into the kept best state (for a stack, each
    model's own slice of the stacked tensors)."""
    current = model.state_dict()
    if state.best_state is None or len(state.best_score) == 1:
        state.best_state = {k: v.detach().clone() for k, v in current.items()}
        return
    for name, value in current.items():
        state.best_state[name][improved] = value.detach()[improved]


def _save(run: _Run, path: Path, state: _State, seconds: float) -> None:
    checkpoints.save(path, {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "generators": run.sampler.state(), "epoch": state.epoch - 1,
        "history": state.history, "best_score": state.best_score, "best_state": state.best_state,
        "stale": state.stale, "stopped": state.stopped, "best_epoch": state.best_epoch, "steps": state.steps,
        "torch_rng": torch.get_rng_state(), "seconds": seconds, "first_loss": state.first_loss})


def _resume(run: _Run, path: Path) -> _State:
    saved = checkpoints.load(path, run.device)
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.sampler.load_state(saved.get("generators") or [saved["generator"]])
    torch.set_rng_state(saved["torch_rng"])  # dropout and AugMix draw from the global stream
    per_model = [saved[k] if isinstance(saved[k], list) else [saved[k]] for k in ("best_score", "best_epoch", "stale")]
    stopped = saved.get("stopped") or [run.patience is not None and s > run.patience for s in per_model[2]]
    state = _State(saved["epoch"] + 1, saved["history"], *per_model, stopped, saved["best_state"],
                   saved.get("steps", (saved["epoch"] + 1) * run.steps_per_epoch), saved.get("seconds", 0.0),
                   saved.get("first_loss"))
    if all(state.stopped):
        state.epoch = run.epochs  # it had stopped early: nothing left to train
    logger.info("resumed %s from epoch %d", run.stage, state.epoch)
    return state
