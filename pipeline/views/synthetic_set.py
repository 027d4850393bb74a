"""The synthetic training set an experiment actually used: every image of every round with the prompt
that made it, the memorisation audit's nearest real images and copy flags (``neighbours.jsonl``), and
the run's teacher's label and confidence (class fidelity: does the teacher see the intended class?).

    view = load_synthetic_set(project, run_id)          # decodes the rounds once, runs the teacher
    shown = filter_images(view.images, SyntheticFilter(rounds=(0,), only_misclassified=True))

Read-only: nothing is written into the run folder. The studio's Synthetic set and Leak explorer pages
draw this; the private studio may show real member images beside (``members_by_class``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..classifiers.models import load_classifier
from ..classifiers.train import TrainConfig
from ..core.common import from_dict, read_json
from ..core.project import Project
from ..core.runs import RunRecord
from ..data.datasets import DatasetConfig, ImageDataset, load_dataset
from ..generate import SyntheticSet
from ..generators.fidelity import penultimate_features
from ..privacy.memorisation import MemorisationConfig, copy_rule, flagged_copies

logger = logging.getLogger(__name__)

SPACES = ("features", "pixels")  # where the memorisation audit measured distances (see experiment.py)


@dataclass(frozen=True)
class Neighbour:
    """The memorisation audit's verdict on one synthetic image in one space."""

    member: str  # id of the nearest real member
    member_distance: float
    nonmember: str  # id of the nearest real non-member
    nonmember_distance: float
    copy: bool  # closer to the member than the copy threshold (a near-duplicate)


@dataclass(frozen=True)
class SyntheticImage:
    """One synthetic training image of an experiment."""

    round: int  # generation round k (synthetic/round-k)
    index: int  # index in the round's plan
    path: Path  # the image file
    label: int  # the class it was generated for
    class_name: str
    prompt: str  # the prompt (class + caption) that generated it
    neighbours: dict[str, Neighbour] = field(default_factory=dict)  # by space; {} without an audit
    teacher_label: int | None = None  # the teacher's argmax class
    teacher_confidence: float | None = None  # the teacher's softmax probability of that class

    @property
    def faithful(self) -> bool | None:
        """Does the teacher see the intended class (None: not labelled yet)?"""
        return None if self.teacher_label is None else self.teacher_label == self.label

    @property
    def copied(self) -> bool:
        """Flagged as a near-copy of a member in any audited space: the one copy flag
        (``privacy.memorisation.flagged_copies``) that the run's metrics, the CLI and the report count."""
        return bool(self.neighbours) and bool(flagged_copies({s: [n.copy] for s, n in self.neighbours.items()})[0])


@dataclass
class SyntheticSetView:
    """An experiment's synthetic rounds labelled by its teacher."""

    run_id: str
    dataset: DatasetConfig
    class_names: list[str]
    images: list[SyntheticImage]
    members_by_class: dict[int, list[str]]  # real member ids per class (membership.json)
    features: np.ndarray  # (n, d) teacher penultimate features of ``images`` (the audit's "features" space)
    pixels: np.ndarray | None  # (n, 3 s s) pixels at the teacher's input size, when the audit used pixels
    copy_thresholds: dict[tuple[int, str], float]  # (round, space) -> the memorisation audit's threshold
    teacher: nn.Module = field(repr=False)
    recipe: TrainConfig = field(repr=False)
    copy_rule: str = ""  # what a flagged copy is, in words (``privacy.memorisation.copy_rule``)

    def rounds(self) -> list[int]:
        return sorted({im.round for im in self.images})


@dataclass(frozen=True)
class SyntheticFilter:
    """Which synthetic images to show."""

    rounds: tuple[int, ...] = ()  # rounds to keep (empty: all)
    classes: tuple[int, ...] = ()  # intended classes to keep (empty: all)
    only_misclassified: bool = False  # keep only images the teacher labels as another class
    only_flagged: bool = False  # keep only images flagged as near-copies of a member


# -- reading the run -------------------------------------------------------------------------------------------
def browsable_runs(project: Project) -> list[RunRecord]:
    """Finished experiments with a teacher and synthetic rounds (newest first)."""
    return [r for r in project.registry().list(kind="experiment", status="done", limit=10_000)
            if (r.run_dir / "teacher.pt").exists() and (r.run_dir / "synthetic" / "round-0" / "plan.json").exists()]


def read_rounds(run_dir: Path) -> tuple[list[str], list[SyntheticImage], dict[tuple[int, str], float]]:
    """(class names, every synthetic image of every round in order, copy thresholds) from the rounds'
    manifests and the memorisation audit's ``neighbours.jsonl`` / ``memorisation.json``."""
    folders = sorted((Path(run_dir) / "synthetic").glob("round-*"), key=lambda p: int(p.name.split("-")[1]))
    if not folders:
        raise FileNotFoundError(f"no synthetic rounds in {Path(run_dir) / 'synthetic'}")
    class_names: list[str] = []
    images: list[SyntheticImage] = []
    thresholds: dict[tuple[int, str], float] = {}
    for folder in folders:
        k = int(folder.name.split("-")[1])
        synthetic = SyntheticSet.load(folder)
        class_names = list(synthetic.class_names)
        audit = _neighbours(folder / "neighbours.jsonl")
        images += [SyntheticImage(k, item.index, folder / item.file, item.label, class_names[item.label], item.prompt,
                                  audit.get(item.index, {})) for item in synthetic.items]
        if (folder / "memorisation.json").exists():
            summary = read_json(folder / "memorisation.json")
            thresholds.update({(k, space): float(s["copy_threshold"]) for space, s in summary.items()})
    return class_names, images, thresholds


def _neighbours(path: Path) -> dict[int, dict[str, Neighbour]]:
    """index -> space -> Neighbour from one round's ``neighbours.jsonl`` ({} when absent)."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out[int(row["index"])] = {space: Neighbour(row[space]["member"], float(row[space]["member_distance"]),
                                                   row[space]["nonmember"], float(row[space]["nonmember_distance"]),
                                                   bool(row[space]["copy"]))
                                  for space in SPACES if space in row}
    return out


def load_teacher(record: RunRecord, num_classes: int) -> tuple[nn.Module, TrainConfig]:
    """The experiment's trained teacher (eval mode, CPU) and its recipe."""
    recipe = from_dict(TrainConfig, record.config["teacher"])
    return load_classifier(record.run_dir / "teacher.pt", recipe, num_classes), recipe


def teacher_outputs(teacher: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (n, d), softmax probabilities (n, k)) of images (n, 3, h, w)."""
    with torch.no_grad():
        features, logits = penultimate_features(teacher, x)
    return features, torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def members_by_class(dataset: ImageDataset, member_ids: Sequence[str]) -> dict[int, list[str]]:
    """Member ids grouped by their class (ids the dataset no longer has are skipped)."""
    out: dict[int, list[str]] = {}
    for image_id in member_ids:
        try:
            out.setdefault(dataset.record(image_id).label, []).append(image_id)
        except KeyError:
            continue
    return out


def load_synthetic_set(project: Project, run_id: str, dataset: ImageDataset | None = None,
                       pixel_max_side: int = 32) -> SyntheticSetView:
    """An experiment's synthetic rounds with the teacher's label and confidence for every image.

    ``dataset`` is the run's dataset when already loaded (the studio caches it); pixels are kept for
    images up to ``pixel_max_side`` (the memorisation audit's pixel space).
    """
    # 1. the run: a finished experiment with its teacher
    record = project.registry().get(run_id)
    if record.kind != "experiment" or not (record.run_dir / "teacher.pt").exists():
        raise ValueError(f"run {run_id} ({record.kind}, {record.status}) has no teacher.pt; pick a finished experiment")
    config = from_dict(DatasetConfig, record.config["dataset"])
    dataset = dataset or load_dataset(config)
    # 2. the rounds and the memorisation audit's verdicts
    class_names, images, thresholds = read_rounds(record.run_dir)
    # 3. the teacher's view of every image, round by round, at its input size
    teacher, recipe = load_teacher(record, len(class_names))
    features, probs, pixels = [], [], []
    for k in sorted({im.round for im in images}):
        x = SyntheticSet.load(record.run_dir / "synthetic" / f"round-{k}").tensors(recipe.image_size).x
        f, p = teacher_outputs(teacher, x)
        features.append(f)
        probs.append(p)
        if max(x.shape[-2:]) <= pixel_max_side:
            pixels.append(x.flatten(1).numpy())
    prob = np.concatenate(probs)
    labelled = [replace(im, teacher_label=int(prob[j].argmax()), teacher_confidence=float(prob[j].max()))
                for j, im in enumerate(images)]
    # 4. the real members of each class, for the studio's side-by-side
    split = read_json(record.run_dir / "membership.json")
    # 5. what a flagged copy is, with this run's threshold and the spaces its audit measured
    quantile = float((record.config.get("memorisation") or {}).get("copy_quantile", MemorisationConfig.copy_quantile))
    rule = copy_rule(quantile, [s for s in SPACES if any(s in im.neighbours for im in images)] or ["features"])
    return SyntheticSetView(run_id, config, class_names, labelled, members_by_class(dataset, split["members"]),
                            np.concatenate(features), np.concatenate(pixels) if len(pixels) == len(probs) else None,
                            thresholds, teacher, recipe, rule)


# -- what to show ---------------------------------------------------------------------------------------------
def filter_images(images: Sequence[SyntheticImage], flt: SyntheticFilter) -> list[SyntheticImage]:
    """The images that pass every filter, in their order."""
    return [im for im in images
            if (not flt.rounds or im.round in flt.rounds) and (not flt.classes or im.label in flt.classes)
            and (not flt.only_misclassified or im.faithful is False) and (not flt.only_flagged or im.copied)]


def class_fidelity(images: Sequence[SyntheticImage]) -> float | None:
    """Share of labelled images the teacher assigns to their intended class (None: none labelled)."""
    judged = [im.faithful for im in images if im.faithful is not None]
    return float(np.mean(judged)) if judged else None


def summary(images: Sequence[SyntheticImage]) -> dict[str, Any]:
    """Counts for the page header: images, class fidelity, mean confidence, flagged copies."""
    confidence = [im.teacher_confidence for im in images if im.teacher_confidence is not None]
    return {"images": len(images), "class_fidelity": class_fidelity(images),
            "confidence": float(np.mean(confidence)) if confidence else None,
            "flagged": sum(im.copied for im in images)}
