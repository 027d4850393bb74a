"""Checks of every synthetic round against the real data, run by the experiment once the teacher is
trained (it is their feature extractor, so nothing is downloaded):

- **fidelity**: class fidelity, Fréchet distance and precision / recall / density / coverage
  (``generators/fidelity.py``), and CAS (Ravuri & Vinyals 2019: a classifier trained on one round's
  images with their intended labels, tested on the real test split);
- **memorisation**: each synthetic image's nearest member and non-member, copies flagged, the
  data-copying statistic C_T (``privacy/memorisation.py``);
- the **copy gate**: images flagged as near-copies of a member are redrawn before the student sees them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .classifiers.train import TrainConfig
from .core.common import ProgressFn, no_progress, write_json
from .data.context import DataContext
from .distill import evaluate_on_test, train_on_labels
from .generate import SyntheticSet, regenerate
from .generators.fidelity import penultimate_features, synthetic_fidelity
from .privacy.memorisation import (
    MemorisationConfig,
    copy_flags,
    copy_rule,
    flagged_copies,
    memorisation_audit,
)

logger = logging.getLogger(__name__)

Embedding = Callable[[torch.Tensor], np.ndarray]  # images (N, C, H, W) -> (N, d)


def round_fidelity(teacher: nn.Module, data: DataContext, rounds: list[SyntheticSet], size: int | None,
                   cas_recipe: TrainConfig | None, seed: int, progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Fidelity of each round against the real members at the teacher's input ``size`` (also
    ``fidelity.json`` in each round's folder), the mean over rounds, and CAS on round 0 with
    ``cas_recipe`` (None: no CAS)."""
    members = data.tensors("members", size)
    per_round = []
    for k, synthetic in enumerate(rounds):
        made = synthetic.tensors(size)
        figures = synthetic_fidelity(teacher, made.x, made.y, members.x, data.num_classes, seed=seed + k)
        write_json(synthetic.root / "fidelity.json", figures)
        per_round.append(figures)
    mean = {key: float(np.mean([r[key] for r in per_round]))
            for key in ("class_fidelity", "frechet_distance", "precision", "recall", "density", "coverage")}
    cas = classification_accuracy_score(data, rounds[0], cas_recipe, progress) if cas_recipe else None
    return {**mean, "cas": cas, "rounds": per_round, "feature_extractor": "teacher (penultimate layer)",
            "cas_recipe": f"student recipe, hard labels, round 0, {cas_recipe.epochs} epochs" if cas else None}


def classification_accuracy_score(data: DataContext, synthetic: SyntheticSet, recipe: TrainConfig,
                                  progress: ProgressFn = no_progress, val_fraction: float = 0.1) -> float:
    """CAS (Ravuri & Vinyals 2019): test accuracy of a classifier trained on one synthetic round with the
    labels the images were generated for (no teacher): how much of the task the images alone carry. A
    seeded ``val_fraction`` of the round is held out for the recipe's early stopping (never a real image)."""
    images = synthetic.tensors(recipe.image_size)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(recipe.seed))
    n_val = int(round(val_fraction * len(images))) if recipe.early_stopping else 0
    model = train_on_labels(images.rows(order[n_val:]), recipe, data.num_classes, progress, stage="cas",
                            val=images.rows(order[:n_val]) if n_val else None)
    return float(evaluate_on_test(model, data.tensors("test", recipe.image_size), data.num_classes)["accuracy"])


def cas_recipe(student: TrainConfig, cas_epochs: int) -> TrainConfig | None:
    """The student recipe for at most ``cas_epochs`` epochs, its floor of steps and early stopping kept
    (None when 0: off)."""
    return replace(student, epochs=min(cas_epochs, student.epochs)) if cas_epochs else None


def round_memorisation(teacher: nn.Module, data: DataContext, rounds: list[SyntheticSet], size: int | None,
                       config: MemorisationConfig) -> dict[str, Any]:
    """Memorisation audit of every round (``memorisation.json`` and per-image nearest real images in
    ``neighbours.jsonl`` in each round's folder) in the teacher's feature space, and in pixel space for
    small images. ``copies`` counts the images flagged in any space (:func:`flagged_copies`, the one copy
    count: ``copies_by_space`` has each space's own), ``rule`` says so in words; the fresh real images'
    flag rate uses the same rule; C_T is the feature space's, averaged over rounds."""
    # 1. the real images in every space, once
    members, nonmembers = data.tensors("members", size), data.tensors("nonmembers", size)
    spaces = audit_spaces(teacher, members.x, config)
    real = {space: (embed(members.x), embed(nonmembers.x)) for space, embed in spaces.items()}
    # 2. each round: nearest real images and flags per space, and the one copy flag
    per_round, flags = [], []
    for synthetic in rounds:
        made = synthetic.tensors(size)
        found = {space: memorisation_audit(spaces[space](made.x), *real[space], members.ids, nonmembers.ids, config)
                 for space in spaces}
        _write_neighbours(synthetic, found)
        summary = {space: figures for space, (_, figures) in found.items()}
        write_json(synthetic.root / "memorisation.json", summary)
        per_round.append(summary)
        flags.append(flagged_copies({space: [image["copy"] for image in images]
                                     for space, (images, _) in found.items()}))
    # 3. the set: copies by the one rule, the same rule on fresh real images
    copied = np.concatenate(flags)
    fresh = flagged_copies({space: copy_flags(nonmember_x, member_x, config.copy_quantile)[0]
                            for space, (member_x, nonmember_x) in real.items()})
    cts = [r["features"]["ct"] for r in per_round if r["features"]["ct"] is not None]
    return {"copies": int(copied.sum()), "copy_rate": float(copied.mean()),
            "copies_by_space": {space: int(sum(r[space]["copies"] for r in per_round)) for space in spaces},
            "nonmember_flag_rate": float(fresh.mean()), "ct": float(np.mean(cts)) if cts else None,
            "rule": copy_rule(config.copy_quantile, spaces), "rounds": per_round,
            "space": "teacher penultimate features" + (" and pixels" if "pixels" in spaces else "")}


def _write_neighbours(synthetic: SyntheticSet, found: dict[str, tuple[list[Any], Any]]) -> None:
    with open(synthetic.root / "neighbours.jsonl", "w", encoding="utf-8") as f:
        for j, item in enumerate(synthetic.items):
            row = {"index": item.index, "file": item.file, "label": item.label,
                   **{space: images[j] for space, (images, _) in found.items()}}
            f.write(json.dumps(row) + "\n")


def audit_spaces(teacher: nn.Module, members_x: torch.Tensor, config: MemorisationConfig) -> dict[str, Embedding]:
    """Where the memorisation audit measures distances: the teacher's penultimate features, and raw
    pixels for images up to ``config.pixel_max_side``."""
    spaces: dict[str, Embedding] = {"features": lambda x: penultimate_features(teacher, x)[0]}
    if max(members_x.shape[-2:]) <= config.pixel_max_side:
        spaces["pixels"] = lambda x: x.flatten(1).numpy()
    return spaces


def copy_gate(teacher: nn.Module, data: DataContext, rounds: list[SyntheticSet], generator: Any, size: int | None,
              config: MemorisationConfig, attempts: int) -> tuple[list[SyntheticSet], dict[str, Any]]:
    """Redraw the synthetic images flagged as near-copies of a member (the memorisation audit's flag, in
    the teacher's features and, for small images, in pixels) up to ``attempts`` times. Returns the gated
    rounds and, per round, how many were flagged, redrawn and still flagged at the end."""
    members = data.tensors("members", size)
    spaces = audit_spaces(teacher, members.x, config)
    references = {space: embed(members.x) for space, embed in spaces.items()}

    def flagged(synthetic: SyntheticSet) -> list[int]:
        x = synthetic.tensors(size).x
        hits = flagged_copies({space: copy_flags(embed(x), references[space], config.copy_quantile)[0]
                               for space, embed in spaces.items()})
        return [synthetic.items[j].index for j in np.flatnonzero(hits)]

    gated, report = [], []
    for synthetic in rounds:
        hits = flagged(synthetic)
        first, redrawn = len(hits), 0
        for attempt in range(1, attempts + 1):
            if not hits:
                break
            synthetic = regenerate(synthetic, hits, generator, attempt)
            redrawn += len(hits)
            hits = flagged(synthetic)
        gated.append(synthetic)
        report.append({"flagged": first, "redrawn": redrawn, "still_flagged": len(hits)})
    logger.info("copy gate: %s", report)
    return gated, {"attempts": attempts, "rounds": report, "flagged": sum(r["flagged"] for r in report),
                   "still_flagged": sum(r["still_flagged"] for r in report)}


def gate_file(run_dir: Path) -> Path:
    return Path(run_dir) / "copy_gate.json"
