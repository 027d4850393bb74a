"""The stakeholder demo's logic: a finished run's teacher and student classify an image, and its
synthetic samples can be browsed. Only synthetic images are ever read here: the demo must not show
real (private) training images. The Gradio page over this is ``studio/demo.py``
(``python -m pipeline demo --run ID``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..classifiers.models import load_classifier
from ..classifiers.train import TrainConfig, images_to_tensor, predict_logits
from ..core.common import from_dict, read_json
from ..core.project import Project
from ..data.images import open_checked
from ..generate import SyntheticSet
from .legend import model_name
from .report import points_from_metrics

logger = logging.getLogger(__name__)

ROLES = ("teacher", "student")


@dataclass(frozen=True)
class SyntheticSample:
    """One synthetic training image of the run."""

    path: Path
    label: int
    class_name: str
    prompt: str
    round: int


@dataclass
class DemoModels:
    """What the demo shows: the two classifiers of one run, its classes and its synthetic samples."""

    run_id: str
    class_names: list[str]
    models: dict[str, nn.Module]  # "teacher" / "student", in eval mode on the CPU
    input_size: tuple[int, int]  # (width, height) the teacher was trained at
    samples: list[SyntheticSample]
    metrics: dict  # the run's metrics.json (accuracy, MIA AUC ...), {} when absent
    input_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # per role; missing: input_size


@dataclass(frozen=True)
class Prediction:
    class_name: str
    probability: float


def load_demo(project: Project, run_id: str) -> DemoModels:
    """Rebuild a finished experiment run's teacher and student and list its synthetic samples."""
    # 1. the run and the recipes its models were trained with
    record = project.registry().get(run_id)
    if record.kind != "experiment":
        raise ValueError(f"run {run_id} is a {record.kind} run; the demo needs an experiment run")
    run_dir = record.run_dir
    missing = [f"{role}.pt" for role in ROLES if not (run_dir / f"{role}.pt").exists()]
    if missing:
        raise FileNotFoundError(f"run {run_id} has no {', '.join(missing)} (status {record.status}); "
                                "pick a finished run")
    recipes = {"teacher": from_dict(TrainConfig, record.config["teacher"]),
               "student": from_dict(TrainConfig, record.config["distill"]["student"])}
    # 2. synthetic samples; their plan also names the classes
    rounds = sorted((run_dir / "synthetic").glob("round-*"))
    if not rounds:
        raise FileNotFoundError(f"run {run_id} has no synthetic sets in {run_dir / 'synthetic'}")
    sets = [(int(r.name.split("-")[1]), SyntheticSet.load(r)) for r in rounds]
    class_names = list(sets[0][1].class_names)
    samples = [SyntheticSample(s.root / item.file, item.label, class_names[item.label], item.prompt, k)
               for k, s in sets for item in s.items]
    # 3. the classifiers, at the size they were trained at
    models = {}
    for role, recipe in recipes.items():
        models[role] = load_classifier(run_dir / f"{role}.pt", recipe, len(class_names))
    with Image.open(samples[0].path) as first:
        native = first.size
    input_sizes = {role: (r.image_size, r.image_size) if r.image_size else native for role, r in recipes.items()}
    metrics_file = run_dir / "metrics.json"
    metrics = read_json(metrics_file) if metrics_file.exists() else {}
    return DemoModels(run_id, class_names, models, input_sizes["teacher"], samples, metrics, input_sizes)


def read_upload(path: str | Path) -> Image.Image:
    """An image a visitor uploaded, its pixel count checked from the header before it is decoded (a 10 KB
    PNG can hold 88 million pixels); raises ValueError or OSError in one line."""
    return open_checked(path, "the uploaded image")


def predict(demo: DemoModels, image: Image.Image, top_k: int = 3) -> dict[str, list[Prediction]]:
    """Top-k classes with probabilities from the teacher and the student, for one image.

    The image is converted to RGB and resized to each classifier's own input size.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    image = image.convert("RGB")
    out = {}
    for role, model in demo.models.items():
        size = demo.input_sizes.get(role, demo.input_size)  # each model at its own input size
        x = images_to_tensor([image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)])
        probs = torch.softmax(predict_logits(model, x, device="cpu")[0], dim=0)
        values, indices = probs.topk(min(top_k, len(demo.class_names)))
        out[role] = [Prediction(demo.class_names[int(i)], float(v)) for v, i in zip(values, indices)]
    return out


def samples_of(demo: DemoModels, class_name: str | None = None, limit: int = 48) -> list[SyntheticSample]:
    """Up to ``limit`` synthetic samples (of one class, or spread over all classes)."""
    if class_name is not None:
        return [s for s in demo.samples if s.class_name == class_name][:limit]
    per_class: dict[int, list[SyntheticSample]] = {}
    for s in demo.samples:
        per_class.setdefault(s.label, []).append(s)
    picked: list[SyntheticSample] = []
    for k in range(limit):  # round-robin over classes, so every class shows up
        for items in per_class.values():
            if k < len(items) and len(picked) < limit:
                picked.append(items[k])
    return picked


def model_names(demo: DemoModels) -> dict[str, str]:
    """The teacher's and the student's names in words, as the Trade-offs page and the report give them (a DP
    run's student is the DP generator's)."""
    try:
        names = {p.role: p.name for p in points_from_metrics(demo.run_id, demo.metrics)}
    except (KeyError, TypeError, ValueError):  # no metrics.json, or one without an audit: the plain names
        names = {}
    return {role: names.get(role, model_name(role)) for role in ROLES}


def as_scores(predictions: Sequence[Prediction]) -> dict[str, float]:
    """{class: probability}, the shape a label widget shows."""
    return {p.class_name: p.probability for p in predictions}
