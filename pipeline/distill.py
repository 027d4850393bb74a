"""Teacher and student: Generative Knowledge Distillation with recycling (TCKR step 4).

The teacher trains on the real *member* images. The student trains on synthetic images only, with
the teacher's soft labels, and every ``regen_every`` epochs it moves on to a fresh generation round
(Knowledge Recycling). :func:`train_student` takes no real data at all: the only images it can read
are the synthetic sets it is given. Both train through the one classifier loop
(:func:`pipeline.classifiers.train.fit`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .classifiers.models import build_classifier
from .classifiers.objectives import HardLabels, SoftLabels
from .classifiers.train import TrainConfig, TrainResult, evaluate, fit, predict_logits
from .core import checkpoints
from .core.common import ProgressFn, no_progress, write_json
from .core.schema import schema
from .data.tensors import TensorData
from .generate import SyntheticSet
from .methods.dp import DPConfig, OpacusPrivacy, dp_recipe

logger = logging.getLogger(__name__)


STUDENT_LABELS = ("teacher", "class")


@schema
@dataclass(frozen=True)
class DistillConfig:
    """How the student learns from the teacher on synthetic data."""

    student: TrainConfig = field(default_factory=TrainConfig)  # the student's training recipe
    temperature: float = 4.0  # softmax temperature of the soft labels
    alpha: float = 1.0  # weight of the KD term; 1 - alpha weighs cross-entropy with the generated class
    regen_every: int = 5  # epochs on one synthetic round before moving to the next (recycling period)
    val_fraction: float = 0.1  # share of each synthetic round held out for the student's early stopping
    # teacher: GKD, the teacher's soft labels | class: the class each image was generated for, hard (smoothed
    # by the recipe's label_smoothing); no model of the real members is consulted (a DP run: student ε =
    # generator ε, by post-processing)
    labels: str = "teacher"

    def __post_init__(self) -> None:
        if self.labels not in STUDENT_LABELS:
            raise ValueError(f"unknown student labels {self.labels!r}; valid: {', '.join(STUDENT_LABELS)}")
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


def train_teacher(members: TensorData, validation: TensorData | None, config: TrainConfig, num_classes: int,
                  out_dir: Path, progress: ProgressFn = no_progress) -> ModelResult:
    """Train the teacher on the member images (at ``config.image_size``); early-stop on ``validation``.
    Resumes from ``out_dir/teacher.ckpt``; the weights go to ``out_dir/teacher.pt``."""
    model = build_classifier(config, num_classes)
    objective = HardLabels(config.label_smoothing, mixup="mixup" in config.augment)
    result = fit(model, members, objective, config, val=validation, checkpoint=Path(out_dir) / "teacher.ckpt",
                 progress=progress, stage="teacher")
    return _saved(result, Path(out_dir) / "teacher.pt", {"train_images": len(members)})


def train_private_teacher(members: TensorData, validation: TensorData | None, config: TrainConfig, num_classes: int,
                          out_dir: Path, dp: DPConfig, progress: ProgressFn = no_progress) -> ModelResult:
    """The teacher trained on the members with DP-SGD (the ``dp-sgd`` method's recipe and Opacus wrapper):
    its soft labels then carry its own (ε, δ), which composes with the generator's. ``metrics["privacy"]``
    is its :class:`~pipeline.privacy.accounting.DPPart`. The weights go to ``out_dir/teacher.pt``."""
    from opacus.validators import ModuleValidator

    from .privacy.accounting import DPPart

    # 1. the recipe under DP (as methods/dp.py): larger batches, no augmentation, float32, the planned epochs
    delta = dp.delta if dp.delta is not None else 1.0 / (10 * len(members))
    recipe = dp_recipe(config, dp, len(members))
    model = ModuleValidator.fix(build_classifier(recipe, num_classes))
    # 2. the one loop with Opacus' wrapper (no checkpoint: the noise is calibrated to one uninterrupted run)
    privacy = OpacusPrivacy(dp, delta, recipe.seed)
    result = fit(model, members, HardLabels(), recipe, val=validation, progress=progress, stage="dp teacher",
                 private=privacy)
    sample_rate = float(privacy.optimizer.expected_batch_size / len(members))
    steps = int(sum(h[2] for h in privacy.engine.accountant.history))
    part = DPPart("teacher", privacy.spent(), delta, dp.accountant,
                  float(privacy.optimizer.noise_multiplier), sample_rate, steps, dp.max_grad_norm, dp.epsilon)
    return _saved(result, Path(out_dir) / "teacher.pt", {"train_images": len(members), "privacy": part.to_dict()})


def train_student(teacher: nn.Module, rounds: Sequence[SyntheticSet], config: DistillConfig, num_classes: int,
                  out_dir: Path, progress: ProgressFn = no_progress,
                  teacher_recipe: TrainConfig | None = None) -> ModelResult:
    """Train a student on synthetic rounds with the teacher's soft labels (GKD with recycling).

    Epoch e uses round ``(e // regen_every) % len(rounds)``. ``teacher_recipe`` gives the teacher's
    input size (default: the student's). Early stopping (if the recipe asks for it) watches a
    synthetic validation split labelled by the teacher, never real images. With ``config.labels ==
    "class"`` the teacher is not consulted at all (it may be None): the labels are the generated classes.
    """
    if not rounds:
        raise ValueError("the student needs at least one synthetic round")
    recipe = config.student
    # 1. every round with the teacher's soft labels (or its generated classes); a slice of each held out
    teacher_size = teacher_recipe.image_size if teacher_recipe is not None else recipe.image_size
    labelled, val = label_rounds(None if config.labels == "class" else teacher, rounds, config, teacher_size)

    def data_for_epoch(epoch: int) -> TensorData:
        return labelled[(epoch // config.regen_every) % len(labelled)]

    # 2. train the student
    model = build_classifier(recipe, num_classes)
    objective = SoftLabels(config.temperature, config.alpha, recipe.label_smoothing) if config.labels == "teacher" \
        else HardLabels(recipe.label_smoothing)
    result = fit(model, data_for_epoch, objective, recipe, val=val, checkpoint=Path(out_dir) / "student.ckpt",
                 progress=progress, stage="student")
    return _saved(result, Path(out_dir) / "student.pt",
                  {"synthetic_images": sum(len(r) for r in rounds), "rounds": len(rounds), "labels": config.labels})


def label_rounds(teacher: nn.Module | None, rounds: Sequence[SyntheticSet], config: DistillConfig,
                 teacher_size: int | None) -> tuple[list[TensorData], TensorData | None]:
    """Each round at the student's input size with the teacher's logits (the teacher sees each image
    at its own input size), less a seeded ``val_fraction`` slice per round; the slices, labelled with
    the teacher's class, are the validation set. Without a teacher, the generated classes label both."""
    recipe = config.student
    gen = torch.Generator().manual_seed(recipe.seed)
    labelled, val_parts = [], []
    for synthetic in rounds:
        data = synthetic.tensors(recipe.image_size)
        logits = None if teacher is None else predict_logits(teacher, synthetic.tensors(teacher_size).x,
                                                             device=recipe.device)
        order = torch.randperm(len(data), generator=gen)
        n_val = int(round(config.val_fraction * len(data)))
        val_idx, train_idx = order[:n_val], order[n_val:]
        if logits is None:
            labelled.append(TensorData(data.x[train_idx], data.y[train_idx]))
            val_parts.append(TensorData(data.x[val_idx], data.y[val_idx]))
            continue
        labelled.append(TensorData(data.x[train_idx], data.y[train_idx], logits[train_idx]))
        val_parts.append(TensorData(data.x[val_idx], logits[val_idx].argmax(1)))
    val = TensorData(torch.cat([v.x for v in val_parts]), torch.cat([v.y for v in val_parts])) \
        if config.val_fraction > 0 else None
    return labelled, val


def train_on_labels(data: TensorData, recipe: TrainConfig, num_classes: int, progress: ProgressFn = no_progress,
                    stage: str = "cas", val: TensorData | None = None) -> nn.Module:
    """A classifier trained with ``recipe`` on ``data``'s own labels (no teacher; early-stopped on ``val``
    when the recipe asks): CAS trains one on a synthetic round to ask how much of the task the images
    alone carry."""
    model = build_classifier(recipe, num_classes)
    fit(model, data, HardLabels(recipe.label_smoothing, mixup="mixup" in recipe.augment), recipe, val=val,
        progress=progress, stage=stage)
    return model.eval()


def _saved(result: TrainResult, path: Path, figures: dict[str, Any]) -> ModelResult:
    """Save the trained weights to ``path`` and collect the training figures."""
    checkpoints.save(path, result.model.state_dict())
    metrics = {**figures, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "train_seconds": round(result.seconds, 2), "history": result.history}
    return ModelResult(result.model, path, result, metrics)


def evaluate_on_test(model: nn.Module, test: TensorData, num_classes: int, out: Path | None = None) -> dict[str, Any]:
    """Accuracy and per-class accuracy on the real test split (evaluation only, after training)."""
    metrics = evaluate(model, test, num_classes)
    if out is not None:
        write_json(out, metrics)
    return metrics
