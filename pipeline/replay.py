"""The experiment replayed on a shadow's half of the population: pipeline-mode shadows.

A pipeline shadow trains exactly what the experiment trains, with the same stage functions, on a
training set of its own drawn from the audited population: a generator (``finetune``), synthetic
rounds (``generate``), a teacher and a GKD student (``distill``) or another transfer method's student
(``methods``). The audit then reads the shadow students' logits. :func:`pipeline_shadows` builds one
model's shadow set for :mod:`pipeline.privacy.pipeline_shadows` (which schedules them, in worker
processes on a multi-core CPU); :func:`run_shadow` is what each one runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .audit import AuditConfig, transfer_shadow_dir
from .captions.store import caption_store
from .classifiers.models import load_classifier
from .classifiers.train import TrainConfig
from .core.common import Progress, ProgressFn, config_hash, safe_filename, to_jsonable
from .core.project import Project
from .data.context import DataContext
from .data.datasets import DatasetConfig
from .data.tensors import TensorData
from .distill import DistillConfig, train_student, train_teacher
from .finetune import fit_generator, load_generator, training_examples
from .generate import GenerationPlan, SyntheticSet, balanced_total, generate_set, prompt_pool
from .methods import MethodContext, RealData, create_method
from .privacy.pipeline_shadows import Logits, PipelineShadows, ShadowJob, default_workers
from .privacy.population import Population
from .privacy.shadows import assign_shadows, carve_validation, shadow_seed, view_logits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineRecipe:
    """How the experiment trains, as a shadow replays it (picklable)."""

    dataset: DatasetConfig
    captions: str | None  # "<store>@<version>" of the captions the generator trains on (None: class names)
    template: str
    generator: str
    generator_options: tuple[tuple[str, Any], ...]
    cardinality: float
    rounds: int
    generation_batch: int
    generation_seed: int
    teacher: TrainConfig
    distill: DistillConfig

    def manifest(self) -> dict[str, Any]:
        """What determines a shadow's training (its cache key, beside the population's)."""
        return {"teacher": to_jsonable(self.teacher), "distill": to_jsonable(self.distill),
                "generator": self.generator, "generator_options": to_jsonable(self.generator_options),
                "template": self.template, "captions": self.captions, "cardinality": self.cardinality,
                "rounds": self.rounds, "generation_seed": self.generation_seed}


@dataclass(frozen=True)
class ShadowSpec:
    """One pipeline shadow's half and recipe (the recipe's seeds are the shadow's own)."""

    recipe: PipelineRecipe
    index: int
    directory: str  # its work folder: generator, rounds and teacher (shared by the methods' shadows)
    project_root: str
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    query_ids: tuple[str, ...]  # the population, in audit order
    z_ids: tuple[str, ...]
    views: tuple[str, ...]
    method: tuple[str, tuple[tuple[str, Any], ...]] | None = None  # a transfer method instead of GKD's student
    teacher_weights: str | None = None  # the transfer shadow on the same half, when there is one: its teacher


def pipeline_shadows(recipe: PipelineRecipe, population: Population, project: Project, config: AuditConfig,
                     method: tuple[str, dict[str, Any]] | None = None) -> PipelineShadows:
    """The pipeline-mode shadows of the GKD student, or of ``method``'s (name, options) student, which
    reuse the GKD shadows' generators, rounds and teachers (so run the GKD ones first)."""
    # 1. who trains on what: halves of the population, each with its validation carve-out
    shadow_in = assign_shadows(len(population.population), config.pipeline_shadows, population.size, config.seed)
    val_in = carve_validation(shadow_in, population.n_val, config.seed)
    ids = population.population.ids
    _check_captions(recipe, project, [ids[j] for j in np.flatnonzero(shadow_in.any(0))])
    # 2. the cache manifest and work folders (the GKD shadows' work folder is shared by the methods')
    manifest = {**population.common, "kind": "pipeline", "recipe": recipe.manifest()}
    work = project.root / "shadows" / "pipeline-work" / config_hash(manifest, 16)
    job_method = None if method is None else (method[0], tuple(sorted(to_jsonable(method[1]).items())))
    if method is not None:
        manifest = {**manifest, "kind": "pipeline-method", "method": method[0], "options": to_jsonable(method[1])}
    # 3. one job per shadow, its seeds its own; shadow i's half, carve-out and seed are those of transfer
    # shadow i (assign_shadows keeps every prefix), which is the teacher recipe's model: reused as its teacher
    teachers = transfer_shadow_dir(config, population, recipe.teacher, project)
    jobs = {}
    for i in range(config.pipeline_shadows):
        shadow_recipe = replace(recipe, teacher=replace(recipe.teacher, seed=shadow_seed(recipe.teacher, config.seed, i)),
                                distill=replace(recipe.distill, student=replace(
                                    recipe.distill.student, seed=shadow_seed(recipe.distill.student, config.seed, i))))
        spec = ShadowSpec(shadow_recipe, i, str(work / f"shadow-{i:04d}"), str(project.root),
                          tuple(ids[j] for j in np.flatnonzero(shadow_in[i])),
                          tuple(ids[j] for j in np.flatnonzero(val_in[i])), tuple(ids), tuple(population.z.ids),
                          population.views, job_method, str(teachers / f"shadow-{i:04d}.pt"))
        jobs[i] = ShadowJob(i, str(_output(spec)), run_shadow, spec)
    workers = default_workers(config.workers, config.pipeline_shadows, recipe.teacher.device.startswith("cuda"))
    return PipelineShadows(project.root / "shadows", manifest, shadow_in, jobs, workers,
                           local={"data": population.data})


def _check_captions(recipe: PipelineRecipe, project: Project, ids: Sequence[str]) -> None:
    """Pipeline shadows train generators on non-members too: every image they use needs a caption."""
    if not recipe.captions:
        return
    store, _, version = recipe.captions.partition("@")
    records = caption_store(project, store).records(int(version) if version else None)
    missing = [i for i in ids if i not in records]
    if missing:
        raise ValueError(f"{len(missing)} population images have no caption in {recipe.captions} (e.g. "
                         f"{missing[0]}); pipeline-mode shadows train generators on non-members too: "
                         "caption the whole training split")


def _output(spec: ShadowSpec) -> Path:
    """Where a job's own files go (job, log, result): a method's under the shared shadow folder."""
    if spec.method is None:
        return Path(spec.directory)
    name = safe_filename(spec.method[0].replace("+", "-plus-"))
    return Path(spec.directory) / "methods" / f"{name}-{config_hash(spec.method, 8)}"


def run_shadow(spec: ShadowSpec, progress: ProgressFn, data: DataContext | None = None) -> Logits:
    """One pipeline shadow: generator -> synthetic rounds -> teacher -> student on its half, with the
    experiment's own stage functions; returns the shadow student's logits on the population views and
    on z. Every step resumes from its files in ``spec.directory``. ``data``: the experiment's loaded
    data when the shadow runs in its process (a worker process loads its own)."""
    recipe, root = spec.recipe, Path(spec.directory)
    tag = f"pipeline shadow {spec.index + 1}"

    def report(event: Progress) -> None:
        progress(Progress(f"{tag}: {event.stage}", event.done, event.total, {}))

    # 1. data: the half this shadow trains on and its validation carve-out
    data = data or DataContext.open(recipe.dataset)
    size = recipe.teacher.image_size
    train, val = data.tensors(spec.train_ids, size), data.tensors(spec.val_ids, size) if spec.val_ids else None
    # 2. the generator on the half's images and captions, as the finetune stage trains it
    generator = _generator(spec, data, root, report)
    # 3. synthetic rounds from the half's captions, as the generate stage makes them
    rounds = _rounds(spec, data, generator, root, report)
    # 4. the shadow teacher on the half, as the distill stage trains it (the transfer shadow on the same
    # half is that very model: reused when it was trained)
    if spec.teacher_weights and Path(spec.teacher_weights).exists():
        teacher = load_classifier(Path(spec.teacher_weights), recipe.teacher, data.num_classes)
    else:
        teacher = train_teacher(train, val, recipe.teacher, data.num_classes, root, report).model.eval()
    # 5. the shadow student: GKD's on the synthetic rounds, or the method's
    if spec.method is None:
        student = train_student(teacher, rounds, recipe.distill, data.num_classes, root, report,
                                teacher_recipe=recipe.teacher).model
    else:
        name, options = spec.method
        context = method_context(teacher, recipe.teacher, recipe.distill, data, rounds, spec.train_ids,
                                 spec.val_ids, create_method(name, dict(options)).reads_real())
        student = create_method(name, dict(options)).train(context, _output(spec) / "train", report).model
    # 6. the shadow student's logits (at the student's input size)
    student_size = recipe.distill.student.image_size
    query, z = data.tensors(spec.query_ids, student_size), data.tensors(spec.z_ids, student_size)
    return view_logits(student.eval(), query.x, spec.views), view_logits(student, z.x, spec.views)


def _generator(spec: ShadowSpec, data: DataContext, root: Path, progress: ProgressFn) -> Any:
    recipe, out = spec.recipe, root / "generator"
    if not (out / "backend.json").exists():
        captions = {}
        if recipe.captions:
            store, _, version = recipe.captions.partition("@")
            records = caption_store(Project.open(spec.project_root), store).records(int(version) if version else None)
            captions = {i: records[i].caption for i in spec.train_ids if i in records}
        images, prompts, labels = training_examples(data, spec.train_ids, captions, recipe.template)
        fit_generator(recipe.generator, recipe.generator_options, images, prompts, labels, root / "checkpoints",
                      out, f"shadow-{root.name}", progress)
    return load_generator(out)


def _rounds(spec: ShadowSpec, data: DataContext, generator: Any, root: Path, progress: ProgressFn
            ) -> list[SyntheticSet]:
    recipe, members = spec.recipe, set(spec.train_ids)
    pool = prompt_pool(Project.open(spec.project_root), f"store:{recipe.captions}" if recipe.captions else "classnames",
                       data, members, recipe.template)
    total = balanced_total(len(members), recipe.cardinality, data.num_classes)
    return [generate_set(generator, pool, GenerationPlan(total=total, seed=recipe.generation_seed, round=k,
                                                         batch_size=recipe.generation_batch),
                         root / "synthetic" / f"round-{k}", progress=progress) for k in range(recipe.rounds)]


def method_context(teacher: nn.Module, teacher_recipe: TrainConfig, distill: DistillConfig, data: DataContext,
                   rounds: Sequence[SyntheticSet], member_ids: Sequence[str], validation_ids: Sequence[str],
                   reads_real: bool) -> MethodContext:
    """What a transfer method gets, in the experiment and in its pipeline shadows alike: the teacher, the
    recipes and KD settings, the synthetic rounds at the student's size, and the real members only
    for a method that declares it reads them."""
    recipe = distill.student
    real = None
    if reads_real:
        members = data.tensors(member_ids, recipe.image_size)
        val = data.tensors(validation_ids, recipe.image_size) if validation_ids else None
        real = RealData(members, val)
    shape = tuple(data.tensors(member_ids, teacher_recipe.image_size).x.shape[1:])  # what the teacher takes
    synthetic: tuple[TensorData, ...] = tuple(r.tensors(recipe.image_size) for r in rounds)
    return MethodContext(teacher, teacher_recipe, recipe, distill.temperature, distill.alpha, data.num_classes,
                         shape, synthetic, distill.regen_every, real, recipe.seed)
