"""Membership-inference audit of an experiment's teacher and student (TCKR step 5).

Attacks (``lira``, ``rmia``, ``loss``; :mod:`pipeline.privacy.attacks`) compare the audited model's
logits on the population (members + non-members) with those of shadow models that imitate its
training. For a model trained on real data the shadows use its own recipe. For the student, which
never saw a real image, two modes are reported, each labelled in every output:

- ``transfer``: the teacher's shadows (real data, the teacher's recipe) applied to the student:
  cheap, and what the TCKR paper does. The shadows describe a different training process than the
  student's, so its AUC is an approximation.
- ``pipeline``: every shadow reruns the whole pipeline on its half of the population: a generator
  trained on that half's images and captions, synthetic rounds, a shadow teacher on the half, and a
  shadow student distilled from it on the synthetic rounds with the student's recipe. The in/out
  distributions then describe the student's real training process. Few such shadows are affordable,
  so RMIA, built for few reference models, is the headline attack; they train in parallel processes
  on a multi-core CPU.

The audit is its own run (``runs/<id>/``) with lineage to the experiment; it saves every population
example's attack scores and the most vulnerable members per audited model.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .captions.prompts import DEFAULT_TEMPLATE, build_prompt, pool_from_store
from .classifiers.train import TensorData, TrainConfig, evaluate, fit_classifier
from .core.cluster import SINGLE, Cluster
from .core.common import (
    Progress,
    ProgressFn,
    config_hash,
    from_dict,
    no_progress,
    read_json,
    resolve_device,
    safe_filename,
    seed_everything,
    to_jsonable,
    write_json,
)
from .core.project import Project
from .core.runs import Link, throttle
from .data.datasets import DatasetConfig, ImageDataset, load_dataset
from .distill import DistillConfig, build_model, real_tensors, train_student
from .finetune import load_generator
from .generate import GenerationPlan, balanced_total, generate_set
from .generators import generator_class, resolve_options
from .privacy.attacks import AttackInputs, attack_names, run_attack
from .privacy.metrics import aop, attack_metrics
from .privacy.shadows import (
    VIEWS,
    ShadowLogits,
    assign_shadows,
    carve_validation,
    load_or_train_shadows,
    shadow_seed,
    train_classifier_shadows,
    view_logits,
)

logger = logging.getLogger(__name__)

MODES = ("transfer", "pipeline")
TOP_VULNERABLE = 50  # most vulnerable member ids kept per audited model


@dataclass(frozen=True)
class AuditConfig:
    """How the membership-inference audit is run."""

    experiment: str | None = None  # experiment run to audit (set by the experiment, or `audit --run`)
    attacks: tuple[str, ...] = ("lira", "rmia", "loss")  # attacks to run, by registered name
    headline: str = "rmia"  # the attack the headline AUC and AOP use
    modes: tuple[str, ...] = MODES  # modes for the student (the teacher is audited with its own recipe)
    method_modes: tuple[str, ...] | None = None  # modes for the other methods' students (None: as ``modes``);
    # pipeline mode reruns every method once per pipeline shadow
    n_shadows: int = 8  # transfer-mode shadows: real data, the teacher's recipe
    pipeline_shadows: int = 2  # pipeline-mode shadows: each reruns generator -> rounds -> teacher -> student
    views: tuple[str, ...] = ("orig", "shift")  # query augmentations: orig, flip, shift (1-pixel roll)
    online: bool = True  # attacks use shadows that trained on an example too (False: only those that did not)
    fixed_variance: bool | None = None  # LiRA: one global variance (None: below 64 shadows, as Carlini et al.)
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. {"rmia": {"a": 0.3}}
    reference_size: int = 1000  # RMIA's population samples z: at most this many test images
    batched: bool = True  # train transfer shadows stacked with vmap when the model allows it
    workers: int | None = None  # processes for pipeline shadows (None: one per CPU core; 1 on a GPU)
    bootstrap: int = 1000  # bootstrap replicates for the AUC interval
    shadow_dir: str | None = None  # reuse this transfer-shadow cache folder (an error if made for another recipe)
    seed: int = 0  # seeds the in/out assignment and the shadows' training

    def __post_init__(self) -> None:
        for name in ("attacks", "modes", "views"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.method_modes is not None:
            object.__setattr__(self, "method_modes", tuple(self.method_modes))
            if set(self.method_modes) - set(MODES) or not self.method_modes:
                raise ValueError(f"unknown method mode(s) {sorted(set(self.method_modes) - set(MODES))}; valid: "
                                 + ", ".join(MODES))
        valid = attack_names()
        unknown = sorted(set(self.attacks) - set(valid))
        if unknown or not self.attacks:
            raise ValueError(f"unknown attack(s) {unknown}; valid: {', '.join(valid)}")
        if self.headline not in self.attacks:
            raise ValueError(f"headline attack {self.headline!r} is not among the attacks run {list(self.attacks)}")
        if set(self.modes) - set(MODES) or not self.modes:
            raise ValueError(f"unknown mode(s) {sorted(set(self.modes) - set(MODES))}; valid: {', '.join(MODES)}")
        bad_views = set(self.views) - set(VIEWS)
        if bad_views or not self.views:
            raise ValueError(f"unknown views {sorted(bad_views)}; valid: {', '.join(VIEWS)}")
        if self.n_shadows < 1 or self.pipeline_shadows < 1:
            raise ValueError(f"n_shadows and pipeline_shadows must be >= 1; got {self.n_shadows}, "
                             f"{self.pipeline_shadows}")
        unknown_opts = sorted(set(self.attack_options) - set(valid))
        if unknown_opts:
            raise ValueError(f"attack_options for unknown attack(s) {unknown_opts}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class AuditResult:
    run_id: str
    metrics: dict[str, Any]  # per audited model: accuracy, aop, mia (headline mode), mia_modes
    seconds: float


@dataclass(frozen=True)
class _Experiment:
    """What the audit needs from a finished experiment run."""

    run_id: str
    run_dir: Path
    config: Any  # ExperimentConfig
    captions: str | None  # "<store>@<version>"


def audit(config: AuditConfig, project: Project, progress: ProgressFn = no_progress,
          pipeline_shadows: PipelineShadows | None = None, cluster: Cluster = SINGLE) -> AuditResult:
    """Audit an experiment's teacher (its own recipe) and student (transfer and/or pipeline mode).

    ``pipeline_shadows`` is a set the experiment started ahead (see :class:`PipelineShadows`). With a
    distributed ``cluster`` (called in its main process) the shadows are shared out over its processes.
    """
    started = time.monotonic()
    # 1. the experiment: config, data, split, trained models
    exp = _load_experiment(project, config.experiment)
    xc = exp.config
    # the population the pipeline shadows started ahead with, if any (decoded once)
    data = pipeline_shadows.data if pipeline_shadows is not None else _AuditData.build(xc, config)
    dataset, population, z, is_member = data.dataset, data.population, data.z, data.is_member
    n_classes = len(dataset.class_names)
    teacher_model = _load_model(exp.run_dir / "teacher.pt", xc.teacher, n_classes)
    student_model = _load_model(exp.run_dir / "student.pt", xc.distill.student, n_classes)
    methods = _load_methods(exp.run_dir, n_classes)  # the other transfer methods' students, if any

    # 2. test accuracy (for AOP)
    test = real_tensors(dataset, [r.id for r in dataset.split("test")], xc.teacher.image_size)
    accuracy = {"teacher": evaluate(teacher_model, test, n_classes)["accuracy"],
                "student": evaluate(student_model, test, n_classes)["accuracy"]}
    for key, (model, recipe, _) in methods.items():
        sized = test if recipe.image_size == xc.teacher.image_size else real_tensors(dataset, test.ids, recipe.image_size)
        accuracy[key] = evaluate(model, sized, n_classes)["accuracy"]

    # 3. register the audit run
    registry = project.registry()
    run = registry.create("audit", config, links=[Link("audited", "run", exp.run_id),
                                                  Link("data", "dataset", dataset.fingerprint)])
    with registry.track(run.id):
        # 4. shadows: transfer (real data, the teacher's recipe), pipeline (maybe started ahead), methods'
        cluster.assign("audit-shadows", config=config, project_root=str(project.root))
        transfer, pipeline_set, method_sets = _audit_shadows(config, exp, data, list(methods.values()), project,
                                                             progress, pipeline_shadows, cluster)

        # 5. attacks: every model against the shadows of each mode
        views = {"teacher": _query(teacher_model, xc.teacher, data, config.views),
                 "student": _query(student_model, xc.distill.student, data, config.views)}
        results: dict[str, dict[str, Any]] = {"teacher": {}, "student": {}}
        results["teacher"]["transfer"] = _attack_all(config, views["teacher"], transfer, population.y, z.y, is_member,
                                                     "transfer", "teacher")
        if "transfer" in config.modes:
            results["student"]["transfer"] = _attack_all(config, views["student"], transfer, population.y, z.y,
                                                         is_member, "transfer", "teacher")
        if pipeline_set is not None:
            results["student"]["pipeline"] = _attack_all(config, views["student"], pipeline_set, population.y, z.y,
                                                         is_member, "pipeline", "student pipeline")
        # every other method's student against the same real-data shadows, and its own pipeline's
        for (key, (model, recipe, _)), method_set in zip(methods.items(), method_sets):
            views[key] = _query(model, recipe, data, config.views)
            results[key] = {}
            if "transfer" in (config.method_modes or config.modes):
                results[key]["transfer"] = _attack_all(config, views[key], transfer, population.y, z.y, is_member,
                                                       "transfer", "teacher")
            if method_set is not None:
                results[key]["pipeline"] = _attack_all(config, views[key], method_set, population.y, z.y, is_member,
                                                       "pipeline", f"{key} pipeline")

        # 6. metrics, per-example scores and the most vulnerable members
        metrics = {name: _model_entry(accuracy[name], by_mode) for name, by_mode in results.items()}
        metrics["shadows"] = {"transfer": _shadow_summary(transfer)}
        if pipeline_set is not None:
            metrics["shadows"]["pipeline"] = _shadow_summary(pipeline_set)
        for key, method_set in zip(methods, method_sets):
            if method_set is not None:
                metrics["shadows"][f"pipeline {key}"] = _shadow_summary(method_set)
        metrics["vulnerable"] = str(run.run_dir / "vulnerable.json")
        metrics["seconds"] = round(time.monotonic() - started, 2)
        metrics["processes"] = cluster.size
        _save_outputs(run.run_dir, data, views, results, metrics)
        registry.report(run.id, **{f"{m}_auc": metrics[m]["mia"]["auc"] for m in ("teacher", "student")},
                        headline=config.headline, student_mode=metrics["student"]["mia"]["mia_mode"])
    return AuditResult(run.id, _strip_scores(metrics), time.monotonic() - started)


def _audit_shadows(config: AuditConfig, exp: _Experiment, data: _AuditData, methods: list[Any], project: Project,
                   progress: ProgressFn, pipeline_shadows: PipelineShadows | None, cluster: Cluster
                   ) -> tuple[ShadowLogits, ShadowLogits | None, list[ShadowLogits | None]]:
    """Every shadow set the audit needs, in one fixed order (every process of a cluster goes through
    the same sets): transfer shadows, the GKD pipeline's, then each method's own pipeline's."""
    xc, population, z = exp.config, data.population, data.z
    n_classes = len(data.dataset.class_names)
    shadow_in = assign_shadows(len(population), config.n_shadows, data.size, config.seed)
    val_in = carve_validation(shadow_in, data.n_val, config.seed) if data.n_val else None
    transfer = load_or_train_shadows(
        project.root / "shadows",
        {**data.common, "kind": "transfer", "recipe": to_jsonable(xc.teacher), "batched": config.batched},
        shadow_in,
        lambda idx: train_classifier_shadows(idx, population, z, shadow_in, val_in, xc.teacher, config.views,
                                             n_classes, config.seed, config.batched, progress),
        cache_dir=Path(config.shadow_dir) if config.shadow_dir else None, cluster=cluster)
    pipeline_set = None
    if "pipeline" in config.modes:
        if pipeline_shadows is None:
            pipeline_shadows = PipelineShadows(config, xc, exp.captions, project, data)
        pipeline_set = pipeline_shadows.result(progress, cluster)
    # each method's own pipeline: the same shadow halves, generators, rounds and teachers, the method's
    # student at the end (a DP-SGD shadow is DP-SGD on the half)
    method_sets: list[ShadowLogits | None] = [None] * len(methods)
    if "pipeline" in (config.method_modes or config.modes):
        method_sets = [PipelineShadows(config, xc, exp.captions, project, data, method=method).result(progress, cluster)
                       for _, _, method in methods]
    return transfer, pipeline_set, method_sets


def audit_share(config: AuditConfig, project_root: str, cluster: Cluster) -> None:
    """A serving process's part of :func:`audit`: its share of every shadow set."""
    project = Project.open(project_root)
    exp = _load_experiment(project, config.experiment)
    data = _AuditData.build(exp.config, config)
    methods = list(_load_methods(exp.run_dir, len(data.dataset.class_names)).values())
    _audit_shadows(config, exp, data, methods, project, no_progress, None, cluster)


def _query(model: torch.nn.Module, recipe: TrainConfig, data: _AuditData, views: tuple[str, ...]
           ) -> tuple[np.ndarray, np.ndarray]:
    """A model's logits on every view of the population and of z, at the model's own input size."""
    population, z = data.population, data.z
    if recipe.image_size != data.image_size:
        population, z = (real_tensors(data.dataset, d.ids, recipe.image_size) for d in (population, z))
    return view_logits(model, population.x, views), view_logits(model, z.x, views)


def _save_outputs(run_dir: Path, data: _AuditData, views: dict[str, tuple[np.ndarray, np.ndarray]],
                  results: dict[str, dict[str, Any]], metrics: dict[str, Any]) -> None:
    """``metrics.json``, ``vulnerable.json``, per-example scores, and ``targets.npz`` (the audited
    models' logits: with the shadow cache, everything a re-scoring needs)."""
    np.savez(run_dir / "targets.npz", ids=np.array(data.population.ids), is_member=data.is_member,
             labels=data.population.y.numpy(), z_ids=np.array(data.z.ids), z_labels=data.z.y.numpy(),
             **{f"{name}_logits": v[0] for name, v in views.items()},
             **{f"{name}_z_logits": v[1] for name, v in views.items()})
    vulnerable = _save_vulnerability(run_dir, data.population.ids, data.is_member, results)
    write_json(run_dir / "metrics.json", _strip_scores(metrics))
    write_json(run_dir / "vulnerable.json", vulnerable)


# -- the experiment being audited -------------------------------------------------------------------------
@dataclass
class _AuditData:
    """The audited population (members + non-members, unreadable images skipped), its ground truth,
    RMIA's reference samples z, and what identifies them in a shadow cache."""

    dataset: ImageDataset
    population: TensorData
    is_member: np.ndarray
    z: TensorData
    size: int  # a shadow trains on as many examples as the target's member set
    n_val: int  # and early-stops on as many as the target's validation set
    common: dict[str, Any]  # manifest fields every shadow set of this population shares
    image_size: int | None  # the population's tensors are at the teacher's input size

    @classmethod
    def build(cls, xc: Any, config: AuditConfig) -> _AuditData:
        dataset = load_dataset(xc.dataset)
        split = dataset.membership()
        population = real_tensors(dataset, list(split.members) + list(split.nonmembers), xc.teacher.image_size)
        members = set(split.members)
        is_member = np.array([i in members for i in population.ids])
        z = real_tensors(dataset, _reference_ids(dataset, config.reference_size, config.seed), xc.teacher.image_size)
        size, n_val = int(is_member.sum()), len(split.validation)
        common = {"dataset": dataset.fingerprint, "population": config_hash(population.ids, 64), "z": config_hash(z.ids, 64),
                  "size": size, "n_val": n_val, "views": list(config.views), "seed": config.seed,
                  "num_classes": len(dataset.class_names)}
        return cls(dataset, population, is_member, z, size, n_val, common, xc.teacher.image_size)


def _load_experiment(project: Project, run_id: str | None) -> _Experiment:
    from .experiment import ExperimentConfig  # the experiment module calls this one

    if not run_id:
        raise ValueError("the audit needs an experiment run id (AuditConfig.experiment, or `audit --run ID`)")
    record = project.registry().get(run_id)
    if record.kind != "experiment":
        raise ValueError(f"run {run_id} is a {record.kind} run; audit an experiment run")
    missing = [f for f in ("teacher.pt", "student.pt") if not (record.run_dir / f).exists()]
    if missing:
        raise ValueError(f"experiment {run_id} has no {', '.join(missing)} yet; finish (or resume) it first")
    saved = read_json(record.run_dir / "config.json")["config"]
    config = from_dict(ExperimentConfig, {k: v for k, v in saved.items() if k != "audit"})
    captions = next((link.ref for link in record.links if link.role == "captions"), None)
    return _Experiment(record.id, record.run_dir, config, captions)


def _load_model(path: Path, recipe: TrainConfig, num_classes: int) -> torch.nn.Module:
    model = build_model(replace(recipe, pretrained=False), num_classes)  # the weights come from the file
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


def _load_methods(run_dir: Path, num_classes: int
                  ) -> dict[str, tuple[torch.nn.Module, TrainConfig, tuple[str, dict[str, Any]]]]:
    """The experiment's other transfer methods (``methods.json``): label -> (model, recipe, (name, options))."""
    from .experiment import _method_model

    path = run_dir / "methods.json"
    out = {}
    for key, entry in (read_json(path) if path.exists() else {}).items():
        recipe = from_dict(TrainConfig, entry["recipe"])
        model = _method_model(recipe, num_classes, dp=entry.get("dp", False))
        model.load_state_dict(torch.load(entry["checkpoint"], map_location="cpu"))
        out[key] = (model.eval(), recipe, (entry["method"], entry.get("options", {})))
    return out


def _reference_ids(dataset: ImageDataset, limit: int, seed: int) -> list[str]:
    """RMIA's population samples z: test images (never trained on by any model), at most ``limit``."""
    ids = sorted(r.id for r in dataset.split("test"))
    if not ids:
        raise ValueError("the audit needs test images as RMIA's reference population; the dataset has none")
    rng = np.random.default_rng(seed)
    return [ids[i] for i in sorted(rng.choice(len(ids), size=min(limit, len(ids)), replace=False))]


# -- attacks and metrics -----------------------------------------------------------------------------------
def _attack_all(config: AuditConfig, target: tuple[np.ndarray, np.ndarray], shadows: ShadowLogits,
                labels: torch.Tensor, z_labels: torch.Tensor, is_member: np.ndarray, mode: str,
                shadow_recipe: str) -> dict[str, Any]:
    """Every configured attack on one model; an attack the shadows cannot support is recorded as skipped."""
    inputs = AttackInputs(labels.numpy(), target[0], shadows.logits, shadows.shadow_in, z_labels.numpy(), target[1],
                          shadows.z_logits, online=config.online)
    entry: dict[str, Any] = {"mia_mode": mode, "shadow_recipe": shadow_recipe, "n_shadows": shadows.n}
    for name in config.attacks:
        options = dict(config.attack_options.get(name, {}))
        if name == "lira" and config.fixed_variance is not None:
            options.setdefault("fixed_variance", config.fixed_variance)
        try:
            scores = run_attack(name, inputs, options)
        except ValueError as err:  # e.g. LiRA with fewer than two in/out shadows per example
            entry[name] = {"skipped": str(err)}
            continue
        entry[name] = {**attack_metrics(scores, is_member, n_boot=config.bootstrap, seed=config.seed),
                       "scores": scores}
    usable = [n for n in (config.headline, *config.attacks) if "auc" in entry[n]]
    if not usable:
        raise RuntimeError(f"no attack could run in {mode} mode: "
                           + "; ".join(f"{n}: {entry[n]['skipped']}" for n in config.attacks))
    entry["attack"] = usable[0]
    if usable[0] != config.headline:
        logger.warning("%s mode: headline attack %s skipped (%s); using %s", mode, config.headline,
                       entry[config.headline]["skipped"], usable[0])
    return entry


def _model_entry(accuracy: float, by_mode: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One audited model's metrics: the headline mode (pipeline when present) flattened into ``mia``
    (so older readers find ``mia.auc``), every mode under ``mia_modes``, AOP of the headline."""
    modes = {}
    for mode, entry in by_mode.items():
        headline = entry[entry["attack"]]
        flat = {k: v for k, v in headline.items() if k != "scores"}
        modes[mode] = {**flat, **entry, "aop": aop(accuracy, headline["auc"])}
    lead = "pipeline" if "pipeline" in modes else "transfer"
    return {"accuracy": accuracy, "aop": modes[lead]["aop"], "mia": modes[lead], "mia_modes": modes}


def _strip_scores(obj: Any) -> Any:
    """The metrics without per-example score arrays (those go to vulnerability/*.npz)."""
    if isinstance(obj, dict):
        return {k: _strip_scores(v) for k, v in obj.items() if k != "scores"}
    return obj


def _save_vulnerability(run_dir: Path, ids: list[str], is_member: np.ndarray,
                        results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each example's score under every attack (``vulnerability/<model>-<mode>.npz``) and the
    ``TOP_VULNERABLE`` members with the highest headline score per model and mode."""
    out: dict[str, Any] = {}
    folder = run_dir / "vulnerability"
    folder.mkdir(parents=True, exist_ok=True)
    for model, by_mode in results.items():
        for mode, entry in by_mode.items():
            scores = {name: entry[name]["scores"] for name in entry if isinstance(entry[name], dict)
                      and "scores" in entry[name]}
            np.savez(folder / f"{safe_filename(model)}-{mode}.npz", ids=np.array(ids), is_member=is_member, **scores)
            headline = scores[entry["attack"]]
            member_idx = np.flatnonzero(is_member)
            top = member_idx[np.argsort(-headline[member_idx], kind="stable")[:TOP_VULNERABLE]]
            out.setdefault(model, {})[mode] = {"attack": entry["attack"],
                                               "members": [{"id": ids[i], "score": float(headline[i])} for i in top]}
    return out


def _shadow_summary(shadows: ShadowLogits) -> dict[str, Any]:
    return {"n": shadows.n, "trained": shadows.trained, "train_seconds": round(shadows.seconds, 2),
            "directory": str(shadows.directory)}


# -- pipeline-mode shadows ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PipelineJob:
    """Everything one pipeline shadow needs (picklable: it may run in a worker process)."""

    index: int
    directory: str
    dataset: DatasetConfig
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    query_ids: tuple[str, ...]  # the population, in audit order
    z_ids: tuple[str, ...]
    captions: tuple[tuple[str, str], ...]  # (id, caption) of the training half
    project_root: str
    store: str | None
    store_version: int | None
    template: str
    generator: str
    generator_options: tuple[tuple[str, Any], ...]
    cardinality: float
    rounds: int
    generation_batch: int
    generation_seed: int
    teacher: TrainConfig
    distill: DistillConfig
    views: tuple[str, ...]
    threads: int
    method: tuple[str, tuple[tuple[str, Any], ...]] | None = None  # a transfer method instead of GKD's student

    @property
    def output(self) -> Path:
        """Where this job's own files go (job, log, result): a method's under the shared shadow folder."""
        if self.method is None:
            return Path(self.directory)
        return Path(self.directory) / "methods" / safe_filename(self.method[0].replace("+", "-plus-")
                                                               + "-" + config_hash(self.method, 8))


class PipelineShadows:
    """Pipeline-mode shadows of one experiment. They need only the data, the captions and the
    experiment's config, not its trained models, so :func:`~pipeline.experiment.run_experiment`
    starts them right after captioning: on a CPU the experiment's own generator trains on one core
    while the shadows train in worker processes on the others. :meth:`result` waits for them (or
    trains them here when none was started) and returns their cached logits.

    With ``method`` = (name, options) the shadows end with that transfer method's student instead of
    GKD's (see :mod:`pipeline.methods`): each reuses the GKD shadow's generator, synthetic rounds and
    shadow teacher from the same work folder, so run the GKD shadows first. A method that reads real
    training images gets the shadow's half. Their logits are cached under their own manifest."""

    def __init__(self, config: AuditConfig, xc: Any, captions: str | None, project: Project,
                 data: _AuditData | None = None, method: tuple[str, dict[str, Any]] | None = None) -> None:
        self.data = data = data or _AuditData.build(xc, config)
        self.project = project
        self.shadow_in = assign_shadows(len(data.population), config.pipeline_shadows, data.size, config.seed)
        val_in = carve_validation(self.shadow_in, data.n_val, config.seed)
        recipe = {"teacher": to_jsonable(xc.teacher), "distill": to_jsonable(xc.distill), "generator": xc.generator,
                  "generator_options": to_jsonable(xc.generator_options), "template": xc.template,
                  "captions": captions, "cardinality": xc.cardinality, "rounds": xc.rounds,
                  "generation_seed": xc.seed}
        self.manifest = {**data.common, "kind": "pipeline", "recipe": recipe}
        work = project.root / "shadows" / "pipeline-work" / config_hash(self.manifest, 16)  # GKD's and the methods'
        job_method = None
        if method is not None:
            name, options = method
            job_method = (name, tuple(sorted(to_jsonable(options).items())))
            self.manifest = {**self.manifest, "kind": "pipeline-method", "method": name, "options": to_jsonable(options)}
        self.directory = project.root / "shadows" / config_hash(self.manifest, 16)
        store, version = _store_ref(captions)
        records = project.caption_store(store).records(version) if store else {}
        ids = data.population.ids
        self.jobs = {}
        for i in range(config.pipeline_shadows):
            train_ids = [ids[j] for j in np.flatnonzero(self.shadow_in[i])]
            missing = [t for t in train_ids if store and t not in records]
            if missing:
                raise ValueError(f"{len(missing)} population images have no caption in {captions} (e.g. "
                                 f"{missing[0]}); pipeline-mode shadows train generators on non-members too: "
                                 "caption the whole training split")
            self.jobs[i] = _PipelineJob(
                index=i, directory=str(work / f"shadow-{i:04d}"), method=job_method,
                dataset=xc.dataset, train_ids=tuple(train_ids),
                val_ids=tuple(ids[j] for j in np.flatnonzero(val_in[i])), query_ids=tuple(ids),
                z_ids=tuple(data.z.ids), captions=tuple((t, records[t].caption) for t in train_ids if t in records),
                project_root=str(project.root), store=store, store_version=version, template=xc.template,
                generator=xc.generator, generator_options=xc.generator_options, cardinality=xc.cardinality,
                rounds=xc.rounds, generation_batch=xc.generation_batch, generation_seed=xc.seed,
                teacher=replace(xc.teacher, seed=shadow_seed(xc.teacher, config.seed, i)),
                distill=replace(xc.distill, student=replace(xc.distill.student,
                                                            seed=shadow_seed(xc.distill.student, config.seed, i))),
                views=config.views, threads=0)
        self.workers = _workers(config, xc)
        self._events: queue.Queue = queue.Queue()
        self._running: dict[int, subprocess.Popen] = {}
        self._waiting: list[int] = []
        self._started: float | None = None

    def start(self) -> PipelineShadows:
        """Start the shadows that are not cached yet in worker processes (no-op with one worker)."""
        if self.workers > 1:
            self._waiting = [i for i in self.jobs if not (self.directory / f"shadow-{i:04d}.npz").exists()]
            self._started = time.monotonic()
            self._fill()
        return self

    def result(self, progress: ProgressFn = no_progress, cluster: Cluster = SINGLE) -> ShadowLogits:
        """The shadows' logits: trained here (or waited for) where not cached. With a distributed
        ``cluster`` each process trains its share one shadow after another (no worker processes)."""
        if cluster.distributed:
            self.stop()
            self.workers = 1
        try:
            shadows = load_or_train_shadows(self.project.root / "shadows", self.manifest, self.shadow_in,
                                            lambda indices: self._train(indices, progress),
                                            group=1 if cluster.distributed else None, cluster=cluster)
        finally:
            self.stop()
        if self._started is not None and shadows.trained:  # trained in the background since start()
            shadows = replace(shadows, seconds=time.monotonic() - self._started)
        return shadows

    def stop(self) -> None:
        """Kill any worker still running (after a failure or a cancel)."""
        for proc in self._running.values():
            proc.kill()
            proc.wait()
        self._running.clear()
        self._waiting.clear()

    def _train(self, indices: list[int], progress: ProgressFn) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        if self.workers <= 1:
            return {i: _pipeline_shadow(self.jobs[i], progress) for i in indices}
        if not self._running and not self._waiting:
            self._waiting = list(indices)
        self._fill()
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        while len(out) < len(indices):
            kind, index, payload = self._events.get()
            if kind == "event":
                progress(Progress(payload["stage"], payload["done"], payload["total"], {}))
                continue
            proc = self._running.pop(index)
            job = self.jobs[index]
            if proc.wait() != 0:
                log = job.output / "worker.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"pipeline shadow {index + 1} failed (exit {proc.returncode}):\n{tail}")
            with np.load(job.output / "result.npz") as result:
                out[index] = (result["logits"], result["z_logits"])
            self._fill()
        return out

    def _fill(self) -> None:
        from .core.launch import child_env

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        while self._waiting and len(self._running) < self.workers:
            index = self._waiting.pop(0)
            self._running[index] = _start_worker(replace(self.jobs[index], threads=threads), child_env(), self._events)


def _store_ref(ref: str | None) -> tuple[str | None, int | None]:
    if not ref:
        return None, None
    name, _, version = ref.partition("@")
    return name, int(version) if version else None


def _workers(config: AuditConfig, xc: Any) -> int:
    if config.workers is not None:
        return max(1, config.workers)
    if resolve_device(xc.teacher.device).startswith("cuda"):
        return 1  # one process keeps the GPU; the shadows run one after another
    return max(1, min(config.pipeline_shadows, os.cpu_count() or 1))


def _start_worker(job: _PipelineJob, env: dict[str, str], events: queue.Queue) -> subprocess.Popen:
    directory = job.output
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "job.pkl").write_bytes(pickle.dumps(job))
    (directory / "result.npz").unlink(missing_ok=True)
    log = open(directory / "worker.log", "ab")  # noqa: SIM115 (closed by the reader thread)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.audit", str(directory / "job.pkl")], env=env,
                            stdout=subprocess.PIPE, stderr=log, text=True)

    def read() -> None:
        for line in proc.stdout:
            try:
                events.put(("event", job.index, json.loads(line)))
            except ValueError:
                pass
        proc.wait()
        log.close()
        events.put(("done", job.index, None))

    threading.Thread(target=read, daemon=True).start()
    return proc


def _worker_main(job_file: str) -> None:
    """A child process: run one pipeline shadow, progress as JSON lines on stdout, logits to result.npz."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    job = pickle.loads(Path(job_file).read_bytes())
    ready = throttle(0.5)

    def emit(event: Progress) -> None:
        if ready(event.total is not None and event.done >= event.total):
            print(json.dumps({"stage": event.stage, "done": event.done, "total": event.total}), flush=True)

    logits, z_logits = _pipeline_shadow(job, emit)
    tmp = job.output / ".result.tmp.npz"
    np.savez(tmp, logits=logits, z_logits=z_logits)
    tmp.replace(job.output / "result.npz")


def _pipeline_shadow(job: _PipelineJob, progress: ProgressFn) -> tuple[np.ndarray, np.ndarray]:
    """One pipeline shadow: generator -> synthetic rounds -> teacher -> student on its half; returns
    the shadow student's logits on the population views and on z. Every step resumes from its
    files in ``job.directory``."""
    if job.threads:
        torch.set_num_threads(job.threads)
    root = Path(job.directory)
    tag = f"pipeline shadow {job.index + 1}"

    def report(event: Progress) -> None:
        progress(Progress(f"{tag}: {event.stage}", event.done, event.total, {}))

    # 1. data: the half this shadow trains on, its validation carve-out, the query sets
    dataset = load_dataset(job.dataset)
    train = real_tensors(dataset, list(job.train_ids), job.teacher.image_size)
    val = real_tensors(dataset, list(job.val_ids), job.teacher.image_size) if job.val_ids else None
    captions = dict(job.captions)

    # 2. generator on the half's images and captions, saved and reloaded as the finetune stage does
    generator_dir = root / "generator"
    if not (generator_dir / "backend.json").exists():
        cls = generator_class(job.generator)
        generator = cls(cls.config_class(**resolve_options(cls, dict(job.generator_options))))
        images, prompts, labels = [], [], []
        for record, image in dataset.iter_images([dataset.record(i) for i in job.train_ids]):
            label = dataset.class_name(record.label)
            images.append(image)
            prompts.append(build_prompt(label, captions[record.id], job.template) if record.id in captions
                           else f"a photo of a {label}")
            labels.append(record.label)
        generator.fit(images, prompts, labels, root / "checkpoints", report)
        generator.save(generator_dir)
        write_json(generator_dir / "backend.json", {"backend": job.generator, "run": f"shadow-{job.index}"})
    generator = load_generator(generator_dir)

    # 3. synthetic rounds from the half's captions
    project = Project.open(job.project_root)
    members = set(job.train_ids)
    if job.store:
        pool = pool_from_store(project, job.store, dataset, members, job.store_version, job.template or DEFAULT_TEMPLATE)
    else:
        from .captions.prompts import pool_from_class_names

        pool = pool_from_class_names(dataset.class_names)
    total = balanced_total(len(members), job.cardinality, len(dataset.class_names))
    rounds = [generate_set(generator, pool, GenerationPlan(total=total, seed=job.generation_seed, round=k,
                                                           batch_size=job.generation_batch),
                           root / "synthetic" / f"round-{k}", progress=report) for k in range(job.rounds)]

    # 4. shadow teacher on the real half (early stopping on its carve-out)
    seed_everything(job.teacher.seed)
    teacher = build_model(job.teacher, len(dataset.class_names))
    fit_classifier(teacher, lambda _: train, job.teacher, val, root / "teacher.ckpt", report, stage="teacher")
    # 5. the shadow student: GKD's on the synthetic rounds, or the method's
    if job.method is None:
        student = train_student(teacher, rounds, job.distill, len(dataset.class_names), root, report,
                                teacher_recipe=job.teacher).model
    else:
        student = _method_shadow_student(job, dataset, teacher.eval(), train, rounds, report)

    # 6. the shadow student's logits (at the student's input size)
    size = job.distill.student.image_size
    query = real_tensors(dataset, list(job.query_ids), size)
    z = real_tensors(dataset, list(job.z_ids), size)
    return view_logits(student, query.x, job.views), view_logits(student, z.x, job.views)


def _method_shadow_student(job: _PipelineJob, dataset: ImageDataset, teacher: torch.nn.Module, train: TensorData,
                           rounds: list[Any], progress: ProgressFn) -> torch.nn.Module:
    """A transfer method's student in a pipeline shadow, trained as the experiment trains it
    (:func:`pipeline.experiment._train_methods`) from the shadow's teacher, rounds and half."""
    from .distill import synthetic_tensors
    from .methods import MethodContext, RealData, create_method

    name, options = job.method
    method = create_method(name, dict(options))
    recipe = job.distill.student
    real = None
    if method.reads_real():
        sized = real_tensors(dataset, list(job.train_ids), recipe.image_size)
        val = real_tensors(dataset, list(job.val_ids), recipe.image_size) if job.val_ids else None
        real = RealData(sized, val)
    context = MethodContext(teacher, job.teacher, recipe, job.distill.temperature, job.distill.alpha,
                            len(dataset.class_names), tuple(train.x.shape[1:]),
                            tuple(synthetic_tensors(r, recipe.image_size) for r in rounds),
                            job.distill.regen_every, real, recipe.seed)
    return method.train(context, job.output / "train", progress).model.eval()


if __name__ == "__main__":
    _worker_main(sys.argv[1])
