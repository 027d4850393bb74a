"""Knowledge distillation with boundary-supporting samples (Heo, Lee, Yun & Choi, AAAI 2019).

Each step, the base samples the teacher classifies correctly and on which the student disagrees
most with it (at most ``attack_size``) are moved by an iterative targeted attack on the teacher
towards the decision boundary of a target class drawn in proportion to the teacher's probabilities
of the other classes; the attack stops for a sample as soon as the teacher's top class changes, so
it ends just at the boundary. The student learns CE on the base samples + ``ratio`` · KD on them +
``ratio_attack`` · KD on the boundary samples, with the paper's schedules
``ratio = max(3 (1 − e/E), 0) + 1`` and ``ratio_attack = max(2 (1 − 4e/(3E)), 0)`` and its
KD term −Σ softmax(t/T) log softmax(s/T). Adapted from the authors' reference code
(github.com/bhheo/BSS_distillation, ``attack_BSS.py`` and ``train_BSS_distillation.py``); the loss is an
objective of the product's one training loop (AdamW + cosine schedule, shared by every student).

Method ``gkd+bss`` takes the experiment's synthetic rounds as base samples: data-free, it composes
with GKD. Method ``bss`` is the paper's setting on the real members, not private: a reference point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..classifiers.models import build_classifier
from ..classifiers.objectives import Batch
from ..classifiers.train import fit
from ..core.common import ProgressFn
from ..core.schema import schema
from ..data.tensors import TensorData
from . import MethodContext, MethodResult, TransferMethod, register


@schema
@dataclass(frozen=True)
class BSSConfig:
    """Boundary-supporting samples and the distillation that uses them."""

    attack_size: int = 64  # boundary samples per step (the paper's 64)
    attack_steps: int = 10  # attack iterations (the paper's 10)
    step_alpha: float = 0.3  # attack step scale (the paper's 0.3, L2-normalised gradient)
    temperature: float = 3.0  # the paper's KD temperature

    def __post_init__(self) -> None:
        if self.attack_size < 1 or self.attack_steps < 1 or not self.step_alpha > 0:
            raise ValueError("attack_size and attack_steps must be >= 1 and step_alpha > 0")


def boundary_samples(teacher: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 10,
                     step_alpha: float = 0.3) -> torch.Tensor:
    """Move each image (B, C, H, W) in [0, 1] towards the teacher's boundary with class ``target`` (B,).

    Each step adds ``step_alpha · (s_top − s_target + 1e-4) · g / ‖g‖`` with g the gradient of
    s_target − s_top (s: teacher logits, top: the class predicted at the start); a sample stops once the
    teacher no longer predicts its starting class.
    """
    teacher.eval()
    with torch.no_grad():
        top = teacher(x).argmax(1)
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        logits = teacher(adv)
        s_top, s_target = logits.gather(1, top[:, None]), logits.gather(1, target[:, None])
        grad, = torch.autograd.grad((s_target - s_top).sum(), adv)
        with torch.no_grad():
            active = (logits.argmax(1) == top).float()[:, None, None, None]
            if not active.any():
                break
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            gap = (s_top - s_target)[:, :, None, None]
            adv = (adv + step_alpha * active * (gap + 1e-4) * grad / norm).clamp(0, 1)
    return adv.detach()


def sample_targets(teacher_logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A target class per row, drawn in proportion to the teacher's probabilities of the classes other
    than its top one (the paper's target-class sampling)."""
    probs = F.softmax(teacher_logits, 1)
    probs = probs.scatter(1, probs.argmax(1, keepdim=True), 0.0)
    return torch.multinomial(probs.clamp_min(1e-12), 1, generator=gen).squeeze(1)


def _kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    return -(F.softmax(teacher / temperature, 1) * F.log_softmax(student / temperature, 1)).sum(1).mean()


@dataclass
class BoundarySupportingLoss:
    """The paper's objective: CE on the base samples + ``ratio`` · KD on them + ``ratio_attack`` · KD on
    boundary samples made from them, with the paper's per-epoch schedules of both ratios."""

    teacher: nn.Module
    config: BSSConfig
    ratio: float = 1.0
    ratio_attack: float = 0.0
    boundary: int = field(default=0)  # boundary samples made so far

    def start_epoch(self, epoch: int, epochs: int) -> None:
        e = epoch + 1
        self.ratio = max(3 * (1 - e / epochs), 0) + 1
        self.ratio_attack = max(2 * (1 - 4 / 3 * e / epochs), 0)

    def __call__(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x, y = batch.x, batch.y
        teacher = self.teacher.to(x.device).eval()
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = model(x)
        kd = _kd(s_logits, t_logits, self.config.temperature)
        loss = F.cross_entropy(s_logits, y) + self.ratio * kd
        if self.ratio_attack > 0:
            adv = self._boundary_batch(x, y, t_logits, s_logits, batch.gen)
            if adv is not None:
                with torch.no_grad():
                    adv_t = teacher(adv)
                loss = loss + self.ratio_attack * _kd(model(adv), adv_t, self.config.temperature)
                self.boundary += len(adv)
        return {"loss": loss, "kd": kd.detach()}

    def _boundary_batch(self, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor, s_logits: torch.Tensor,
                        gen: torch.Generator) -> torch.Tensor | None:
        """Boundary samples for one batch: correctly classified bases where teacher and student disagree
        most (outside the true class), moved towards a sampled target class."""
        correct = (t_logits.argmax(1) == y).nonzero().squeeze(1)
        if len(correct) == 0:
            return None
        if len(correct) > self.config.attack_size:
            diff = (F.softmax(t_logits[correct], 1) - F.softmax(s_logits[correct].detach(), 1)) ** 2
            score = diff.sum(1) - diff.gather(1, y[correct][:, None]).squeeze(1)
            correct = correct[score.argsort(descending=True)[:self.config.attack_size]]
        targets = sample_targets(t_logits[correct].detach().cpu(), gen).to(x.device)
        return boundary_samples(self.teacher, x[correct].detach(), targets, self.config.attack_steps,
                                self.config.step_alpha)


class _BoundarySupportingSamples(TransferMethod):
    """KD with boundary-supporting adversarial samples (Heo et al. 2019) on ``base`` images."""

    config_class = BSSConfig
    base: str = "synthetic"  # synthetic (data-free) | members (real images: the paper's setting)

    def train(self, context: MethodContext, out_dir: Path, progress: ProgressFn) -> MethodResult:
        recipe = context.student_recipe
        # 1. base samples: the synthetic rounds (labels = the intended class; GKD's recycling period)
        # or the real members (validated on the real carve-out)
        if self.base == "members":
            if context.real is None:
                raise ValueError("bss on members needs the real member images")
            bases, val = (context.real.members,), context.real.validation
        else:
            bases, val = context.synthetic, None

        def data_for_epoch(epoch: int) -> TensorData:
            return bases[(epoch // max(context.regen_every, 1)) % len(bases)]

        # 2. the student, trained with the paper's loss and schedules through the one loop
        objective = BoundarySupportingLoss(context.teacher, self.config)
        result = fit(build_classifier(recipe, context.num_classes), data_for_epoch, objective, recipe, val=val,
                     checkpoint=Path(out_dir) / "student.ckpt", progress=progress, stage="bss student")
        return MethodResult.saved(result, out_dir, base=self.base, base_images=sum(len(b) for b in bases),
                                  boundary_samples=objective.boundary)


@register
class GKDWithBoundarySamples(_BoundarySupportingSamples):
    """Data-free: BSS distillation on the synthetic rounds (GKD + BSS)"""

    name = "gkd+bss"
    base = "synthetic"


@register
class BoundarySamplesOnMembers(_BoundarySupportingSamples):
    """The paper's setting: BSS distillation on the real members (not private: a reference point)"""

    name = "bss"
    base = "members"
    reads_real_training_images = True
