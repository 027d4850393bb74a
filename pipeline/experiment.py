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

from .audit import AuditConfig, PipelineShadows, audit
from .caption import CaptionConfig, caption
from .captions.captioners import CaptionerConfig
from .captions.prompts import DEFAULT_TEMPLATE
from .classifiers.train import TrainConfig
from .core.common import Progress, ProgressFn, from_dict, no_progress, to_jsonable, write_json
from .core.project import Project
from .core.runs import Link, throttle
from .data.datasets import DatasetConfig, load_dataset
from .distill import (
    DistillConfig,
    evaluate_on_test,
    real_tensors,
    synthetic_tensors,
    train_student,
    train_teacher,
)
from .finetune import FinetuneConfig, finetune
from .generate import GenerateConfig, synthesize
from .generators.fidelity import synthetic_fidelity

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
    seed: int = 0  # seeds generation

    def __post_init__(self) -> None:
        if not self.cardinality > 0:
            raise ValueError(f"cardinality must be positive, got {self.cardinality}")
        for name in ("rounds", "generation_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.cas_epochs < 0:
            raise ValueError(f"cas_epochs must be >= 0, got {self.cas_epochs}")

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


PRESETS = ("quick", "standard", "paper")


@dataclass(frozen=True)
class DataProfile:
    """What a preset looks at: the data's shape and size, and the device."""

    side: int  # largest side of the training images (pixels)
    channels: int  # 1 when every sampled image is grey, else 3
    members: int  # real images the teacher and the generator train on
    classes: int
    device: str  # cpu | cuda

    @classmethod
    def of(cls, dataset: Any, device: str = "auto", sample: int = 64) -> DataProfile:
        """Profile ``dataset`` from the first ``sample`` training images of every class."""
        from .core.common import resolve_device

        train = dataset.split("train")
        per_class: dict[int, int] = {}
        picked = []
        for record in train:
            if per_class.get(record.label, 0) < max(1, sample // max(len(dataset.class_names), 1)):
                per_class[record.label] = per_class.get(record.label, 0) + 1
                picked.append(record)
        side, grey = 0, True
        for _, image in dataset.iter_images(picked):
            side = max(side, *image.size)
            rgb = np.asarray(image.convert("RGB"))
            grey = grey and bool((rgb[..., :1] == rgb).all())
        device = resolve_device(device)
        return cls(side=side, channels=1 if grey else 3, members=len(dataset.membership().members),
                   classes=len(dataset.class_names), device="cuda" if device.startswith("cuda") else "cpu")


def preset_config(dataset: DatasetConfig, profile: DataProfile, preset: str = "standard") -> tuple[ExperimentConfig, list[str]]:
    """The experiment a preset runs on data of this profile, and one line per choice saying why.

    - ``standard``: chosen from the data and the device. Images up to 16 px get the digits recipe
      (tiny CNN, the small scratch UNet); larger ones a small ResNet and the scratch backend's
      recipe for their side (see ``ScratchGenerator.suggest_options``); on CUDA more shadows, rounds
      and generator steps.
    - ``quick``: the same models with about half the training, and the student audited with the
      teacher's shadows only (no pipeline shadows): a first look in a few minutes.
    - ``paper``: TCKR's published recipe (Stable Diffusion 2.1 + LoRA rank 4 at 224 px, 20 sampling
      steps, CFG 2, 20x cardinality, MobileNetV3 students, 256 shadows): needs a GPU and the Hub.
    """
    from .generators import generator_class

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    why = [f"data: {profile.members} member images of {profile.side} px, {profile.channels} channel(s), "
           f"{profile.classes} classes; device {profile.device}"]
    gpu = profile.device == "cuda"
    if preset == "paper":
        return _paper_config(dataset), why + [
            "paper: TCKR's recipe (SD 2.1 + LoRA r4, 224 px, 20 steps, CFG 2, 20x cardinality, "
            "MobileNetV3 student, 256 shadows); needs a GPU and the Hugging Face Hub"]
    quick = preset == "quick"
    if profile.side <= 16:
        # Plain recipe (no augmentation, no weight decay, 60 epochs): the most accurate teacher we
        # measured on digits (0.995 test accuracy vs 0.959 with crop + weight decay for 30 epochs).
        recipe = TrainConfig(model="tiny-cnn", epochs=30 if quick else 60, batch_size=64, lr=3e-3,
                             weight_decay=0.0, augment=())
        why.append(f"classifier: tiny-cnn, {recipe.epochs} epochs, no augmentation (images of 16 px or less)")
        cardinality, rounds, regen = 2.0, 3, 5
    else:
        size = None if profile.side <= 64 else 64
        recipe = TrainConfig(model="small-resnet", image_size=size, epochs=20 if quick else 40,
                             batch_size=64, lr=3e-3, weight_decay=5e-4, augment=("crop",),
                             crop_padding=max(1, min(profile.side, 64) // 8))
        why.append(f"classifier: small-resnet{f' at {size} px' if size else ''}, {recipe.epochs} epochs, "
                   "random-crop augmentation (flip is left off: wrong for text, digits, some scans)")
        cardinality, rounds, regen = (4.0, 4, 5) if gpu else (2.0, 2, 5)
    options = generator_class("scratch").suggest_options(profile.side, profile.channels, profile.members,
                                                         profile.device)
    if quick:
        steps = options.get("train_steps", 800)
        options = {**options, "train_steps": steps // 2}
    why.append("generator: scratch " + (", ".join(f"{k}={v}" for k, v in options.items()) or "defaults")
               + " (chosen by resolution)")
    why.append(f"synthetic: {rounds} rounds of {cardinality:g}x the members; student switches round every "
               f"{regen} epochs")
    if quick:
        audit_config = AuditConfig(n_shadows=4, modes=("transfer",), views=("orig", "shift"), headline="rmia")
        why.append("audit: 4 shadows of the teacher's recipe; the student is audited with them (transfer "
                   "mode only, no pipeline shadows); no CAS")
    else:
        # RMIA, built for few reference models, is the headline attack; `benchmarks/audit.py` shows
        # what more shadows change. Each pipeline shadow reruns the whole loop on half the population.
        n_shadows, n_pipeline = (16, 4) if gpu else (4, 2)
        audit_config = AuditConfig(n_shadows=n_shadows, pipeline_shadows=n_pipeline, views=("orig", "shift"),
                                   headline="rmia")
        why.append(f"audit: {n_shadows} transfer shadows (teacher's recipe) and {n_pipeline} pipeline shadows "
                   "(each reruns generator, rounds, teacher and student); RMIA headline")
    config = ExperimentConfig(
        dataset=dataset,
        generator_options=tuple(options.items()),
        cardinality=cardinality,
        rounds=rounds,
        teacher=recipe,
        distill=DistillConfig(student=replace(recipe, seed=1), temperature=4.0, alpha=1.0, regen_every=regen),
        audit=audit_config,
        cas_epochs=0 if quick else 15,
    )
    return config, why


def _paper_config(dataset: DatasetConfig) -> ExperimentConfig:
    """TCKR (Resmini et al. 2025): SD 2.1 base + LoRA rank 4 on BLIP-2 captions, 224 px, 20 DPM
    steps with CFG 2, 20 synthetic images per real one, MobileNetV3 students with recycling."""
    recipe = TrainConfig(model="mobilenetv3_large_100", pretrained=True, image_size=224, epochs=100,
                         batch_size=128, lr=1e-3, weight_decay=5e-4, augment=("crop", "flip"),
                         crop_padding=16, patience=10)
    return ExperimentConfig(
        dataset=dataset,
        captioner=CaptionerConfig(name="blip2", model="Salesforce/blip2-opt-2.7b"),
        template="{caption}",
        generator="sd-lora",
        generator_options=(("rank", 4), ("alpha", 4.0), ("resolution", 224), ("num_inference_steps", 20),
                           ("guidance_scale", 2.0), ("snr_gamma", 5.0), ("mixed_precision", "bf16")),
        cardinality=20.0,
        rounds=5,
        generation_batch=64,
        teacher=recipe,
        distill=DistillConfig(student=replace(recipe, seed=1), temperature=4.0, alpha=1.0, regen_every=20),
        audit=AuditConfig(n_shadows=256, pipeline_shadows=4, headline="rmia"),
    )


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    seconds: float | None  # None: cannot be estimated cheaply (e.g. a Hub model)
    what: str


def estimate_stages(config: ExperimentConfig, profile: DataProfile) -> list[StageEstimate]:
    """What each stage will do and roughly how long it takes, from a few timed steps on random data.

    The generator times 3 training steps and one sampling pass; a classifier times 3 training batches.
    Pipeline shadows run in worker processes beside the main work: their time is listed, and the
    total assumes they overlap it on a multi-core machine.
    """
    import os

    from .generators import create_generator

    generator = create_generator(config.generator, **dict(config.generator_options))
    timed = generator.time_steps(profile.side, profile.channels, profile.classes)
    gen_steps = timed["train_steps"] if timed else "?"
    synthetic = int(round(config.cardinality * profile.members))
    images = synthetic * config.rounds
    train_s = timed and gen_steps * timed["train_step_s"]
    generate_s = timed and images * timed["image_s"]
    teacher_img = _classifier_image_seconds(config.teacher, profile)
    student_img = _classifier_image_seconds(config.distill.student, profile)
    teacher_s = config.teacher.epochs * profile.members * teacher_img
    student_s = config.distill.student.epochs * synthetic * (1 - config.distill.val_fraction) * student_img
    cas_s = min(config.cas_epochs, config.distill.student.epochs) * synthetic * student_img \
        if config.cas_epochs else 0.0
    shadows_s = config.audit.n_shadows * teacher_s
    stages = [
        StageEstimate("generator", train_s, f"{config.generator}: {gen_steps} training steps"),
        StageEstimate("generate", generate_s, f"{config.rounds} rounds x {synthetic} images"),
        StageEstimate("teacher", teacher_s, f"{config.teacher.model}, {config.teacher.epochs} epochs on "
                                            f"{profile.members} members"),
        StageEstimate("student", student_s, f"{config.distill.student.model}, {config.distill.student.epochs} "
                                            "epochs on synthetic rounds with soft labels"),
        StageEstimate("fidelity", cas_s, "class fidelity, FD, PRDC per round"
                      + (f"; CAS ({config.cas_epochs} epochs)" if config.cas_epochs else "")),
        StageEstimate("audit", shadows_s, f"{config.audit.n_shadows} transfer shadows, attacks "
                                          f"{', '.join(config.audit.attacks)}"),
    ]
    if "pipeline" in config.audit.modes and config.audit.pipeline_shadows:
        one = None if train_s is None else train_s + generate_s + teacher_s + student_s
        stages.append(StageEstimate(
            "pipeline shadows", one and one * config.audit.pipeline_shadows,
            f"{config.audit.pipeline_shadows} x the whole loop, in worker processes beside the stages above "
            f"({os.cpu_count()} CPU cores)"))
    return stages


def estimated_wall(stages: list[StageEstimate], cores: int | None = None) -> float | None:
    """Total wall time: the main stages in sequence, with pipeline shadows spread over the other
    cores (at 65 % efficiency: hyper-threaded cores share their units)."""
    import os

    if any(s.seconds is None for s in stages):
        return None
    main = sum(s.seconds for s in stages if s.stage != "pipeline shadows")
    side = sum(s.seconds for s in stages if s.stage == "pipeline shadows")
    cores = cores or os.cpu_count() or 1
    return max(main, (main + side) / max(1.0, 0.65 * cores)) if side else main


def _classifier_image_seconds(recipe: TrainConfig, profile: DataProfile, batches: int = 3) -> float:
    """Median seconds per training image of ``recipe``'s model (forward + backward), on noise."""
    import torch

    from .core.common import resolve_device
    from .distill import build_model

    device = resolve_device(recipe.device)
    if recipe.pretrained:  # only the architecture matters for speed: never download to estimate
        recipe = replace(recipe, pretrained=False)
    model = build_model(recipe, profile.classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    side = recipe.image_size or profile.side
    times = []
    for _ in range(batches + 1):  # the first batch warms up
        start = time.perf_counter()
        x = torch.rand(recipe.batch_size, 3, side, side, device=device)
        y = torch.randint(0, profile.classes, (recipe.batch_size,), device=device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:])) / recipe.batch_size


def quickstart_config() -> ExperimentConfig:
    """The offline default: the standard preset on the built-in digits, with a digit caption."""
    dataset = DatasetConfig()
    profile = DataProfile(side=8, channels=1, members=644, classes=10, device="cpu")
    config, _ = preset_config(dataset, profile, "standard")
    # the preset is dataset-neutral ("a photo of a {label}"); the built-in data knows better. 4
    # transfer shadows and 2 pipeline shadows keep the quickstart within 5 minutes on 2 CPU cores.
    return replace(config, captioner=CaptionerConfig(class_template="a handwritten digit {label}"))


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
        registry.link(run.id, Link("data", "dataset", dataset.fingerprint))
    write_json(run.run_dir / "membership.json", split.to_dict())
    timings: dict[str, float] = {}
    progress = _RunReporter(registry, run.id, run.run_dir / "events.jsonl", progress)

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.monotonic() - t0, 2)
        registry.report(run.id, progress={"stage": name, "done": 1, "total": 1}, timings=timings)

    with registry.track(run.id), ExitStack() as stack:
        # 2. captions: a pinned curated version as is, else caption what is missing
        t0 = time.monotonic()
        captions = _captions(config, project, progress)
        registry.link(run.id, Link("captions", "captions", f"{captions.store}@{captions.version}"))
        timed("caption", t0)
        # pipeline-mode shadows need only the data, captions and config: on a multi-core CPU they train
        # in worker processes while this process trains the experiment's own generator (one core)
        pipeline_shadows = None
        if "pipeline" in config.audit.modes:
            pipeline_shadows = PipelineShadows(config.audit, config, f"{captions.store}@{captions.version}",
                                               project).start()
        stack.callback(lambda: pipeline_shadows and pipeline_shadows.stop())

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
        rounds, round_runs = [], []
        for k in range(config.rounds):
            made = synthesize(GenerateConfig(
                generator=str(trained.generator_dir), prompts=f"store:{captions.store}@{captions.version}",
                template=config.template, dataset=config.dataset, cardinality=config.cardinality, round=k,
                seed=config.seed, batch_size=config.generation_batch,
                out_dir=str(run.run_dir / "synthetic" / f"round-{k}")), project, progress)
            registry.link(run.id, Link(f"synthetic round {k}", "run", made.run_id))
            rounds.append(made.synthetic)
            round_runs.append(made.run_id)
        timed("generate", t0)

        # 5. teacher on real members, student on synthetic rounds only (each recorded as its own run)
        t0 = time.monotonic()
        with _stage_run(registry, "teacher", config.teacher, [Link("data", "dataset", dataset.fingerprint)]) as teacher_run:
            teacher = train_teacher(dataset, split, config.teacher, run.run_dir, progress)
        timed("teacher", t0)
        t0 = time.monotonic()
        rounds_links = [Link("teacher", "run", teacher_run)] + \
            [Link(f"synthetic round {k}", "run", rid) for k, rid in enumerate(round_runs)]
        with _stage_run(registry, "student", config.distill, rounds_links) as student_run:
            student = train_student(teacher.model, rounds, config.distill, n_classes, run.run_dir, progress,
                                    teacher_recipe=config.teacher)
        timed("student", t0)

        # 6. fidelity of every synthetic round, with the teacher as the feature extractor
        t0 = time.monotonic()
        fidelity = _round_fidelity(teacher.model, dataset, split, rounds, config, n_classes, progress)
        timed("fidelity", t0)

        # 7. test accuracy on the real test split
        test = real_tensors(dataset, [r.id for r in dataset.split("test")], config.teacher.image_size)
        teacher_test = evaluate_on_test(teacher.model, test, n_classes)
        student_test = evaluate_on_test(student.model, test, n_classes) if \
            config.distill.student.image_size == config.teacher.image_size else \
            evaluate_on_test(student.model, real_tensors(dataset, test.ids, config.distill.student.image_size), n_classes)
        registry.link(run.id, Link("teacher", "run", teacher_run), Link("student", "run", student_run))
        registry.report(teacher_run, accuracy=teacher_test["accuracy"], weights=str(teacher.checkpoint))
        registry.report(student_run, accuracy=student_test["accuracy"], weights=str(student.checkpoint))

        # 8. the audit stage: the teacher with its own recipe, the student in transfer and pipeline mode
        t0 = time.monotonic()
        audited = audit(replace(config.audit, experiment=run.id), project, progress, pipeline_shadows)
        timed("audit", t0)

        # 9. metrics
        metrics = {
            "teacher": _model_metrics(teacher_test, audited.metrics["teacher"], teacher.metrics),
            "student": _model_metrics(student_test, audited.metrics["student"], student.metrics),
            "audit": {"run": audited.run_id, "headline_attack": config.audit.headline,
                      "shadows": audited.metrics["shadows"], "vulnerable": audited.metrics["vulnerable"]},
            **_run_summary(config, dataset, split, len(test), rounds, trained.metrics),
            "fidelity": fidelity,
            "timings": timings,
            "seconds": round(time.monotonic() - started, 2),
        }
        write_json(run.run_dir / "metrics.json", metrics)
        registry.report(run.id, **{"teacher_accuracy": metrics["teacher"]["accuracy"],
                                   "student_accuracy": metrics["student"]["accuracy"],
                                   "teacher_auc": metrics["teacher"]["mia"]["auc"],
                                   "student_auc": metrics["student"]["mia"]["auc"],
                                   "student_mia_mode": metrics["student"]["mia"]["mia_mode"],
                                   "class_fidelity": fidelity["class_fidelity"],
                                   "frechet_distance": fidelity["frechet_distance"],
                                   "precision": fidelity["precision"], "recall": fidelity["recall"],
                                   "cas": fidelity["cas"]})
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
def _stage_run(registry: Any, kind: str, config: Any, links: list[Link]) -> Iterator[str]:
    """Record one training stage of the experiment as its own run (status, config, lineage)."""
    run = registry.create(kind, config, links=links)
    with registry.track(run.id):
        yield run.id


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
    for name in ("teacher", "student"):
        m = metrics[name]
        for mode, entry in m.get("mia_modes", {m["mia"].get("mia_mode", "transfer"): m["mia"]}).items():
            for attack in [entry.get("attack", "lira")] + [a for a in ("lira", "rmia", "loss")
                                                             if a != entry.get("attack") and a in entry]:
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
