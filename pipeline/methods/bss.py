"""Knowledge distillation with boundary-supporting samples (Heo, Lee, Yun & Choi, AAAI 2019).

Each step, the base samples the teacher classifies correctly and on which the student disagrees
most with it (at most ``attack_size``) are moved by an iterative targeted attack on the teacher
towards the decision boundary of a target class drawn in proportion to the teacher's probabilities
of the other classes; the attack stops for a sample as soon as the teacher's top class changes, so
it ends just at the boundary. The student learns CE on the base samples + ``ratio`` · KD on them +
``ratio_attack`` · KD on the boundary samples, with the paper's schedules
``ratio = max(3 (1 − e/E), 0) + 1`` and ``ratio_attack = max(2 (1 − 4e/(3E)), 0)`` and its
KD term −Σ softmax(t/T) log softmax(s/T). Adapted from the authors' reference code
(github.com/bhheo/BSS_distillation, ``attack_BSS.py`` and ``train_BSS_distillation.py``); the
optimiser is this product's AdamW + cosine schedule, shared by every student.

Method ``gkd+bss`` takes the experiment's synthetic rounds as base samples: data-free, it composes
with GKD. Method ``bss`` is the paper's setting on the real members, not private: a reference point.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..classifiers.train import augment_batch, cosine_schedule, evaluate
from ..core.common import Progress, ProgressFn, check_loss, resolve_device
from ..distill import build_model
from . import MethodContext, MethodResult, TransferMethod, register


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


class _BoundarySupportingSamples(TransferMethod):
    """KD with boundary-supporting adversarial samples (Heo et al. 2019) on ``base`` images."""

    config_class = BSSConfig
    base: str = "synthetic"  # synthetic (data-free) | members (real images: the paper's setting)

    def train(self, context: MethodContext, out_dir: Path, progress: ProgressFn) -> MethodResult:
        cfg, recipe = self.config, context.student_recipe
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        device = resolve_device(recipe.device)
        teacher = context.teacher.to(device).eval()
        # 1. base samples: the synthetic rounds (labels = the intended class) or the real members
        if self.base == "members":
            if context.real is None:
                raise ValueError("bss on members needs the real member images")
            bases, val = (context.real.members,), context.real.validation
        else:  # GKD's recycling: `regen_every` epochs on one round, then the next
            bases, val = context.synthetic, None
        base = bases[0]
        # 2. the student, trained with the paper's loss and schedules
        gen = torch.Generator().manual_seed(recipe.seed)
        model = build_model(recipe, context.num_classes).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps_per_epoch = math.ceil(len(base) / recipe.batch_size)
        total = recipe.epochs * steps_per_epoch
        scheduler = cosine_schedule(optimizer, total)
        started, first, history = time.monotonic(), None, []
        boundary = 0
        for epoch in range(1, recipe.epochs + 1):
            ratio = max(3 * (1 - epoch / recipe.epochs), 0) + 1
            ratio_attack = max(2 * (1 - 4 / 3 * epoch / recipe.epochs), 0)
            model.train()
            base = bases[((epoch - 1) // max(context.regen_every, 1)) % len(bases)]
            order = torch.randperm(len(base), generator=gen)
            for step, start in enumerate(range(0, len(base), recipe.batch_size)):
                idx = order[start:start + recipe.batch_size]
                x, y = augment_batch(base.x[idx], recipe, gen).to(device), base.y[idx].to(device)
                with torch.no_grad():
                    t_logits = teacher(x)
                s_logits = model(x)
                loss = F.cross_entropy(s_logits, y) + ratio * _kd(s_logits, t_logits, cfg.temperature)
                if ratio_attack > 0:
                    adv = self._boundary_batch(teacher, model, x, y, t_logits, s_logits, gen)
                    if adv is not None:
                        with torch.no_grad():
                            adv_t = teacher(adv)
                        loss = loss + ratio_attack * _kd(model(adv), adv_t, cfg.temperature)
                        boundary += len(adv)
                value = float(loss.detach())
                check_loss(value, first, "bss student", f"epoch {epoch}, step {step + 1}", recipe.lr)
                first = value if first is None else first
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                progress(Progress("bss student", (epoch - 1) * steps_per_epoch + step + 1, total,
                                  {"epoch": epoch, "loss": value}))
            row: dict[str, Any] = {"epoch": epoch, "loss": value}
            if val is not None and len(val):
                row["val_accuracy"] = evaluate(model, val, context.num_classes, device=device)["accuracy"]
            history.append(row)
        path = out_dir / "model.pt"
        torch.save(model.state_dict(), path)
        return MethodResult(model.eval(), path, {
            "base": self.base, "base_images": sum(len(b) for b in bases), "boundary_samples": boundary, "epochs_run": recipe.epochs,
            "train_seconds": round(time.monotonic() - started, 2), "history": history})

    def _boundary_batch(self, teacher: nn.Module, student: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        t_logits: torch.Tensor, s_logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        """Boundary samples for one batch: correctly classified bases where teacher and student disagree
        most (outside the true class), moved towards a sampled target class."""
        correct = (t_logits.argmax(1) == y).nonzero().squeeze(1)
        if len(correct) == 0:
            return None
        if len(correct) > self.config.attack_size:
            diff = (F.softmax(t_logits[correct], 1) - F.softmax(s_logits[correct].detach(), 1)) ** 2
            score = diff.sum(1) - diff.gather(1, y[correct][:, None]).squeeze(1)
            correct = correct[score.argsort(descending=True)[:self.config.attack_size]]
        targets = sample_targets(t_logits[correct].cpu(), gen).to(x.device)
        return boundary_samples(teacher, x[correct].detach(), targets, self.config.attack_steps, self.config.step_alpha)


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
