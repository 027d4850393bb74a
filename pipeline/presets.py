"""Presets: an experiment config chosen from the data (image side, grey or colour, member count,
classes, device), with one reason per choice, and the time each stage will take, measured on a few
steps before the run starts. ``python -m pipeline run --dataset SPEC`` uses them."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .audit import AuditConfig
from .captions.captioners import CaptionerConfig
from .classifiers.train import TrainConfig
from .core.machine import cores
from .data.datasets import DatasetConfig
from .distill import DistillConfig
from .experiment import ExperimentConfig
from .fidelity import cas_recipe
from .privacy.pipeline_shadows import default_workers

PRESETS = ("quick", "standard", "paper")


@dataclass(frozen=True)
class DataProfile:
    """What a preset looks at: the data's shape and size, and the device."""

    side: int  # largest side of the training images (pixels)
    channels: int  # 1 when every sampled image is grey, else 3
    members: int  # real images the teacher and the generator train on
    classes: int
    device: str  # cpu | cuda
    test: int = 0  # test images (RMIA's reference population is drawn from them)

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
                   classes=len(dataset.class_names), device="cuda" if device.startswith("cuda") else "cpu",
                   test=len(dataset.split("test")))


def preset_config(dataset: DatasetConfig, profile: DataProfile, preset: str = "standard") -> tuple[ExperimentConfig, list[str]]:
    """The experiment a preset runs on data of this profile, and one line per choice saying why.

    - ``standard``: chosen from the data and the device. Images up to 16 px get the digits recipe
      (tiny CNN, the small scratch UNet); larger ones a small ResNet and the scratch backend's
      recipe for their side (see ``ScratchGenerator.suggest_options``); on CUDA more shadows, rounds
      and generator steps.
    - ``quick``: the same models with about half the training, and the student audited with the
      teacher's shadows only (no pipeline shadows): a first look in a few minutes.
    - ``paper``: TCKR's published recipe (Stable Diffusion 2 + LoRA rank 4 at 224 px, 20 sampling
      steps, CFG 2, 20x cardinality, MobileNetV3 students, 256 shadows): needs a GPU, and the Hub or
      local model folders (:func:`with_models`).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    why = [f"data: {profile.members} member images of {profile.side} px, {profile.channels} channel(s), "
           f"{profile.classes} classes; device {profile.device}"]
    if preset == "paper":
        config = _paper_config(dataset, profile)
        return config, why + [
            f"paper: TCKR's recipe (SD 2 768-v + LoRA r4, {dict(config.generator_options)['steps']:,} steps = 3 "
            "epochs at batch 4, 224 px, 20 sampling steps, CFG 2, 20x cardinality, MobileNetV3 student, 256 "
            "shadows); needs a GPU, and the Hugging Face Hub or local folders (--base, --captioner-model)"]
    quick = preset == "quick"
    # 1. the classifier recipes (teacher = shadows; the student's may train fewer passes) and 2. the
    # generator, by image size
    recipe, student = _classifier_recipes(profile, quick, why)
    options = _generator_options(profile, quick, why)
    # 3. the synthetic rounds and 4. the audit
    cardinality, rounds, regen = (2.0, 3, 5) if profile.side <= 16 else (4.0, 4, 5) if profile.device == "cuda" \
        else (2.0, 2, 5)
    per_round = int(max(profile.classes, round(cardinality * profile.members)) * 0.9)
    why.append(f"synthetic: {rounds} rounds of {cardinality:g}x the members; the student switches round every "
               f"{regen} epochs: {student.plan(per_round)}")
    audit_config = _audit_config(profile, quick, why)
    config = ExperimentConfig(
        dataset=dataset, generator_options=options, cardinality=cardinality, rounds=rounds,
        teacher=recipe,
        distill=DistillConfig(student=student, temperature=4.0, alpha=1.0, regen_every=regen),
        audit=audit_config, cas_epochs=0 if quick else 15,
    )
    return config, why


# Every classifier of a preset (teacher, student, shadows, CAS) is sized in optimiser steps, not epochs:
# ``epochs`` passes for a set of middling size, never fewer than FLOOR_STEPS (a small set gets more
# passes), stopped early once validation has not improved for PATIENCE_SHARE of the planned epochs (a
# large set stops when it stops improving). Measured with ``benchmarks/recipes.py`` (README): on a
# CIFAR-10 subset of 300 members the small ResNet reached 0.25 test accuracy after 200 steps (its 40
# epochs), 0.34 after 1,000 and 0.35 after 4,000; on 2,250 CIFAR-10 members, where the floor is passed,
# 0.469 after 40 epochs, 0.505 after 80 (early-stopped at 75) and 0.498 after 200 (stopped at 139), so
# the small ResNet teacher gets 80 passes (the smaller sets measured get more through the floor: Fashion's
# 680 members 94, within 2 points of 5x). The student keeps 40: it sees a new synthetic round every few
# epochs, and its passes are over sets 2x the members.
FLOOR_STEPS = 1000
PATIENCE_SHARE = 0.25
RESNET_TEACHER_EPOCHS = 80
RESNET_STUDENT_EPOCHS = 40


def _classifier_recipes(profile: DataProfile, quick: bool, why: list[str]) -> tuple[TrainConfig, TrainConfig]:
    """The teacher's recipe (the shadows copy it) and the student's (the same but its seed, and for the small
    ResNet fewer passes); quick halves the passes and the floor."""
    floor = FLOOR_STEPS // 2 if quick else FLOOR_STEPS
    if profile.side <= 16:
        # Plain recipe (no augmentation, no weight decay, 60 epochs): the most accurate teacher we
        # measured on digits (0.995 test accuracy vs 0.959 with crop + weight decay for 30 epochs).
        recipe = TrainConfig(model="tiny-cnn", epochs=30 if quick else 60, batch_size=64, lr=3e-3,
                             weight_decay=0.0, augment=(), min_steps=floor, patience_share=PATIENCE_SHARE)
        why.append(f"classifier: tiny-cnn, no augmentation (images of 16 px or less); the teacher: "
                   f"{recipe.plan(profile.members)}")
        return recipe, replace(recipe, seed=1)
    size = None if profile.side <= 64 else 64
    halve = 2 if quick else 1
    recipe = TrainConfig(model="small-resnet", image_size=size, epochs=RESNET_TEACHER_EPOCHS // halve, batch_size=64,
                         lr=3e-3, weight_decay=5e-4, augment=("crop",), crop_padding=max(1, min(profile.side, 64) // 8),
                         min_steps=floor, patience_share=PATIENCE_SHARE)
    why.append(f"classifier: small-resnet{f' at {size} px' if size else ''}, random-crop augmentation (flip is left "
               f"off: wrong for text, digits, some scans); the teacher: {recipe.plan(profile.members)}")
    return recipe, replace(recipe, seed=1, epochs=RESNET_STUDENT_EPOCHS // halve)


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


# TCKR's base model and LoRA recipe, from its published code (github.com/NicoloResmini/TCKR: src/run_lora.ipynb
# runs src/lora.py, diffusers' text_to_image LoRA script; src/evaluate.py samples). The base is
# stabilityai/stable-diffusion-2, the 768-v model, which predicts v (its scheduler config says so and the
# sd-lora backend follows it in training and sampling), not 2.1-base (epsilon, 512 px): TCKR fine-tuned and
# sampled that one, and its published LoRAs (lora_sd2/*.safetensors) were trained on it, so only this base
# reproduces the paper and loads those LoRAs (`lora_path`). Its notebook trains rank 4 at lr 1e-4 and 224 px
# (center crop, random flip), batch 1 with 4 accumulation steps (a batch of 4 here), 3 epochs over the
# training images, plain MSE (no --snr_gamma) in fp16 (bf16 here: the precision policy, no loss scaling);
# it samples 20 steps at guidance 2 with the base's own scheduler, 224 px, batch 32.
PAPER_BASE = "stabilityai/stable-diffusion-2"
PAPER_CAPTIONER = "Salesforce/blip2-opt-2.7b"  # TCKR's blip2_captioning.ipynb
PAPER_CLASSIFIER = "mobilenetv3_large_100"  # timm's; TCKR's are Once-for-All MobileNetV3 subnets
PAPER_LORA_EPOCHS, PAPER_LORA_BATCH = 3, 4


def _paper_config(dataset: DatasetConfig, profile: DataProfile) -> ExperimentConfig:
    """TCKR (Resmini et al. 2025): SD 2 (768-v) + LoRA rank 4 on BLIP-2 captions, 3 epochs at 224 px, 20
    sampling steps with CFG 2, 20 synthetic images per real one, MobileNetV3 students with recycling."""
    recipe = TrainConfig(model=PAPER_CLASSIFIER, pretrained=True, image_size=224, epochs=100,
                         batch_size=128, lr=1e-3, weight_decay=5e-4, augment=("crop", "flip"),
                         crop_padding=16, patience=10)
    lora_steps = max(1, -(-PAPER_LORA_EPOCHS * profile.members // PAPER_LORA_BATCH))
    return ExperimentConfig(
        dataset=dataset,
        captioner=CaptionerConfig(name="blip2", model=PAPER_CAPTIONER),
        template="{caption}",
        generator="sd-lora",
        generator_options={"base": PAPER_BASE, "rank": 4, "alpha": 4.0, "lr": 1e-4, "steps": lora_steps,
                           "batch_size": PAPER_LORA_BATCH, "resolution": 224, "snr_gamma": None,
                           "mixed_precision": "bf16", "num_inference_steps": 20, "guidance_scale": 2.0,
                           "sample_batch_size": 32},
        cardinality=20.0,
        rounds=5,
        generation_batch=64,
        teacher=recipe,
        distill=DistillConfig(student=replace(recipe, seed=1), temperature=4.0, alpha=1.0, regen_every=20),
        audit=AuditConfig(n_shadows=256, pipeline_shadows=4, headline="rmia"),
    )


def with_models(config: ExperimentConfig, base: str | None = None, captioner_model: str | None = None,
                classifier: str | None = None) -> tuple[ExperimentConfig, list[str]]:
    """A preset's config pointed at the user's own models, and one line per change saying what changed:
    ``base`` the generator's base model (a hub id, or a folder written by ``save_pretrained``),
    ``captioner_model`` the BLIP / BLIP-2 captioner's, ``classifier`` a registered classifier or any timm
    model name for the teacher and the student (and so the shadows, which copy the teacher's recipe).
    A flag the config has no place for is an error that says so."""
    from .classifiers.models import CLASSIFIERS
    from .generators import base_model_backends, generator_class

    why = []
    if base is not None:
        field = generator_class(config.generator).base_field
        if field is None:
            raise ValueError(f"--base needs a generator that fine-tunes a base model ({', '.join(base_model_backends())}, "
                             f"as the paper preset's); this config trains the {config.generator!r} generator from scratch")
        config = replace(config, generator_options={**dict(config.generator_options), field: base})
        why.append(f"generator base: {base}")
    if captioner_model is not None:
        if config.captioner.name == "classname":
            raise ValueError("--captioner-model needs a model captioner (blip, blip2: the paper preset's); this "
                             "config captions with the class names")
        config = replace(config, captioner=replace(config.captioner, model=captioner_model))
        why.append(f"captioner: {config.captioner.name} from {captioner_model}")
    if classifier is not None:
        if classifier not in CLASSIFIERS:
            import timm

            if not timm.is_model(classifier):
                raise ValueError(f"unknown classifier {classifier!r}; valid names: {', '.join(CLASSIFIERS.names())} "
                                 "or any timm model (timm.list_models())")
        config = replace(config, teacher=replace(config.teacher, model=classifier),
                         distill=replace(config.distill, student=replace(config.distill.student, model=classifier)))
        why.append(f"classifier: {classifier} (teacher, student and shadows)"
                   + (", ImageNet weights from the Hub or its local cache" if config.teacher.pretrained else ""))
    return config, why


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    seconds: float | None  # None: cannot be estimated cheaply (e.g. a Hub model)
    what: str


def estimate_stages(config: ExperimentConfig, profile: DataProfile) -> list[StageEstimate]:
    """What each stage will do and roughly how long it takes, from a few steps timed on noise with the
    code that trains (the classifiers' loop step with its precision; the generator's own training step
    and sampler). Classifiers are counted at their planned steps: early stopping can only shorten them."""
    # 1. per-unit costs on this machine
    timed = _generator_seconds(config, profile)
    teacher_img = _classifier_image_seconds(config.teacher, profile)
    student_img = _classifier_image_seconds(config.distill.student, profile)
    # 2. the work of each stage
    members, synthetic = profile.members, max(profile.classes, int(round(config.cardinality * profile.members)))
    gen_s = timed and timed["train_steps"] * timed["train_step_s"]
    generate_s = timed and config.rounds * synthetic * timed["image_s"]
    teacher_s = _training_seconds(config.teacher, members, teacher_img)
    student_s = _training_seconds(config.distill.student, int(synthetic * (1 - config.distill.val_fraction)),
                                  student_img)
    cas = cas_recipe(config.distill.student, config.cas_epochs)
    cas_s = _training_seconds(cas, int(synthetic * 0.9), student_img) if cas else 0.0
    queries = len(config.audit.views) * (2 * members + min(config.audit.reference_size, profile.test or config.audit.reference_size))
    shadow_s = teacher_s + queries * teacher_img / 3  # training, then the logits of every query (a third of a step)
    stages = [
        StageEstimate("generator", gen_s, f"{config.generator}: {timed['train_steps'] if timed else '?'} training steps"),
        StageEstimate("generate", generate_s, f"{config.rounds} rounds x {synthetic} images"),
        StageEstimate("teacher", teacher_s, f"{config.teacher.model}: {config.teacher.plan(members)}"),
        StageEstimate("student", student_s, f"{config.distill.student.model} on synthetic rounds with soft labels: "
                                            f"{config.distill.student.plan(int(synthetic * 0.9))}"),
        StageEstimate("fidelity", cas_s, "class fidelity, FD, PRDC per round" + ("; CAS" if cas else "")),
        StageEstimate("audit", config.audit.n_shadows * shadow_s,
                      f"{config.audit.n_shadows} transfer shadows (the teacher's recipe), attacks "
                      f"{', '.join(config.audit.attacks)}"),
    ]
    # 3. the other methods, and the pipeline shadows (each the whole loop on its half, after the main run)
    method_s = sum(_method_seconds(name, options, config, profile, synthetic, teacher_img, student_img)
                   for name, options in config.methods)
    if config.methods:
        stages.append(StageEstimate("methods", method_s, ", ".join(n for n, _ in config.methods)
                                    + " (rough: from the classifiers' timed steps)"))
    stages += _pipeline_estimates(config, gen_s, generate_s, student_s, teacher_s, method_s)
    return stages


def _pipeline_estimates(config: ExperimentConfig, gen_s: float | None, generate_s: float | None, student_s: float,
                        teacher_s: float, method_s: float) -> list[StageEstimate]:
    """The pipeline shadows' stages: each reruns generator, rounds and student on its half; its teacher is
    the transfer shadow on the same half (trained only past the transfer shadows' count)."""
    audit, out = config.audit, []
    n = audit.pipeline_shadows
    workers = default_workers(audit.workers, n, profile_gpu(config))
    # W workers share the cores: each runs with cores / W threads, about (cores / threads) ** 0.7 slower
    # than the timed steps (measured: 2 threads train 1.5-1.8x as fast as 1), all W at once
    share = (cores() / max(1, cores() // workers)) ** 0.7 / workers if workers > 1 else 1.0
    teachers = max(0, n - audit.n_shadows) * teacher_s
    where = "one after another, after the main run" if workers == 1 else \
        f"{workers} at a time in worker processes, after the main run"
    if "pipeline" in audit.modes and n:
        one = None if gen_s is None else gen_s + generate_s + student_s
        out.append(StageEstimate("pipeline shadows", one and (n * one + teachers) * share,
                                 f"{n} x generator, rounds and student ({where}); their teachers are the "
                                 "transfer shadows on the same halves"))
    if config.methods and "pipeline" in audit.modes_of(True) and n:
        out.append(StageEstimate("method shadows", n * method_s * share,
                                 f"every method once per pipeline shadow ({n}), in the audit stage"))
    return out


def profile_gpu(config: ExperimentConfig) -> bool:
    from .core.common import resolve_device

    return resolve_device(config.teacher.device).startswith("cuda")


def _training_seconds(recipe: TrainConfig, images: int, image_s: float) -> float:
    """Seconds of a training of ``recipe`` on ``images`` images at its planned steps (each a batch)."""
    per_epoch = max(1, -(-images // recipe.batch_size))
    return recipe.planned_epochs(per_epoch) * per_epoch * min(recipe.batch_size, images) * image_s


def _generator_seconds(config: ExperimentConfig, profile: DataProfile) -> dict[str, float] | None:
    from .generators import create_generator

    options = config.backend_options()  # a DP run times a DP-SGD step (per-example gradients: ~10x a plain one)
    generator = create_generator(config.generator, **options)
    return _memo(("generator", config.generator, options, profile.side, profile.channels, profile.classes),
                 lambda: generator.time_steps(profile.side, profile.channels, profile.classes))


def _method_seconds(name: str, options: dict[str, Any], config: ExperimentConfig, profile: DataProfile,
                    synthetic: int, teacher_img: float, student_img: float) -> float:
    """A rough time for one transfer method, in units of the timed per-image training costs: AM's
    ascent steps cost about a teacher step per image, a BSS step adds its attack (``attack_steps``
    teacher passes on ``attack_size`` images, for three quarters of the epochs), DP-SGD's per-example
    gradients about 3x a plain step."""
    from .methods import create_method

    cfg, recipe = create_method(name, options).config, config.distill.student
    if name == "am":
        images = cfg.images_per_class * profile.classes
        # ascent steps (fewer: an image stops at its confidence); the student's steps plus the online
        # teacher's forward pass (about a third of a training step)
        online = teacher_img / 3 if cfg.online_teacher else 0.0
        return images * cfg.steps * teacher_img + _training_seconds(recipe, images, student_img + online)
    if name in ("bss", "gkd+bss"):
        images = profile.members if name == "bss" else synthetic
        train_s = _training_seconds(recipe, images, student_img)
        steps = train_s / max(student_img * min(recipe.batch_size, images), 1e-12)
        return train_s + 0.75 * steps * cfg.attack_steps * cfg.attack_size * teacher_img
    if name == "dp-sgd":
        from .methods.dp import dp_recipe

        return 3.0 * dp_recipe(recipe, cfg, profile.members).epochs * profile.members * student_img
    return _training_seconds(recipe, synthetic, student_img)


def estimated_wall(stages: list[StageEstimate], cores: int | None = None) -> float | None:
    """Total wall time: the stages one after another (the pipeline shadows' estimate already divides
    their work over their worker processes)."""
    if any(s.seconds is None for s in stages):
        return None
    return sum(s.seconds for s in stages)


# A run estimated to take longer than this is refused before it starts unless the limit is raised
# (`run --max-hours`): generous for any real run on one machine (the standard preset takes minutes to
# hours), while a typo (10^12 rounds, a million epochs) stops at once instead of filling the registry.
MAX_HOURS = 72.0


def check_plan(stages: list[StageEstimate], max_hours: float = MAX_HOURS) -> None:
    """Refuse a plan estimated to take longer than ``max_hours`` in one line naming the longest stage,
    what it would do and the limit; stages that cannot be estimated count as nothing."""
    if not 0 < max_hours < float("inf"):
        raise ValueError(f"--max-hours must be a positive number of hours, got {max_hours}")
    known = [s for s in stages if s.seconds is not None]
    total = sum(s.seconds for s in known)
    if total <= max_hours * 3600:
        return
    top = max(known, key=lambda s: s.seconds)
    raise ValueError(f"the plan would take about {total / 3600:,.0f} h, beyond the limit of {max_hours:g} h (the "
                     f"longest stage: {top.stage}, {top.what}): shrink it, or raise the limit with --max-hours")


def duration_text(seconds: float | None) -> str:
    """'42 s', '3.5 min' or '?' (not estimated)."""
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def dominant(stages: list[StageEstimate]) -> str:
    """'the pipeline shadows (41 % of the total)': the stage that takes longest."""
    known = [s for s in stages if s.seconds is not None]
    total = sum(s.seconds for s in known) or 1.0
    top = max(known, key=lambda s: s.seconds)
    return f"{top.stage} ({100 * top.seconds / total:.0f} % of the total)"


_MEMO: dict[Any, Any] = {}


def _memo(key: Any, compute: Any) -> Any:
    """One timing per key (any JSON-able value) and process (a plan and its quick alternative share their
    probes)."""
    from .core.common import config_hash

    key = config_hash(key, 32)
    if key not in _MEMO:
        _MEMO[key] = compute()
    return _MEMO[key]


def _classifier_image_seconds(recipe: TrainConfig, profile: DataProfile, batches: int = 3) -> float:
    """Median seconds per training image of ``recipe``'s model (forward + backward + optimiser step, as
    the training loop takes it, in its precision), on noise."""
    key = ("classifier", recipe.model, recipe.image_size or profile.side, recipe.batch_size, recipe.amp,
           recipe.device, profile.classes)
    return _memo(key, lambda: _time_classifier(recipe, profile, batches))


def _time_classifier(recipe: TrainConfig, profile: DataProfile, batches: int) -> float:
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
