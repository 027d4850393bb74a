"""Teacher and student: Generative Knowledge Distillation with recycling (TCKR step 4).

The teacher trains on the real *member* images. The student trains on synthetic images only, with
the teacher's soft labels, and every ``regen_every`` epochs it moves on to a fresh generation round
(Knowledge Recycling). :func:`train_student` takes no dataset argument at all: the only images it
can read are the synthetic sets it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .classifiers.models import ClassifierSpec, create_classifier
from .classifiers.train import (
    TensorData,
    TrainConfig,
    TrainResult,
    evaluate,
    fit_classifier,
    images_to_tensor,
    predict_logits,
)
from .core.common import ProgressFn, no_progress, seed_everything, write_json
from .data.datasets import ImageDataset, MembershipSplit
from .generate import SyntheticSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """How the student learns from the teacher on synthetic data."""

    student: TrainConfig = field(default_factory=TrainConfig)  # the student's training recipe
    temperature: float = 4.0  # softmax temperature of the soft labels
    alpha: float = 1.0  # weight of the KD term; 1 - alpha weighs cross-entropy with the generated class
    regen_every: int = 5  # epochs on one synthetic round before moving to the next (recycling period)
    val_fraction: float = 0.1  # share of each synthetic round held out for the student's early stopping

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.regen_every < 1:
            raise ValueError(f"regen_every must be at least 1, got {self.regen_every}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class ModelResult:
    """A trained classifier and how it did."""

    model: nn.Module
    checkpoint: Path
    train: TrainResult
    metrics: dict[str, Any]


def real_tensors(dataset: ImageDataset, ids: Sequence[str], image_size: int | None) -> TensorData:
    """Decode real images by id into tensors; unreadable ones are skipped (``ids`` lists the kept)."""
    records = [dataset.record(i) for i in ids]
    pairs = list(dataset.iter_images(records))
    x = images_to_tensor([img for _, img in pairs], image_size)
    return TensorData(x, torch.tensor([r.label for r, _ in pairs], dtype=torch.long),
                      ids=[r.id for r, _ in pairs])


def synthetic_tensors(synthetic: SyntheticSet, image_size: int | None) -> TensorData:
    images = [synthetic.image(item) for item in synthetic.items]
    return TensorData(images_to_tensor(images, image_size), torch.from_numpy(synthetic.labels()))


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    seed_everything(config.seed)  # the initial weights come from the recipe's seed
    return create_classifier(ClassifierSpec(config.model, num_classes, 3, config.pretrained))


def train_teacher(dataset: ImageDataset, split: MembershipSplit, config: TrainConfig, out_dir: Path,
                  progress: ProgressFn = no_progress) -> ModelResult:
    """Train the teacher on the member images; validate on the validation carve-out."""
    # 1. real member and validation images
    train = real_tensors(dataset, split.members, config.image_size)
    val = real_tensors(dataset, split.validation, config.image_size) if split.validation else None
    # 2. train (resumes from out_dir/teacher.ckpt)
    model = build_model(config, len(dataset.class_names))
    result = fit_classifier(model, lambda _: train, config, val, Path(out_dir) / "teacher.ckpt",
                            progress, stage="teacher")
    # 3. save the weights
    path = Path(out_dir) / "teacher.pt"
    torch.save(result.model.state_dict(), path)
    metrics = {"train_images": len(train), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "train_seconds": round(result.seconds, 2), "history": result.history}
    return ModelResult(result.model, path, result, metrics)


def soft_labels(teacher: nn.Module, data: TensorData, device: str = "auto") -> TensorData:
    """The same images with the teacher's logits attached (computed once per round)."""
    return TensorData(data.x, data.y, predict_logits(teacher, data.x, device=device))


def train_student(teacher: nn.Module, rounds: Sequence[SyntheticSet], config: DistillConfig, num_classes: int,
                  out_dir: Path, progress: ProgressFn = no_progress,
                  teacher_recipe: TrainConfig | None = None) -> ModelResult:
    """Train a student on synthetic rounds with the teacher's soft labels (GKD with recycling).

    Epoch e uses round ``(e // regen_every) % len(rounds)``. ``teacher_recipe`` gives the teacher's
    input size (default: the student's). Early stopping (if the recipe asks for
    it) watches a synthetic validation split labelled by the teacher, never real images.
    """
    if not rounds:
        raise ValueError("the student needs at least one synthetic round")
    recipe = config.student
    # 1. tensors + soft labels per round; a slice of every round is held out for validation
    labelled, val_parts = [], []
    gen = torch.Generator().manual_seed(recipe.seed)
    teacher_size = teacher_recipe.image_size if teacher_recipe is not None else recipe.image_size
    for synthetic in rounds:
        data = synthetic_tensors(synthetic, recipe.image_size)
        # the teacher labels each image at its own input size, the student learns at its own
        seen = data if teacher_size == recipe.image_size else synthetic_tensors(synthetic, teacher_size)
        data = TensorData(data.x, data.y, predict_logits(teacher, seen.x, device=recipe.device))
        order = torch.randperm(len(data), generator=gen)
        n_val = int(round(config.val_fraction * len(data)))
        val_idx, train_idx = order[:n_val], order[n_val:]
        labelled.append(TensorData(data.x[train_idx], data.y[train_idx], data.teacher_logits[train_idx]))
        val_parts.append(TensorData(data.x[val_idx], data.teacher_logits[val_idx].argmax(1)))
    val = TensorData(torch.cat([v.x for v in val_parts]), torch.cat([v.y for v in val_parts])) \
        if config.val_fraction > 0 else None

    def data_for_epoch(epoch: int) -> TensorData:
        period = max(config.regen_every, 1)
        return labelled[(epoch // period) % len(labelled)]

    # 2. train the student
    model = build_model(recipe, num_classes)
    result = fit_classifier(model, data_for_epoch, recipe, val, Path(out_dir) / "student.ckpt", progress,
                            stage="student", kd_temperature=config.temperature, kd_alpha=config.alpha)
    path = Path(out_dir) / "student.pt"
    torch.save(result.model.state_dict(), path)
    metrics = {"synthetic_images": sum(len(r) for r in rounds), "rounds": len(rounds),
               "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "train_seconds": round(result.seconds, 2), "history": result.history}
    return ModelResult(result.model, path, result, metrics)


def evaluate_on_test(model: nn.Module, test: TensorData, num_classes: int, out: Path | None = None) -> dict[str, Any]:
    """Accuracy and per-class accuracy on the real test split (evaluation only, after training)."""
    metrics = evaluate(model, test, num_classes)
    if out is not None:
        write_json(out, metrics)
    return metrics
