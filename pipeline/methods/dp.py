"""DP-SGD baseline: the student's classifier trained on the real members with differential privacy
(Abadi et al. 2016) through Opacus: per-example gradient clipping, Gaussian noise calibrated to a
target (ε, δ) with Poisson sampling, and ε as spent read back from Opacus's accountant.
It answers the stakeholder's first question ("why not just use DP?") on the same plane.

BatchNorm mixes examples and is not allowed under DP: Opacus's ``ModuleValidator.fix`` swaps it for
GroupNorm (the built-in classifiers already use GroupNorm). Augmentation is off: each step's noise is
calibrated to one use of each example.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..classifiers.train import evaluate
from ..core.common import Progress, ProgressFn, check_loss, resolve_device, seed_everything
from ..distill import build_model
from . import MethodContext, MethodResult, TransferMethod, register

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPConfig:
    """The privacy budget and the DP-SGD settings."""

    epsilon: float = 8.0  # target ε
    delta: float | None = None  # target δ (None: 1 / (2 · members))
    max_grad_norm: float = 1.0  # per-example gradient clipping bound
    epochs: int | None = None  # passes (None: the student recipe's)
    batch_size: int | None = None  # expected batch (None: 4× the recipe's: DP prefers large batches)
    lr: float | None = None  # (None: the recipe's)
    accountant: str = "prv"  # Opacus accountant: prv | rdp | gdp

    def __post_init__(self) -> None:
        if not self.epsilon > 0 or not self.max_grad_norm > 0:
            raise ValueError("epsilon and max_grad_norm must be positive")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")


@register
class DPSGD(TransferMethod):
    """The classifier trained on the real members with DP-SGD (Opacus), at a target ε"""

    name = "dp-sgd"
    config_class = DPConfig
    reads_real_training_images = True

    def label(self) -> str:
        return f"dp-sgd ε={self.config.epsilon:g}"

    def train(self, context: MethodContext, out_dir: Path, progress: ProgressFn) -> MethodResult:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        cfg, recipe = self.config, context.student_recipe
        if context.real is None:
            raise ValueError("dp-sgd trains on the real members; the context has none")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        device = resolve_device(recipe.device)
        members = context.real.members
        delta = cfg.delta if cfg.delta is not None else 1.0 / (2 * len(members))
        epochs = cfg.epochs or recipe.epochs
        batch = min(cfg.batch_size or 4 * recipe.batch_size, len(members))
        # 1. a DP-compatible model, optimiser and Poisson-sampled loader, noise calibrated to (ε, δ)
        model = ModuleValidator.fix(build_model(recipe, context.num_classes)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr or recipe.lr, weight_decay=0.0)
        seed_everything(recipe.seed)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(members.x, members.y), batch_size=batch,
                                             generator=torch.Generator().manual_seed(recipe.seed))
        engine = PrivacyEngine(accountant=cfg.accountant)
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=cfg.epsilon, target_delta=delta,
            epochs=epochs, max_grad_norm=cfg.max_grad_norm)
        # 2. train
        started, first, history, total = time.monotonic(), None, [], epochs * len(loader)
        for epoch in range(1, epochs + 1):
            model.train()
            for step, (x, y) in enumerate(loader):
                if len(x) == 0:  # Poisson sampling can draw an empty batch
                    continue
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                value = float(loss.detach())
                check_loss(value, first, "dp-sgd", f"epoch {epoch}, step {step + 1}", optimizer.param_groups[0]["lr"])
                first = value if first is None else first
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress(Progress("dp-sgd", (epoch - 1) * len(loader) + step + 1, total, {"epoch": epoch, "loss": value}))
            row: dict[str, Any] = {"epoch": epoch, "loss": value, "epsilon": engine.get_epsilon(delta)}
            if context.real.validation is not None and len(context.real.validation):
                row["val_accuracy"] = evaluate(model, context.real.validation, context.num_classes,
                                               device=device)["accuracy"]
            history.append(row)
        # 3. the plain module's weights (without Opacus's wrapper) and the privacy spent
        plain = model._module if hasattr(model, "_module") else model
        path = out_dir / "model.pt"
        torch.save(plain.state_dict(), path)
        spent = float(engine.get_epsilon(delta))
        logger.info("dp-sgd: ε = %.3f at δ = %.2g (target %.3g), noise multiplier %.3f", spent, delta, cfg.epsilon,
                    optimizer.noise_multiplier)
        return MethodResult(plain.eval(), path, {
            "epsilon": spent, "target_epsilon": cfg.epsilon, "delta": delta, "accountant": cfg.accountant,
            "noise_multiplier": float(optimizer.noise_multiplier), "max_grad_norm": cfg.max_grad_norm,
            "batch_size": batch, "epochs_run": epochs, "train_seconds": round(time.monotonic() - started, 2),
            "history": history})
