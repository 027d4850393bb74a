"""Presets: an experiment config chosen from the data (image side, grey or colour, member count,
classes, device), with one reason per choice, and the time each stage will take, measured on a few
steps before the run starts. ``python -m pipeline run --dataset SPEC`` uses them."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .audit import AuditConfig
from .captions.captioners import CaptionerConfig
from .classifiers.train import TrainConfig
from .data.datasets import DatasetConfig
from .distill import DistillConfig
from .experiment import ExperimentConfig

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
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    why = [f"data: {profile.members} member images of {profile.side} px, {profile.channels} channel(s), "
           f"{profile.classes} classes; device {profile.device}"]
    if preset == "paper":
        return _paper_config(dataset), why + [
            "paper: TCKR's recipe (SD 2.1 + LoRA r4, 224 px, 20 steps, CFG 2, 20x cardinality, "
            "MobileNetV3 student, 256 shadows); needs a GPU and the Hugging Face Hub"]
    quick = preset == "quick"
    # 1. the classifier recipe (teacher = student = shadows) and 2. the generator, by image size
    recipe = _classifier_recipe(profile, quick, why)
    options = _generator_options(profile, quick, why)
    # 3. the synthetic rounds and 4. the audit
    cardinality, rounds, regen = (2.0, 3, 5) if profile.side <= 16 else (4.0, 4, 5) if profile.device == "cuda" \
        else (2.0, 2, 5)
    why.append(f"synthetic: {rounds} rounds of {cardinality:g}x the members; student switches round every "
               f"{regen} epochs")
    audit_config = _audit_config(profile, quick, why)
    config = ExperimentConfig(
        dataset=dataset, generator_options=tuple(options.items()), cardinality=cardinality, rounds=rounds,
        teacher=recipe,
        distill=DistillConfig(student=replace(recipe, seed=1), temperature=4.0, alpha=1.0, regen_every=regen),
        audit=audit_config, cas_epochs=0 if quick else 15,
    )
    return config, why


def _classifier_recipe(profile: DataProfile, quick: bool, why: list[str]) -> TrainConfig:
    if profile.side <= 16:
        # Plain recipe (no augmentation, no weight decay, 60 epochs): the most accurate teacher we
        # measured on digits (0.995 test accuracy vs 0.959 with crop + weight decay for 30 epochs).
        recipe = TrainConfig(model="tiny-cnn", epochs=30 if quick else 60, batch_size=64, lr=3e-3,
                             weight_decay=0.0, augment=())
        why.append(f"classifier: tiny-cnn, {recipe.epochs} epochs, no augmentation (images of 16 px or less)")
        return recipe
    size = None if profile.side <= 64 else 64
    recipe = TrainConfig(model="small-resnet", image_size=size, epochs=20 if quick else 40, batch_size=64, lr=3e-3,
                         weight_decay=5e-4, augment=("crop",), crop_padding=max(1, min(profile.side, 64) // 8))
    why.append(f"classifier: small-resnet{f' at {size} px' if size else ''}, {recipe.epochs} epochs, "
               "random-crop augmentation (flip is left off: wrong for text, digits, some scans)")
    return recipe


def _generator_options(profile: DataProfile, quick: bool, why: list[str]) -> dict[str, Any]:
    from .generators import generator_class

    options = generator_class("scratch").suggest_options(profile.side, profile.channels, profile.members,
                                                         profile.device)
    if quick:
        options = {**options, "train_steps": options.get("train_steps", 800) // 2}
    why.append("generator: scratch " + (", ".join(f"{k}={v}" for k, v in options.items()) or "defaults")
               + " (chosen by resolution)")
    return options


def _audit_config(profile: DataProfile, quick: bool, why: list[str]) -> AuditConfig:
    if quick:
        why.append("audit: 4 shadows of the teacher's recipe; the student is audited with them (transfer "
                   "mode only, no pipeline shadows); no CAS")
        return AuditConfig(n_shadows=4, modes=("transfer",), views=("orig", "shift"), headline="rmia")
    # RMIA, built for few reference models, is the headline attack; `benchmarks/audit.py` shows
    # what more shadows change. Each pipeline shadow reruns the whole loop on half the population.
    n_shadows, n_pipeline = (16, 4) if profile.device == "cuda" else (4, 2)
    why.append(f"audit: {n_shadows} transfer shadows (teacher's recipe) and {n_pipeline} pipeline shadows "
               "(each reruns generator, rounds, teacher and student); RMIA headline")
    return AuditConfig(n_shadows=n_shadows, pipeline_shadows=n_pipeline, views=("orig", "shift"), headline="rmia")


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
    if config.methods:
        method_s = sum(_method_seconds(name, options, config, profile, synthetic, teacher_img, student_img)
                       for name, options in config.methods)
        stages.append(StageEstimate("methods", method_s, ", ".join(n for n, _ in config.methods)
                                    + " (rough: from the classifiers' timed steps)"))
        if "pipeline" in (config.audit.method_modes or config.audit.modes) and config.audit.pipeline_shadows:
            n, workers = config.audit.pipeline_shadows, min(config.audit.pipeline_shadows, os.cpu_count() or 1)
            stages.append(StageEstimate("method shadows", method_s * n / max(1.0, 0.65 * workers),
                                        f"every method once per pipeline shadow ({n}), in the audit stage"))
    if "pipeline" in config.audit.modes and config.audit.pipeline_shadows:
        one = None if train_s is None else train_s + generate_s + teacher_s + student_s
        stages.append(StageEstimate(
            "pipeline shadows", one and one * config.audit.pipeline_shadows,
            f"{config.audit.pipeline_shadows} x the whole loop, in worker processes beside the stages above "
            f"({os.cpu_count()} CPU cores)"))
    return stages


def _method_seconds(name: str, options: dict[str, Any], config: ExperimentConfig, profile: DataProfile,
                    synthetic: int, teacher_img: float, student_img: float) -> float:
    """A rough time for one transfer method, in units of the timed per-image training costs: AM's
    ascent steps cost about a teacher step per image, a BSS step adds its attack (``attack_steps``
    teacher passes on ``attack_size`` images, for three quarters of the epochs), DP-SGD's per-example
    gradients about 3x a plain step."""
    from .methods import create_method

    cfg, epochs = create_method(name, options).config, config.distill.student.epochs
    if name == "am":
        images = cfg.images_per_class * profile.classes
        # ascent steps (fewer: an image stops at its confidence); the student's steps plus the online
        # teacher's forward pass (about a third of a training step)
        online = teacher_img / 3 if cfg.online_teacher else 0.0
        return images * cfg.steps * teacher_img + epochs * images * (student_img + online)
    if name in ("bss", "gkd+bss"):
        images = profile.members if name == "bss" else synthetic
        steps = epochs * max(1, images // config.distill.student.batch_size)
        return epochs * images * student_img + 0.75 * steps * cfg.attack_steps * cfg.attack_size * teacher_img
    if name == "dp-sgd":
        return 3.0 * (cfg.epochs or epochs) * profile.members * student_img
    return epochs * synthetic * student_img


def estimated_wall(stages: list[StageEstimate], cores: int | None = None) -> float | None:
    """Total wall time: the main stages in sequence, with pipeline shadows spread over the other
    cores (at 65 % efficiency: hyper-threaded cores share their units)."""

    if any(s.seconds is None for s in stages):
        return None
    main = sum(s.seconds for s in stages if s.stage != "pipeline shadows")
    side = sum(s.seconds for s in stages if s.stage == "pipeline shadows")
    cores = cores or os.cpu_count() or 1
    return max(main, (main + side) / max(1.0, 0.65 * cores)) if side else main


def _classifier_image_seconds(recipe: TrainConfig, profile: DataProfile, batches: int = 3) -> float:
    """Median seconds per training image of ``recipe``'s model (forward + backward + optimiser step, as
    the training loop takes it), on noise."""
    import torch

    from .classifiers.models import build_classifier
    from .classifiers.train import optimizer_step
    from .core.common import resolve_device
    from .core.precision import autocast

    device = resolve_device(recipe.device)
    model = build_classifier(replace(recipe, pretrained=False), profile.classes).to(device)  # never download
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    side = recipe.image_size or profile.side
    times = []
    for _ in range(batches + 1):  # the first batch warms up
        start = time.perf_counter()
        x = torch.rand(recipe.batch_size, 3, side, side, device=device)
        y = torch.randint(0, profile.classes, (recipe.batch_size,), device=device)
        with autocast(device, "auto" if recipe.amp else "no"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer_step(optimizer, None, loss)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:])) / recipe.batch_size


def quickstart_config() -> ExperimentConfig:
    """The offline default: the standard preset on the built-in digits, with a digit caption."""
    dataset = DatasetConfig()
    profile = DataProfile(side=8, channels=1, members=644, classes=10, device="cpu")
    config, _ = preset_config(dataset, profile, "standard")
    # the preset is dataset-neutral ("a photo of a {label}"); the built-in data knows better. 4
    # transfer shadows and 2 pipeline shadows keep the quickstart within 5 minutes on 2 CPU cores.
    # plus one data-free student that needs no generator (activation maximisation) on the same plane,
    # with half its default images (256 per class instead of 512) and audited in transfer mode only (its
    # pipeline mode reruns it in every pipeline shadow: about 2 more minutes here) to keep the quickstart short
    return replace(config, captioner=CaptionerConfig(class_template="a handwritten digit {label}"),
                   methods=(("am", {"images_per_class": 256}),),
                   audit=replace(config.audit, method_modes=("transfer",)))
