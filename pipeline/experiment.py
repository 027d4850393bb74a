"""The whole TCKR loop as one run: caption → generator → synthetic rounds → teacher → GKD student →
membership-inference audit of both (the student in transfer and pipeline mode). ``python -m pipeline quickstart`` runs it on the built-in dataset;
``python -m pipeline run CONFIG.json`` on any dataset, backbone and generator.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audit import AuditConfig, PipelineShadows, audit
from .caption import CaptionConfig, caption
from .captions.captioners import CaptionerConfig
from .captions.prompts import DEFAULT_TEMPLATE
from .classifiers.train import TrainConfig
from .core.cluster import SINGLE, Cluster
from .core.common import (
    Progress,
    ProgressFn,
    from_dict,
    no_progress,
    read_json,
    safe_filename,
    to_jsonable,
    write_json,
)
from .core.project import Project
from .core.runs import Link, config_differences, throttle
from .data.datasets import DatasetConfig, load_dataset, skipped_images
from .distill import (
    DistillConfig,
    evaluate_on_test,
    real_tensors,
    synthetic_tensors,
    train_student,
    train_teacher,
)
from .finetune import FinetuneConfig, finetune, finished_generator
from .generate import GenerateConfig, SyntheticSet, synthesize
from .generators.fidelity import penultimate_features, synthetic_fidelity
from .methods import create_method
from .privacy.memorisation import MemorisationConfig, memorisation_audit

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
    cas_epochs: int = 15  # fidelity: CAS classifier (student recipe, hard labels, round 0) epochs; 0: off
    memorisation: MemorisationConfig = field(default_factory=MemorisationConfig)  # copy audit of each round
    copy_gate: int = 0  # regenerate images flagged as member copies, up to this many times, before the student (0: off)
    methods: tuple[tuple[str, dict[str, Any]], ...] = ()  # other students on the same plane: (name, options),
    # e.g. (("am", {}), ("gkd+bss", {}), ("bss", {}), ("dp-sgd", {"epsilon": 1})); see pipeline.methods
    seed: int = 0  # seeds generation

    def __post_init__(self) -> None:
        if not self.cardinality > 0:
            raise ValueError(f"cardinality must be positive, got {self.cardinality}")
        for name in ("rounds", "generation_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.cas_epochs < 0 or self.copy_gate < 0:
            raise ValueError(f"cas_epochs and copy_gate must be >= 0, got {self.cas_epochs}, {self.copy_gate}")
        object.__setattr__(self, "methods", tuple((str(n), dict(o or {})) for n, o in self.methods))
        labels = [create_method(n, o).label() for n, o in self.methods]  # unknown names / options fail here
        if len(set(labels)) != len(labels):
            raise ValueError(f"methods {labels} contain the same method twice")

    def validate(self) -> None:
        """Everything that can be checked before a stage runs: the generator backend and its options
        (built, not trained); raises ValueError naming the field."""
        from .generators import create_generator

        create_generator(self.generator, **dict(self.generator_options))

    @classmethod
    def from_file(cls, path: Path) -> ExperimentConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return from_dict(cls, data)


@dataclass(frozen=True)
class ExperimentResult:
    run_id: str
    metrics: dict[str, Any]  # also in runs/<id>/metrics.json
    seconds: float


def run_experiment(config: ExperimentConfig, project: Project, progress: ProgressFn = no_progress,
                   run_id: str | None = None, resume: bool = False, cluster: Cluster = SINGLE) -> ExperimentResult:
    """Run the whole loop; every stage is also recorded as its own run with lineage.

    With a distributed ``cluster`` (``accelerate launch``; called in its main process) the synthetic
    rounds and the audit's shadows are shared out over its processes; the other stages run here.

    ``run_id`` is a queued experiment run to execute (the studio queues runs in the background); with
    ``resume`` it is an interrupted experiment to continue: finished stages are reused, an
    interrupted one continues from its checkpoint or manifest, with the caption version it started with.
    """
    started = time.monotonic()
    config.validate()  # a bad option fails now, not after the generator trained
    # 1. data and the member / non-member split
    dataset = load_dataset(config.dataset)
    split = dataset.membership()
    n_classes = len(dataset.class_names)
    registry = project.registry()
    if run_id is None:
        run = registry.create("experiment", config, links=[Link("data", "dataset", dataset.fingerprint)])
    else:
        run = registry.get(run_id)
    timings: dict[str, float] = {}
    progress = _RunReporter(registry, run.id, run.run_dir / "events.jsonl", progress)

    def timed(name: str, t0: float) -> None:
        timings[name] = round(timings.get(name, 0.0) + time.monotonic() - t0, 2)
        registry.report(run.id, progress={"stage": name, "done": 1, "total": 1}, timings=timings)

    with ExitStack() as stack:
        # a second process executing this run stops here, before it writes anything
        stack.enter_context(registry.claim(run.id))
        earlier = _earlier_stages(registry.get(run.id), config, dataset.fingerprint, resume)
        timings.update(registry.get(run.id).metrics.get("timings", {}) if resume else {})
        stack.enter_context(registry.track(run.id))
        registry.link(run.id, Link("data", "dataset", dataset.fingerprint))
        write_json(run.run_dir / "membership.json", split.to_dict())
        # 2. captions: a pinned curated version as is, else caption what is missing
        t0 = time.monotonic()
        captions = _Pinned(*_store_version(earlier["captions"])) if "captions" in earlier else \
            _captions(config, project, progress)
        registry.link(run.id, Link("captions", "captions", f"{captions.store}@{captions.version}"))
        timed("caption", t0)
        # pipeline-mode shadows need only the data, captions and config: on a multi-core CPU they train
        # in worker processes while this process trains the experiment's own generator (one core)
        pipeline_shadows = None
        if "pipeline" in config.audit.modes and not cluster.distributed:  # a cluster shares them out later
            pipeline_shadows = PipelineShadows(config.audit, config, f"{captions.store}@{captions.version}",
                                               project).start()
        stack.callback(lambda: pipeline_shadows and pipeline_shadows.stop())

        # 3. generator on the member images and their captions (a finished one is reused)
        t0 = time.monotonic()
        generator_config = FinetuneConfig(dataset=config.dataset, generator=config.generator,
                                          options=config.generator_options, store=captions.store,
                                          store_version=captions.version, template=config.template)
        previous = earlier.get("generator")
        if previous and registry.get(previous).status == "done":
            trained = finished_generator(registry, previous)
        else:
            trained = finetune(generator_config, project, progress, resume=previous,
                               registered=lambda rid: registry.relink(run.id, Link("generator", "run", rid)))
        timed("generator", t0)

        # 4. synthetic rounds from the members' captions (a finished round is reused, a partial one resumed)
        t0 = time.monotonic()
        rounds, round_runs = [], []
        for k in range(config.rounds):
            out_dir = run.run_dir / "synthetic" / f"round-{k}"
            previous = earlier.get(f"synthetic round {k}")
            if previous and registry.get(previous).status == "done":
                rounds.append(SyntheticSet.load(out_dir))
                round_runs.append(previous)
                continue
            made = synthesize(GenerateConfig(
                generator=str(trained.generator_dir), prompts=f"store:{captions.store}@{captions.version}",
                template=config.template, dataset=config.dataset, cardinality=config.cardinality, round=k,
                seed=config.seed, batch_size=config.generation_batch, out_dir=str(out_dir)), project, progress,
                cluster=cluster)
            registry.relink(run.id, Link(f"synthetic round {k}", "run", made.run_id))
            rounds.append(made.synthetic)
            round_runs.append(made.run_id)
        timed("generate", t0)

        # 5. teacher on real members, student on synthetic rounds only (each recorded as its own run)
        t0 = time.monotonic()
        with _stage_run(registry, run.id, "teacher", config.teacher, [Link("data", "dataset", dataset.fingerprint)],
                        earlier.get("teacher")) as teacher_run:
            teacher = train_teacher(dataset, split, config.teacher, run.run_dir, progress)
        timed("teacher", t0)
        gate = read_json(run.run_dir / "copy_gate.json") if (run.run_dir / "copy_gate.json").exists() else None
        if config.copy_gate and gate is None:  # near-copies of a member are redrawn before the student sees them
            t0 = time.monotonic()
            rounds, gate = _copy_gate(teacher.model, dataset, split, rounds, trained.generator_dir, config)
            write_json(run.run_dir / "copy_gate.json", gate)  # once: a resumed run keeps the gated rounds
            timed("copy gate", t0)
        t0 = time.monotonic()
        rounds_links = [Link("teacher", "run", teacher_run)] + \
            [Link(f"synthetic round {k}", "run", rid) for k, rid in enumerate(round_runs)]
        with _stage_run(registry, run.id, "student", config.distill, rounds_links, earlier.get("student")) as student_run:
            student = train_student(teacher.model, rounds, config.distill, n_classes, run.run_dir, progress,
                                    teacher_recipe=config.teacher)
        timed("student", t0)

        # 5b. the other transfer methods on the same teacher (and rounds), each its own run
        t0 = time.monotonic()
        methods = _train_methods(config, registry, run, teacher, rounds, dataset, split, n_classes, earlier,
                                 [Link("teacher", "run", teacher_run)], progress)
        if methods:
            timed("methods", t0)

        # 6. fidelity of every synthetic round, with the teacher as the feature extractor
        t0 = time.monotonic()
        fidelity = _round_fidelity(teacher.model, dataset, split, rounds, config, n_classes, progress)
        memorisation = _round_memorisation(teacher.model, dataset, split, rounds, config)
        timed("fidelity", t0)

        # 7. test accuracy on the real test split
        test = real_tensors(dataset, [r.id for r in dataset.split("test")], config.teacher.image_size)
        test_at = _sized(dataset, test, config.teacher.image_size)  # decoded once per input size
        teacher_test = evaluate_on_test(teacher.model, test, n_classes)
        student_test = evaluate_on_test(student.model, test_at(config.distill.student.image_size), n_classes)
        registry.link(run.id, Link("teacher", "run", teacher_run), Link("student", "run", student_run))
        registry.report(teacher_run, accuracy=teacher_test["accuracy"], weights=str(teacher.checkpoint))
        registry.report(student_run, accuracy=student_test["accuracy"], weights=str(student.checkpoint))

        # 8. the audit stage: the teacher with its own recipe, the student in transfer and pipeline mode
        t0 = time.monotonic()
        audited = audit(replace(config.audit, experiment=run.id), project, progress, pipeline_shadows, cluster)
        timed("audit", t0)

        # 9. metrics
        metrics = {
            "teacher": _model_metrics(teacher_test, audited.metrics["teacher"], teacher.metrics),
            "student": _model_metrics(student_test, audited.metrics["student"], student.metrics),
            "audit": {"run": audited.run_id, "headline_attack": config.audit.headline,
                      "shadows": audited.metrics["shadows"], "vulnerable": audited.metrics["vulnerable"]},
            **_run_summary(config, dataset, split, len(test), rounds, trained.metrics),
            "fidelity": fidelity,
            "memorisation": memorisation,
            "copy_gate": gate,
            "methods": {key: {**_model_metrics(evaluate_on_test(m.model, test_at(m.size), n_classes),
                                               audited.metrics[key], m.metrics),
                              "method": m.name, "label": key, "reads_real_training_images": m.reads_real,
                              "epsilon": m.metrics.get("epsilon")} for key, m in methods.items()},
            "timings": timings,
            "seconds": round(time.monotonic() - started, 2),
            "resumed": resume,
        }
        unreadable = skipped_images(dataset)
        metrics["dataset"]["unreadable"] = len(unreadable)
        if unreadable:  # every stage skipped them; listed once here
            write_json(run.run_dir / "unreadable_images.json", unreadable)
            logger.warning("%d unreadable images were skipped in every stage; listed in %s", len(unreadable),
                           run.run_dir / "unreadable_images.json")
        write_json(run.run_dir / "metrics.json", metrics)
        registry.report(run.id, **{"teacher_accuracy": metrics["teacher"]["accuracy"],
                                   "student_accuracy": metrics["student"]["accuracy"],
                                   "teacher_auc": metrics["teacher"]["mia"]["auc"],
                                   "student_auc": metrics["student"]["mia"]["auc"],
                                   "student_mia_mode": metrics["student"]["mia"]["mia_mode"],
                                   "class_fidelity": fidelity["class_fidelity"],
                                   "frechet_distance": fidelity["frechet_distance"],
                                   "precision": fidelity["precision"], "recall": fidelity["recall"],
                                   "cas": fidelity["cas"], "copies": memorisation["copies"],
                                   "copy_rate": memorisation["copy_rate"], "ct": memorisation["ct"]})
    return ExperimentResult(run.id, metrics, time.monotonic() - started)


def _captions(config: ExperimentConfig, project: Project, progress: ProgressFn) -> Any:
    """A pinned curated caption version as is, else caption what is missing (``.store``, ``.version``)."""
    if config.store_version is None:
        return caption(CaptionConfig(dataset=config.dataset, captioner=config.captioner, store=config.store),
                       project, progress)
    if not config.store:
        raise ValueError("store_version needs the store it belongs to (set `store`)")
    pinned = project.caption_store(config.store)
    pinned.records(config.store_version)  # fails early with the valid range
    return _Pinned(pinned.name, config.store_version)


def _round_fidelity(teacher: Any, dataset: Any, split: Any, rounds: list[Any], config: ExperimentConfig,
                    n_classes: int, progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Fidelity of each synthetic round against the real members (also ``fidelity.json`` in each
    round's folder), and the mean over rounds."""
    members = real_tensors(dataset, split.members, config.teacher.image_size)
    per_round = []
    for k, synthetic in enumerate(rounds):
        data = synthetic_tensors(synthetic, config.teacher.image_size)
        figures = synthetic_fidelity(teacher, data.x, data.y, members.x, n_classes, seed=config.seed + k)
        write_json(synthetic.root / "fidelity.json", figures)
        per_round.append(figures)
    mean = {key: float(np.mean([r[key] for r in per_round]))
            for key in ("class_fidelity", "frechet_distance", "precision", "recall", "density", "coverage")}
    cas = _classification_accuracy_score(dataset, rounds[0], config, n_classes, progress) \
        if config.cas_epochs else None
    return {**mean, "cas": cas, "rounds": per_round, "feature_extractor": "teacher (penultimate layer)",
            "cas_recipe": f"student recipe, hard labels, round 0, {config.cas_epochs} epochs" if cas else None}


def _round_memorisation(teacher: Any, dataset: Any, split: Any, rounds: list[Any],
                        config: ExperimentConfig) -> dict[str, Any]:
    """Memorisation audit of every synthetic round (``memorisation.json`` and per-image nearest real
    images in ``neighbours.jsonl`` in each round's folder) in the teacher's feature space, and in pixel
    space for small images; the copies summed and the other figures averaged over rounds."""
    size, audit_config = config.teacher.image_size, config.memorisation
    real = {name: real_tensors(dataset, ids, size) for name, ids in
            (("members", split.members), ("nonmembers", split.nonmembers))}
    spaces = _audit_spaces(teacher, real["members"].x, audit_config)
    per_round = []
    for synthetic in rounds:
        data = synthetic_tensors(synthetic, size)
        found = {space: memorisation_audit(embed(data.x), embed(real["members"].x), embed(real["nonmembers"].x),
                                           real["members"].ids, real["nonmembers"].ids, audit_config)
                 for space, embed in spaces.items()}
        with open(synthetic.root / "neighbours.jsonl", "w", encoding="utf-8") as f:
            for j, item in enumerate(synthetic.items):
                row = {"index": item.index, "file": item.file, "label": item.label,
                       **{space: images[j] for space, (images, _) in found.items()}}
                f.write(json.dumps(row) + "\n")
        summary = {space: figures for space, (_, figures) in found.items()}
        write_json(synthetic.root / "memorisation.json", summary)
        per_round.append(summary)
    features = [r["features"] for r in per_round]
    return {"copies": int(sum(r["copies"] for r in features)),
            "copy_rate": float(np.mean([r["copy_rate"] for r in features])),
            "nonmember_flag_rate": float(np.mean([r["nonmember_flag_rate"] for r in features])),
            "ct": float(np.mean(cts)) if (cts := [r["ct"] for r in features if r["ct"] is not None]) else None,
            "pixel_copies": int(sum(r["pixels"]["copies"] for r in per_round)) if "pixels" in spaces else None,
            "rounds": per_round, "space": "teacher penultimate features" + (" and pixels" if "pixels" in spaces else "")}


def _sized(dataset: Any, test: Any, size: int | None) -> Any:
    """``size -> the test split at that input size``: ``test`` (at ``size``) as is, others decoded once."""
    cache = {size: test}

    def at(wanted: int | None) -> Any:
        if wanted not in cache:
            cache[wanted] = real_tensors(dataset, test.ids, wanted)
        return cache[wanted]

    return at


def _audit_spaces(teacher: Any, members_x: torch.Tensor, config: MemorisationConfig) -> dict[str, Any]:
    """Where the memorisation audit measures distances: the teacher's penultimate features, and raw
    pixels for images up to ``config.pixel_max_side`` (name -> images (N, C, H, W) -> (N, d) array)."""
    spaces = {"features": lambda x: penultimate_features(teacher, x)[0]}
    if max(members_x.shape[-2:]) <= config.pixel_max_side:
        spaces["pixels"] = lambda x: x.flatten(1).numpy()
    return spaces


def _copy_gate(teacher: Any, dataset: Any, split: Any, rounds: list[Any], generator_dir: Path,
               config: ExperimentConfig) -> tuple[list[Any], dict[str, Any]]:
    """Redraw the synthetic images flagged as near-copies of a member (the memorisation audit's flag, in
    the teacher's features and, for small images, in pixels) up to ``config.copy_gate`` times. Returns
    the gated rounds and, per round, how many were flagged, redrawn and still flagged at the end."""
    from .finetune import load_generator
    from .generate import regenerate
    from .privacy.memorisation import copy_flags

    size, quantile = config.teacher.image_size, config.memorisation.copy_quantile
    members = real_tensors(dataset, split.members, size)
    spaces = list(_audit_spaces(teacher, members.x, config.memorisation).values())
    references = [embed(members.x) for embed in spaces]

    def flagged(synthetic: Any) -> list[int]:
        x = synthetic_tensors(synthetic, size).x
        hits = np.zeros(len(synthetic), dtype=bool)
        for embed, reference in zip(spaces, references):
            hits |= copy_flags(embed(x), reference, quantile)[0]
        return [synthetic.items[j].index for j in np.flatnonzero(hits)]

    generator, gated, report = load_generator(generator_dir), [], []
    for synthetic in rounds:
        hits = flagged(synthetic)
        first, redrawn = len(hits), 0
        for attempt in range(1, config.copy_gate + 1):
            if not hits:
                break
            synthetic = regenerate(synthetic, hits, generator, attempt)
            redrawn += len(hits)
            hits = flagged(synthetic)
        gated.append(synthetic)
        report.append({"flagged": first, "redrawn": redrawn, "still_flagged": len(hits)})
    logger.info("copy gate: %s", report)
    return gated, {"attempts": config.copy_gate, "rounds": report,
                   "flagged": sum(r["flagged"] for r in report), "still_flagged": sum(r["still_flagged"] for r in report)}


def _classification_accuracy_score(dataset: Any, synthetic: Any, config: ExperimentConfig, n_classes: int,
                                   progress: ProgressFn) -> float:
    """CAS (Ravuri & Vinyals 2019): test accuracy of a classifier trained on one synthetic round with
    the labels the images were generated for (no teacher): how much of the task the images alone carry."""
    from .classifiers.train import fit_classifier
    from .distill import build_model

    recipe = replace(config.distill.student, epochs=min(config.cas_epochs, config.distill.student.epochs),
                     patience=None)
    data = synthetic_tensors(synthetic, recipe.image_size)
    model = build_model(recipe, n_classes)
    fit_classifier(model, lambda _: data, recipe, progress=progress, stage="cas")
    test = real_tensors(dataset, [r.id for r in dataset.split("test")], recipe.image_size)
    return float(evaluate_on_test(model, test, n_classes)["accuracy"])


def _run_summary(config: ExperimentConfig, dataset: Any, split: Any, n_test: int, rounds: list[Any],
                 generator_metrics: dict[str, Any]) -> dict[str, Any]:
    """The data, synthetic-set and generator figures of an experiment's ``metrics.json``."""
    return {
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "members": len(split.members),
                    "nonmembers": len(split.nonmembers), "test": n_test},
        "synthetic": {"rounds": len(rounds), "images_per_round": len(rounds[0]), "cardinality": config.cardinality},
        "generator": {"backend": config.generator,
                      **{k: v for k, v in generator_metrics.items() if isinstance(v, (int, float))}},
    }


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


@contextmanager
def _stage_run(registry: Any, experiment: str, kind: str, config: Any, links: list[Link],
               earlier: str | None = None, role: str | None = None) -> Iterator[str]:
    """Record one training stage of the experiment as its own run (status, config, lineage), linked to
    the experiment at once so that a resume finds it; ``earlier`` = the same stage's run of an
    interrupted attempt (continued; a finished one is only read back from its checkpoint)."""
    run = registry.get(earlier) if earlier else registry.create(kind, config, links=links)
    registry.link(experiment, Link(role or kind, "run", run.id))
    if run.status == "done":
        yield run.id
        return
    with registry.track(run.id):
        yield run.id


@dataclass
class _TrainedMethod:
    name: str
    model: Any
    metrics: dict[str, Any]
    reads_real: bool
    size: int | None  # input size


def _train_methods(config: ExperimentConfig, registry: Any, run: Any, teacher: Any, rounds: list[Any], dataset: Any,
                   split: Any, n_classes: int, earlier: dict[str, str], links: list[Link],
                   progress: ProgressFn) -> dict[str, _TrainedMethod]:
    """Every configured transfer method (``config.methods``) trained on the teacher, each recorded as its
    own run and listed in ``methods.json`` for the audit. Only a method that reads real training images
    gets them (see :class:`pipeline.methods.MethodContext`)."""
    from .methods import MethodContext, RealData

    trained: dict[str, _TrainedMethod] = {}
    if not config.methods:
        return trained
    recipe = config.distill.student
    synthetic = tuple(synthetic_tensors(r, recipe.image_size) for r in rounds)
    shape = tuple(real_tensors(dataset, split.members[:8], config.teacher.image_size).x.shape[1:])  # the teacher input
    listing: dict[str, Any] = {}
    for name, options in config.methods:
        method = create_method(name, options)
        key, folder = method.label(), run.run_dir / "methods" / safe_filename(method.label().replace("+", "-plus-"))
        real = RealData(real_tensors(dataset, split.members, recipe.image_size),
                        real_tensors(dataset, split.validation, recipe.image_size) if split.validation else None) \
            if method.reads_real() else None
        context = MethodContext(teacher.model, config.teacher, recipe, config.distill.temperature, config.distill.alpha,
                                n_classes, shape, synthetic, config.distill.regen_every, real, config.seed)
        with _stage_run(registry, run.id, "method", {"method": name, "options": options}, links,
                        earlier.get(f"method {key}"), role=f"method {key}") as method_run:
            if (folder / "metrics.json").exists() and registry.get(method_run).status == "done":
                model = _method_model(recipe, n_classes, dp=name == "dp-sgd")
                model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu"))
                metrics = read_json(folder / "metrics.json")
            else:
                started = time.monotonic()
                result = method.train(context, folder, progress)
                model = result.model
                metrics = {**to_jsonable(result.metrics), "seconds": round(time.monotonic() - started, 2)}
                write_json(folder / "metrics.json", metrics)
        trained[key] = _TrainedMethod(name, model.eval(), metrics, method.reads_real(), recipe.image_size)
        listing[key] = {"method": name, "options": options, "run": method_run, "recipe": to_jsonable(recipe),
                        "checkpoint": str(folder / "model.pt"), "reads_real_training_images": method.reads_real(),
                        "dp": name == "dp-sgd"}
        write_json(run.run_dir / "methods.json", listing)
    return trained


def _method_model(recipe: Any, n_classes: int, dp: bool = False) -> Any:
    """An untrained model of a method's architecture (DP-SGD's with BatchNorm swapped as Opacus does)."""
    from .distill import build_model

    model = build_model(replace(recipe, pretrained=False), n_classes)
    if dp:
        from opacus.validators import ModuleValidator

        model = ModuleValidator.fix(model)
    return model


def _earlier_stages(record: Any, config: ExperimentConfig, fingerprint: str, resume: bool) -> dict[str, str]:
    """role -> run or caption ref of an experiment's earlier attempt (empty for a fresh run); refuses a run
    that is not in a state to (re)start."""
    if not resume:
        if record.status != "queued":
            raise ValueError(f"run {record.id} is {record.status}, not queued"
                             + (f"; `run --resume {record.id}` continues it" if record.status != "done" else ""))
        return {}
    if record.kind != "experiment":
        raise ValueError(f"run {record.id} is a {record.kind} run; `run --resume` takes an experiment run id")
    if record.status == "done":
        raise ValueError(f"run {record.id} is already finished; nothing to resume")
    differences = config_differences(from_dict(ExperimentConfig, record.config), config)  # defaults filled
    if differences:
        raise ValueError(f"run {record.id} was started with another config ({'; '.join(differences)})")
    earlier = {link.role: link.ref for link in record.links}
    if earlier.get("data", fingerprint) != fingerprint:
        raise ValueError(f"the data of run {record.id} changed since it started (dataset fingerprint "
                         f"{earlier['data'][:12]}, now {fingerprint[:12]}); start a new run")
    return earlier


def _store_version(ref: str) -> tuple[str, int]:
    store, _, version = ref.rpartition("@")
    return store, int(version)


def _model_metrics(test: dict[str, Any], audited: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": test["accuracy"],
        "per_class_accuracy": test["per_class_accuracy"],
        "aop": audited["aop"],
        "mia": audited["mia"],  # the headline mode (pipeline for the student when it ran); mia.auc = headline attack
        "mia_modes": audited["mia_modes"],  # every mode, each with every attack
        "train": {k: v for k, v in train.items() if k != "history"},
        "history": train.get("history", []),
    }


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows of the printed results table: one per audited model and mode, headline attack first."""
    def fmt(value: Any, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    rows = []
    models = [("teacher", metrics["teacher"], True), ("student", metrics["student"], True)] + \
        [(key + (" (reads real)" if m.get("reads_real_training_images") else ""), m, False)
         for key, m in metrics.get("methods", {}).items()]  # other methods: the headline attack only
    for name, m, every_attack in models:
        for mode, entry in m.get("mia_modes", {m["mia"].get("mia_mode", "transfer"): m["mia"]}).items():
            others = [a for a in ("lira", "rmia", "loss") if a != entry.get("attack") and a in entry]
            for attack in [entry.get("attack", "lira")] + (others if every_attack else []):
                res = entry.get(attack, entry)
                if "auc" not in res:
                    rows.append([name, fmt(m["accuracy"]), mode, attack, "skipped", "-", "-", "-", "-"])
                    continue
                ci = res.get("auc_ci95")
                headline = attack == entry.get("attack")
                rows.append([name, fmt(m["accuracy"]), mode, attack + (" *" if headline else ""), fmt(res["auc"]),
                             f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-", fmt(res.get("tpr_at_1pct_fpr")),
                             fmt(res.get("tpr_at_0.1pct_fpr")),
                             fmt(entry["aop"]) if headline and "aop" in entry else "-"])
    return rows


SUMMARY_HEADER = ["model", "accuracy", "audit mode", "attack", "AUC", "95% CI", "TPR@1%FPR", "TPR@0.1%FPR", "AOP"]


def config_json(config: ExperimentConfig) -> str:
    return json.dumps(to_jsonable(config), indent=2)
