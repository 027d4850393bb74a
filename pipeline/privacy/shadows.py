"""Membership-inference audit: LiRA with shadow models (Carlini et al. 2022), TCKR step 5.

The *population* is every audited real training image: the members (which the teacher and the
generator saw) and the non-members (which nothing saw). Each shadow model trains on a random half of
the population with the teacher's recipe; every example is "in" for exactly half the shadows. The
shadows' per-example scores are cached under ``<project>/shadows/<key>/`` and reused for the teacher
and every student of the same data; the maths lives in :mod:`pipeline.privacy.metrics`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..classifiers.models import ClassifierSpec, create_classifier, vmap_compatible
from ..classifiers.stacked import TrainRecipe, predict_stacked, train_stacked
from ..classifiers.train import TensorData, TrainConfig, fit_classifier, predict_logits
from ..core.common import (
    ProgressFn,
    config_hash,
    no_progress,
    read_json,
    seed_everything,
    to_jsonable,
    write_json,
)
from . import metrics as pm

logger = logging.getLogger(__name__)

VIEWS = ("orig", "flip", "shift")


@dataclass(frozen=True)
class AuditConfig:
    """How the membership-inference audit is run."""

    n_shadows: int = 16  # shadow models (even; each example is "in" for half of them)
    views: tuple[str, ...] = ("orig", "shift")  # query augmentations: orig, flip, shift (1-pixel roll)
    online: bool = True  # online LiRA (in and out Gaussians); False = offline (out only)
    fixed_variance: bool = False  # one global sigma instead of per-example (better with few shadows)
    batched: bool = True  # train shadows stacked with vmap when the model allows it
    bootstrap: int = 1000  # bootstrap replicates for the AUC interval
    seed: int = 0  # seeds the in/out assignment and the shadows' training

    def __post_init__(self) -> None:
        if self.n_shadows < 4 or self.n_shadows % 2:
            raise ValueError(f"n_shadows must be an even number >= 4, got {self.n_shadows}")
        unknown = set(self.views) - set(VIEWS)
        if unknown or not self.views:
            raise ValueError(f"unknown views {sorted(unknown)}; valid: {', '.join(VIEWS)}")


class ShadowCacheMismatch(ValueError):
    """A cached shadow set was made for different data, recipe or seed than requested."""


@dataclass(frozen=True)
class ShadowSet:
    """Scores of every shadow on every population example, and who was in which shadow."""

    scores: np.ndarray  # (m, n, a) logit-scaled confidences
    shadow_in: np.ndarray  # (m, n) bool
    directory: Path
    seconds: float  # training time (0 when loaded from the cache)
    cached: bool


def assign_shadows(n_examples: int, n_shadows: int, seed: int) -> np.ndarray:
    """(m, n) bool: example j is in exactly m/2 shadows, chosen at random per example."""
    rng = np.random.default_rng(seed)
    ranks = rng.random((n_shadows, n_examples)).argsort(axis=0).argsort(axis=0)
    return ranks < n_shadows // 2


def query_views(x: torch.Tensor, views: tuple[str, ...]) -> list[torch.Tensor]:
    """The audited images under each query augmentation, (N, C, H, W) each."""
    out = []
    for view in views:
        if view == "orig":
            out.append(x)
        elif view == "flip":
            out.append(x.flip(-1))
        elif view == "shift":  # one pixel right, zero-filled (like the crop augmentation's shift)
            shifted = torch.zeros_like(x)
            shifted[..., 1:] = x[..., :-1]
            out.append(shifted)
    return out


def model_scores(logits_per_view: list[torch.Tensor], labels: torch.Tensor) -> np.ndarray:
    """(n, a) logit-scaled confidences of one model over ``a`` views."""
    y = labels.numpy()
    return np.stack([pm.logit_scaled_confidence(v.numpy().astype(np.float64), y) for v in logits_per_view], -1)


def shadow_manifest(fingerprint: str, population_ids: list[str], recipe: TrainConfig, config: AuditConfig,
                    num_classes: int) -> dict[str, Any]:
    """What identifies a shadow set; its hash is the cache key."""
    ids_hash = hashlib.sha256("\n".join(population_ids).encode()).hexdigest()
    return {"dataset": fingerprint, "population": ids_hash, "population_size": len(population_ids),
            "recipe": to_jsonable(recipe), "n_shadows": config.n_shadows, "views": list(config.views),
            "seed": config.seed, "num_classes": num_classes}


def load_or_train_shadows(cache_root: Path, manifest: dict[str, Any], data: TensorData, recipe: TrainConfig,
                          config: AuditConfig, progress: ProgressFn = no_progress,
                          cache_dir: Path | None = None) -> ShadowSet:
    """Reuse the cached shadow set for ``manifest`` or train it.

    ``cache_dir`` pins a specific folder (e.g. shadows made earlier); if its manifest differs from
    the requested one, that is a :class:`ShadowCacheMismatch`, never a silent reuse.
    """
    directory = Path(cache_dir) if cache_dir else Path(cache_root) / config_hash(manifest, 16)
    if (directory / "manifest.json").exists():
        cached = read_json(directory / "manifest.json")
        if cached != manifest:
            diff = sorted(k for k in set(cached) | set(manifest) if cached.get(k) != manifest.get(k))
            raise ShadowCacheMismatch(f"shadow cache {directory} was made for different {', '.join(diff)}; "
                                      "delete it or use another cache folder")
        if (directory / "scores.npy").exists():
            logger.info("reusing %d cached shadows from %s", manifest["n_shadows"], directory)
            return ShadowSet(np.load(directory / "scores.npy"), np.load(directory / "shadow_in.npy"),
                             directory, 0.0, True)
    elif cache_dir and directory.exists() and any(directory.iterdir()):
        raise ShadowCacheMismatch(f"{directory} is not a shadow cache (no manifest.json)")

    started = time.monotonic()
    shadow_in = assign_shadows(len(data), config.n_shadows, config.seed)
    scores = train_shadow_scores(data, shadow_in, recipe, config, manifest["num_classes"], progress)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "scores.npy", scores)
    np.save(directory / "shadow_in.npy", shadow_in)
    write_json(directory / "manifest.json", manifest)  # written last: marks the cache complete
    return ShadowSet(scores, shadow_in, directory, time.monotonic() - started, False)


def train_shadow_scores(data: TensorData, shadow_in: np.ndarray, recipe: TrainConfig, config: AuditConfig,
                        num_classes: int, progress: ProgressFn = no_progress) -> np.ndarray:
    """Train the shadows (stacked when possible, else one by one); return scores (m, n, a)."""
    def factory() -> nn.Module:
        return create_classifier(ClassifierSpec(recipe.model, num_classes, 3, False))

    views = query_views(data.x, config.views)
    stackable = config.batched and vmap_compatible(factory()) and \
        not {"augmix", "mixup"} & set(recipe.augment) and recipe.patience is None
    if stackable:
        stacked = TrainRecipe(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                              weight_decay=recipe.weight_decay, label_smoothing=recipe.label_smoothing,
                              augment_flip="flip" in recipe.augment,
                              crop_padding=recipe.crop_padding if "crop" in recipe.augment else 0,
                              seed=recipe.seed + 1000 * (config.seed + 1))
        state = train_stacked(factory, data.x, data.y, torch.from_numpy(shadow_in), stacked, progress)
        logits = [predict_stacked(factory, state, v) for v in views]  # a x (m, n, k)
        return np.stack([np.stack([pm.logit_scaled_confidence(lg[i].numpy().astype(np.float64), data.y.numpy())
                                   for lg in logits], -1) for i in range(shadow_in.shape[0])])
    scores = []
    for i in range(shadow_in.shape[0]):
        idx = torch.from_numpy(np.flatnonzero(shadow_in[i]))
        subset = TensorData(data.x[idx], data.y[idx])
        seed_everything(recipe.seed + 1000 * (config.seed + 1) + i)
        model = factory()
        shadow_recipe = TrainConfig(**{**to_jsonable(recipe), "augment": tuple(recipe.augment),
                                       "seed": recipe.seed + 1000 * (config.seed + 1) + i})
        fit_classifier(model, lambda _, s=subset: s, shadow_recipe, progress=progress, stage=f"shadow {i + 1}")
        scores.append(model_scores([predict_logits(model, v) for v in views], data.y))
    return np.stack(scores)


def audit_model(model: nn.Module, data: TensorData, is_member: np.ndarray, shadows: ShadowSet,
                config: AuditConfig, accuracy: float | None = None) -> dict[str, Any]:
    """LiRA and loss-threshold attacks on one model; returns attack metrics (AUC, TPR@FPR, AOP, ROC)."""
    views = query_views(data.x, config.views)
    target = model_scores([predict_logits(model, v) for v in views], data.y)  # (n, a)
    lira = pm.lira_scores(target, shadows.scores, shadows.shadow_in, online=config.online,
                          fixed_variance=config.fixed_variance)
    metrics = pm.attack_metrics(lira, is_member, accuracy=accuracy, n_boot=config.bootstrap, seed=config.seed)
    logits = predict_logits(model, data.x)
    losses = torch.nn.functional.cross_entropy(logits, data.y, reduction="none").numpy()
    baseline = pm.attack_metrics(pm.loss_threshold_scores(losses), is_member, n_boot=0)
    metrics["loss_attack"] = {k: baseline[k] for k in ("auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr")}
    return metrics
