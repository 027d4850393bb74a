"""The whole TCKR loop as one run: caption → generator → synthetic rounds → teacher → GKD student →
LiRA audit of both. ``python -m pipeline quickstart`` runs it on the built-in dataset;
``python -m pipeline run CONFIG.json`` on any dataset, backbone and generator.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .caption import CaptionConfig, caption
from .captions.captioners import CaptionerConfig
from .captions.prompts import DEFAULT_TEMPLATE
from .classifiers.train import TrainConfig
from .core.common import Progress, ProgressFn, from_dict, no_progress, to_jsonable, write_json
from .core.project import Project
from .core.runs import Link, throttle
from .data.datasets import DatasetConfig, load_dataset
from .distill import DistillConfig, evaluate_on_test, real_tensors, train_student, train_teacher
from .finetune import FinetuneConfig, finetune
from .generate import GenerateConfig, synthesize
from .privacy.shadows import AuditConfig, audit_model, load_or_train_shadows, shadow_manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one end-to-end run needs; saved resolved into the run folder."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # real data and MIA split
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)  # step 1
    store: str | None = None  # caption store (default: the dataset's name)
    store_version: int | None = None  # use this curated caption version as is (None: caption, use newest)
    template: str = DEFAULT_TEMPLATE  # prompt template for training and generation
    generator: str = "scratch"  # step 2 backend: scratch | sd-lora
    generator_options: tuple[tuple[str, Any], ...] = ()  # backend config fields
    cardinality: float = 1.0  # step 3: synthetic images per round, x the number of members
    rounds: int = 2  # synthetic rounds generated for recycling
    generation_batch: int = 256  # images per generator call
    teacher: TrainConfig = field(default_factory=TrainConfig)  # step 4: the teacher's (and shadows') recipe
    distill: DistillConfig = field(default_factory=DistillConfig)  # step 4: the student
    audit: AuditConfig = field(default_factory=AuditConfig)  # step 5
    seed: int = 0  # seeds generation

    @classmethod
    def from_file(cls, path: Path) -> ExperimentConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return from_dict(cls, data)


def quickstart_config() -> ExperimentConfig:
    """The offline default: digits, class-name captions, the scratch generator, tiny CNNs."""
    # Plain recipe (no augmentation, no weight decay, 60 epochs): the most accurate teacher we measured
    # on digits (0.995 test accuracy vs 0.959 with crop + weight decay for 30 epochs).
    recipe = TrainConfig(model="tiny-cnn", epochs=60, batch_size=64, lr=3e-3, weight_decay=0.0, augment=())
    return ExperimentConfig(
        captioner=CaptionerConfig(class_template="a handwritten digit {label}"),
        cardinality=2.0,  # TCKR finds more synthetic images per real one helps the student
        rounds=3,
        teacher=recipe,
        distill=DistillConfig(student=replace(recipe, seed=1), temperature=4.0, alpha=1.0,
                              regen_every=5),
        audit=AuditConfig(n_shadows=16, views=("orig", "shift")),
    )


@dataclass(frozen=True)
class ExperimentResult:
    run_id: str
    metrics: dict[str, Any]  # also in runs/<id>/metrics.json
    seconds: float


def run_experiment(config: ExperimentConfig, project: Project, progress: ProgressFn = no_progress,
                   run_id: str | None = None) -> ExperimentResult:
    """Run the whole loop; every stage is also recorded as its own run with lineage.

    ``run_id`` is a queued experiment run to execute (the studio queues runs in the background).
    """
    started = time.monotonic()
    # 1. data and the member / non-member split
    dataset = load_dataset(config.dataset)
    split = dataset.membership()
    n_classes = len(dataset.class_names)
    registry = project.registry()
    if run_id is None:
        run = registry.create("experiment", config, links=[Link("data", "dataset", dataset.fingerprint)])
    else:
        run = registry.get(run_id)
        registry.link(run.id, Link("data", "dataset", dataset.fingerprint))
    write_json(run.run_dir / "membership.json", split.to_dict())
    timings: dict[str, float] = {}
    progress = _RunReporter(registry, run.id, run.run_dir / "events.jsonl", progress)

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.monotonic() - t0, 2)
        registry.report(run.id, progress={"stage": name, "done": 1, "total": 1}, timings=timings)

    with registry.track(run.id):
        # 2. captions: a pinned curated version as is, else caption what is missing
        t0 = time.monotonic()
        if config.store_version is not None:
            if not config.store:
                raise ValueError("store_version needs the store it belongs to (set `store`)")
            pinned = project.caption_store(config.store)
            pinned.records(config.store_version)  # fails early with the valid range
            captions = _Pinned(pinned.name, config.store_version)
        else:
            captions = caption(CaptionConfig(dataset=config.dataset, captioner=config.captioner,
                                             store=config.store), project, progress)
        registry.link(run.id, Link("captions", "captions", f"{captions.store}@{captions.version}"))
        timed("caption", t0)

        # 3. generator on the member images and their captions
        t0 = time.monotonic()
        trained = finetune(FinetuneConfig(dataset=config.dataset, generator=config.generator,
                                          options=config.generator_options, store=captions.store,
                                          store_version=captions.version, template=config.template),
                           project, progress)
        registry.link(run.id, Link("generator", "run", trained.run_id))
        timed("generator", t0)

        # 4. synthetic rounds from the members' captions
        t0 = time.monotonic()
        rounds = []
        for k in range(config.rounds):
            made = synthesize(GenerateConfig(
                generator=str(trained.generator_dir), prompts=f"store:{captions.store}@{captions.version}",
                template=config.template, dataset=config.dataset, cardinality=config.cardinality, round=k,
                seed=config.seed, batch_size=config.generation_batch,
                out_dir=str(run.run_dir / "synthetic" / f"round-{k}")), project, progress)
            registry.link(run.id, Link(f"synthetic round {k}", "run", made.run_id))
            rounds.append(made.synthetic)
        timed("generate", t0)

        # 5. teacher on real members, student on synthetic rounds only
        t0 = time.monotonic()
        teacher = train_teacher(dataset, split, config.teacher, run.run_dir, progress)
        timed("teacher", t0)
        t0 = time.monotonic()
        student = train_student(teacher.model, rounds, config.distill, n_classes, run.run_dir, progress)
        timed("student", t0)

        # 6. test accuracy on the real test split
        test = real_tensors(dataset, [r.id for r in dataset.split("test")], config.teacher.image_size)
        teacher_test = evaluate_on_test(teacher.model, test, n_classes)
        student_test = evaluate_on_test(student.model, test, n_classes)

        # 7. LiRA audit of both against shared shadows
        t0 = time.monotonic()
        population = real_tensors(dataset, list(split.members) + list(split.nonmembers), config.teacher.image_size)
        members = set(split.members)
        is_member = np.array([i in members for i in population.ids])
        manifest = shadow_manifest(dataset.fingerprint, population.ids, config.teacher, config.audit, n_classes)
        shadows = load_or_train_shadows(project.root / "shadows", manifest, population, config.teacher,
                                        config.audit, progress)
        teacher_mia = audit_model(teacher.model, population, is_member, shadows, config.audit,
                                  teacher_test["accuracy"])
        student_mia = audit_model(student.model, population, is_member, shadows, config.audit,
                                  student_test["accuracy"])
        timed("audit", t0)

        # 8. metrics
        metrics = {
            "teacher": _model_metrics(teacher_test, teacher_mia, teacher.metrics),
            "student": _model_metrics(student_test, student_mia, student.metrics),
            "shadows": {"n": config.audit.n_shadows, "cached": shadows.cached,
                        "train_seconds": round(shadows.seconds, 2), "directory": str(shadows.directory)},
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "members": len(split.members),
                        "nonmembers": len(split.nonmembers), "test": len(test)},
            "synthetic": {"rounds": len(rounds), "images_per_round": len(rounds[0]),
                          "cardinality": config.cardinality},
            "generator": {"backend": config.generator, **{k: v for k, v in trained.metrics.items()
                                                          if isinstance(v, (int, float))}},
            "timings": timings,
            "seconds": round(time.monotonic() - started, 2),
        }
        write_json(run.run_dir / "metrics.json", metrics)
        registry.report(run.id, **{"teacher_accuracy": metrics["teacher"]["accuracy"],
                                   "student_accuracy": metrics["student"]["accuracy"],
                                   "teacher_auc": metrics["teacher"]["mia"]["auc"],
                                   "student_auc": metrics["student"]["mia"]["auc"]})
    return ExperimentResult(run.id, metrics, time.monotonic() - started)


@dataclass(frozen=True)
class _Pinned:
    store: str
    version: int


class _RunReporter:
    """Forwards progress events and, at most once a second (and at every epoch end), stores the
    latest in the registry and appends it to ``events.jsonl`` for live curves. The registry call is
    also where a cancel request is noticed (it raises ``RunCancelled``)."""

    def __init__(self, registry: Any, run_id: str, events: Path, forward: ProgressFn) -> None:
        self.registry, self.run_id, self.events, self.forward = registry, run_id, events, forward
        self.ready = throttle(1.0)

    def __call__(self, event: Progress) -> None:
        self.forward(event)
        epoch_end = bool(event.info.get("epoch_end"))
        if self.ready(force=epoch_end):
            record = {"t": round(time.time(), 2), "stage": event.stage, "done": event.done,
                      "total": event.total, **to_jsonable(event.info)}
            with open(self.events, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.registry.report(self.run_id, progress=record)


def _model_metrics(test: dict[str, Any], mia: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": test["accuracy"],
        "per_class_accuracy": test["per_class_accuracy"],
        "aop": mia["aop"],
        "mia": {k: v for k, v in mia.items() if k != "aop"},
        "train": {k: v for k, v in train.items() if k != "history"},
        "history": train.get("history", []),
    }


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows of the printed results table."""
    rows = []
    for name in ("teacher", "student"):
        m = metrics[name]
        rows.append([name, f"{m['accuracy']:.4f}", f"{m['mia']['auc']:.4f}",
                     f"[{m['mia']['auc_ci95'][0]:.3f}, {m['mia']['auc_ci95'][1]:.3f}]" if m["mia"]["auc_ci95"] else "-",
                     f"{m['mia']['tpr_at_0.1pct_fpr']:.4f}", f"{m['mia']['tpr_at_1pct_fpr']:.4f}", f"{m['aop']:.4f}"])
    return rows


def config_json(config: ExperimentConfig) -> str:
    return json.dumps(to_jsonable(config), indent=2)
