"""Activation-maximisation students (data-free): images synthesised from the trained teacher alone by
gradient ascent on the input, then a student distilled on them with the teacher's soft labels.

Follows Nikolaidis et al. ("Learning from Higher-Layer Feature Visualizations"): maximise a class
score under image priors — a random shift each step (jitter), total variation and an L2 pull towards
grey — class-balanced. The student trains with an online teacher: every batch is augmented and
mixed pairwise, then labelled by the teacher as the student sees it (as data-free distillation does,
e.g. Yin et al.'s DeepInversion), so a few thousand synthesised images teach the teacher's function
around them, not only at them. The optional BatchNorm-statistics term of DeepInversion (Yin et al., CVPR 2020)
matches the batch's feature statistics to the teacher's BatchNorm running statistics; those are
averages over the member images, so with ``bn_weight > 0`` the synthesis reads an aggregate of member
data (recorded as ``uses_member_statistics``). The built-in classifiers have no BatchNorm.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..classifiers.augment import AUGMENTATIONS
from ..classifiers.models import build_classifier
from ..classifiers.objectives import OnlineTeacher, SoftLabels
from ..classifiers.train import fit, predict_logits
from ..core import checkpoints
from ..core.common import Progress, ProgressFn, check_loss, no_progress, resolve_device
from ..core.schema import schema
from ..data.tensors import TensorData
from . import MethodContext, MethodResult, TransferMethod, register

logger = logging.getLogger(__name__)


@schema
@dataclass(frozen=True)
class AMConfig:
    """How the activation-maximisation images are made."""

    images_per_class: int = 512  # synthesised images per class
    steps: int = 200  # gradient-ascent steps per batch
    lr: float = 0.05  # Adam step size on the pixels
    objective: str = "ce"  # ce: cross-entropy to the class (pushes the others down too) | logit: the class logit
    jitter: int = 1  # random shift of up to this many pixels each step (a robustness prior)
    tv_weight: float = 0.05  # total-variation penalty (smooth images)
    l2_weight: float = 0.01  # pull towards mid-grey (bounded contrast)
    bn_weight: float = 0.0  # DeepInversion BatchNorm-statistics term (> 0 reads member-data aggregates)
    confidence: tuple[float, float] | None = (0.5, 0.99)  # each image stops at a teacher confidence drawn from this range
    batch_size: int = 256  # images optimised together
    val_fraction: float = 0.1  # synthesised images held out for the student's early stopping
    online_teacher: bool = True  # the teacher labels each batch as the student sees it (augmented, mixed)
    mixup: bool = True  # with online_teacher: pairs of images mixed with a uniform weight, then labelled
    augment: tuple[str, ...] = ("crop",)  # added to the student recipe's augmentations (online_teacher only:
    # the teacher relabels every augmented image, so no augmentation can make a label wrong)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in ("ce", "logit"):
            raise ValueError(f"objective must be ce or logit, got {self.objective!r}")
        for name in ("images_per_class", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if min(self.tv_weight, self.l2_weight, self.bn_weight, self.jitter) < 0 or not self.lr > 0:
            raise ValueError("lr must be positive and the prior weights and jitter >= 0")
        object.__setattr__(self, "augment", tuple(self.augment))
        if set(self.augment) - set(AUGMENTATIONS):
            raise ValueError(f"unknown augment {sorted(set(self.augment) - set(AUGMENTATIONS))}; valid: "
                             + ", ".join(AUGMENTATIONS))
        if self.confidence is not None:
            object.__setattr__(self, "confidence", tuple(self.confidence))
            low, high = self.confidence
            if not 0 < low <= high < 1:
                raise ValueError(f"confidence must be a range within (0, 1), got {self.confidence}")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels, per image: (B, C, H, W) -> (B,)."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dh + dw


def synthesise(teacher: nn.Module, labels: torch.Tensor, shape: tuple[int, int, int], config: AMConfig,
               progress: ProgressFn = no_progress, device: str = "auto") -> torch.Tensor:
    """Images in [0, 1] (N, C, H, W) that the teacher scores as ``labels`` (N,), under the priors."""
    device = resolve_device(device)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    bn_losses = _bn_hooks(teacher) if config.bn_weight > 0 else None
    gen = torch.Generator().manual_seed(config.seed)
    out = []
    batches = math.ceil(len(labels) / config.batch_size)
    for b in range(batches):
        y = labels[b * config.batch_size:(b + 1) * config.batch_size].to(device)
        x = (0.5 + 0.1 * torch.randn((len(y), *shape), generator=gen)).clamp(0, 1).to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=config.lr)
        # images that stop at a range of confidences, not all at certainty: a student learns the teacher's
        # boundaries from the undecided ones (an image optimised to certainty carries little dark knowledge)
        stop = (torch.empty(len(y)).uniform_(*config.confidence, generator=gen).to(device)
                if config.confidence else torch.full((len(y),), 2.0, device=device))
        for step in range(config.steps):
            with torch.no_grad():
                live = (F.softmax(teacher(x), 1).gather(1, y[:, None]).squeeze(1) < stop).nonzero().squeeze(1)
            if not len(live):
                break
            dx, dy = (torch.randint(-config.jitter, config.jitter + 1, (2,), generator=gen).tolist()
                      if config.jitter else (0, 0))
            xs, ys = x[live], y[live]  # only the images still below their confidence (the rest stay as they are)
            logits = teacher(torch.roll(xs, shifts=(dx, dy), dims=(2, 3)))
            score = F.cross_entropy(logits, ys, reduction="none") if config.objective == "ce" else \
                -logits.gather(1, ys[:, None]).squeeze(1)
            loss = (score + config.tv_weight * total_variation(xs)
                    + config.l2_weight * (xs - 0.5).pow(2).flatten(1).mean(1)).sum() / len(y)
            if bn_losses is not None:
                loss = loss + config.bn_weight * sum(bn_losses)
                bn_losses.clear()
            check_loss(float(loss.detach()), None, "am", f"batch {b + 1}, step {step + 1}", config.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            before = x.detach().clone()
            optimizer.step()
            with torch.no_grad():
                keep = torch.ones(len(y), dtype=torch.bool, device=device)
                keep[live] = False
                x.copy_(torch.where(keep[:, None, None, None], before, x).clamp(0, 1))  # a valid image
            progress(Progress("am synthesis", b * config.steps + step + 1, batches * config.steps, {}))
        out.append(x.detach().cpu())
    return torch.cat(out)


def _bn_hooks(model: nn.Module) -> list[torch.Tensor]:
    """DeepInversion's feature-statistics loss, collected by forward hooks on every BatchNorm layer."""
    losses: list[torch.Tensor] = []

    def hook(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0]
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        losses.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not layers:
        logger.warning("bn_weight > 0 but the teacher has no BatchNorm layer: the term is 0")
    for layer in layers:
        layer.register_forward_hook(hook)
    return losses


class _Resized(nn.Module):
    """A teacher that takes the student's input size: images resized to its own first."""

    def __init__(self, teacher: nn.Module, side: int) -> None:
        super().__init__()
        self.teacher, self.side = teacher, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True))


@register
class ActivationMaximisation(TransferMethod):
    """Data-free: a student distilled on images synthesised from the teacher (Nikolaidis et al.)"""

    name = "am"
    config_class = AMConfig
    reads_real_training_images = False

    def train(self, context: MethodContext, out_dir: Path, progress: ProgressFn) -> MethodResult:
        cfg, recipe = self.config, context.student_recipe
        # 1. class-balanced targets and images at the teacher's input size (the size it scores)
        side = context.input_shape[-1]
        labels = torch.arange(context.num_classes).repeat_interleave(cfg.images_per_class)
        images = synthesise(context.teacher, labels, context.input_shape, cfg, progress, recipe.device)
        checkpoints.save(Path(out_dir) / "am_images.pt", {"images": images, "labels": labels})
        # 2. the teacher's soft labels; a slice held out (labelled by the teacher) for early stopping
        logits = predict_logits(context.teacher, images, device=recipe.device)
        if recipe.image_size is not None and recipe.image_size != side:
            images = F.interpolate(images, size=(recipe.image_size,) * 2, mode="bilinear", antialias=True)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
        n_val = int(round(cfg.val_fraction * len(images)))
        train = TensorData(images[order[n_val:]], labels[order[n_val:]], logits[order[n_val:]])
        val = TensorData(images[order[:n_val]], logits[order[:n_val]].argmax(1)) if n_val else None
        # 3. the student, with the experiment's student recipe and KD settings; with an online teacher, each
        # batch is augmented (and mixed) and labelled by the teacher as the student sees it: the student
        # learns the teacher's function around the synthesised images, not only at them
        objective = SoftLabels(context.temperature, context.alpha, recipe.label_smoothing)
        if cfg.online_teacher:
            teacher = context.teacher if recipe.image_size in (None, side) else _Resized(context.teacher, side)
            objective = OnlineTeacher(teacher, context.temperature, context.alpha, recipe.label_smoothing, cfg.mixup)
            recipe = replace(recipe, augment=tuple(dict.fromkeys((*recipe.augment, *cfg.augment))))
        result = fit(build_classifier(recipe, context.num_classes), train, objective, recipe, val=val,
                     checkpoint=Path(out_dir) / "student.ckpt", progress=progress, stage="am student")
        return MethodResult.saved(result, out_dir, synthetic_images=len(images),
                                  class_fidelity=float((logits.argmax(1) == labels).float().mean()),
                                  uses_member_statistics=cfg.bn_weight > 0)
