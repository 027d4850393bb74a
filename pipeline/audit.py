"""Membership-inference audit of trained models (TCKR step 5).

Attacks (``lira``, ``rmia``, ``loss``, any registered one; :mod:`pipeline.privacy.attacks`) compare an
audited model's logits on the population (members + non-members) with those of shadow models that
imitate its training. What is audited, and how its shadows are trained, comes from the caller in an
:class:`AuditSubject` (the experiment builds it: ``pipeline.experiment``); the audit reads it and
builds nothing of the pipeline itself. Two modes, each labelled in every output:

- ``transfer``: shadows trained on real data with the teacher's recipe, applied to every model: cheap,
  and what the TCKR paper does; for a student that never saw a real image an approximation;
- ``pipeline``: the subject's own pipeline-mode shadows (:mod:`pipeline.privacy.pipeline_shadows`),
  each rerunning the whole pipeline on its half of the population, so the in/out distributions
  describe the student's real training process. Few are affordable, so RMIA, built for few reference
  models, is the headline attack.

Every attack's metrics carry, beside its AUC, the *empirical ε* its ROC implies (an attack's lower bound,
:func:`pipeline.privacy.metrics.empirical_epsilon`, at the model's own δ when it is DP, else
``DEFAULT_DELTA``); each model's entry names its *formal ε* (its DP guarantee, or None: no guarantee).

The audit is its own run (``runs/<id>/``) with lineage to the audited experiment; it saves every
population example's attack scores and the most vulnerable members per audited model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classifiers.train import TrainConfig
from .core.cluster import SINGLE, Cluster
from .core.common import ProgressFn, config_hash, no_progress, safe_filename, to_jsonable, write_json
from .core.project import Project
from .core.runs import Link
from .core.schema import schema
from .privacy.attacks import AttackInputs, attack_names, run_attack
from .privacy.metrics import DEFAULT_DELTA, aop, attack_metrics
from .privacy.pipeline_shadows import PipelineShadows
from .privacy.population import Population
from .privacy.shadows import (
    VIEWS,
    ShadowLogits,
    assign_shadows,
    carve_validation,
    load_or_train_shadows,
    train_classifier_shadows,
    view_logits,
)

logger = logging.getLogger(__name__)

MODES = ("transfer", "pipeline")
TOP_VULNERABLE = 50  # most vulnerable member ids kept per audited model


@schema
@dataclass(frozen=True)
class AuditConfig:
    """How the membership-inference audit is run."""

    experiment: str | None = None  # experiment run to audit (set by the experiment, or `audit --run`)
    attacks: tuple[str, ...] = field(default_factory=lambda: tuple(attack_names()))  # by name (default: all registered)
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
    batched: bool = True  # train transfer shadows stacked with vmap on a GPU when the model allows it
    workers: int | None = None  # processes for pipeline shadows (None: one per CPU core; 1 on a GPU)
    bootstrap: int = 1000  # bootstrap replicates for the AUC interval
    shadow_dir: str | None = None  # reuse this transfer-shadow cache folder (an error if made for another recipe)
    seed: int = 0  # seeds the in/out assignment and the shadows' training

    def __post_init__(self) -> None:
        for name in ("attacks", "modes", "views"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.method_modes is not None:
            object.__setattr__(self, "method_modes", tuple(self.method_modes))
            _check_names("method mode", self.method_modes, MODES)
        _check_names("attack", self.attacks, attack_names())
        if self.headline not in self.attacks:
            raise ValueError(f"headline attack {self.headline!r} is not among the attacks run {list(self.attacks)}")
        _check_names("mode", self.modes, MODES)
        _check_names("view", self.views, VIEWS)
        if self.n_shadows < 1 or self.pipeline_shadows < 1:
            raise ValueError(f"n_shadows and pipeline_shadows must be >= 1; got {self.n_shadows}, "
                             f"{self.pipeline_shadows}")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        unknown = sorted(set(self.attack_options) - set(attack_names()))
        if unknown:
            raise ValueError(f"attack_options for unknown attack(s) {unknown}; valid: {', '.join(attack_names())}")

    def modes_of(self, method: bool) -> tuple[str, ...]:
        """The modes a student is audited in: the GKD student's, or another method's."""
        return (self.method_modes or self.modes) if method else self.modes


def _check_names(what: str, names: tuple[str, ...], valid: Any) -> None:
    unknown = sorted(set(names) - set(valid))
    if unknown or not names:
        raise ValueError(f"unknown {what}(s) {unknown}; valid: {', '.join(valid)}")


@dataclass
class AuditedModel:
    """One model to audit, as its trainer hands it over."""

    name: str  # "teacher", "student", or a transfer method's label
    model: torch.nn.Module
    image_size: int | None  # its input size
    accuracy: float  # on the real test split (measured once, by the caller), for AOP
    modes: tuple[str, ...]  # "transfer" (the teacher's shadows) and/or "pipeline" (its own shadows)
    pipeline_label: str = ""  # how its pipeline shadows are named in the outputs ("student pipeline", ...)
    epsilon: float | None = None  # its formal DP guarantee's ε (None: no guarantee)
    delta: float | None = None  # that guarantee's δ, also the δ of its empirical ε (None: DEFAULT_DELTA)


@dataclass
class AuditSubject:
    """What an audit reads: the experiment, its population, the recipe transfer shadows imitate, the
    models (the teacher first), and each model's pipeline-mode shadows (by model name)."""

    experiment: str
    population: Population
    shadow_recipe: TrainConfig  # the teacher's recipe: transfer shadows train like it
    models: list[AuditedModel]
    pipelines: dict[str, PipelineShadows] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditResult:
    run_id: str
    metrics: dict[str, Any]  # per audited model: accuracy, aop, mia (headline mode), mia_modes
    seconds: float


def audit(config: AuditConfig, subject: AuditSubject, project: Project, progress: ProgressFn = no_progress,
          cluster: Cluster = SINGLE) -> AuditResult:
    """Audit every model of ``subject`` in its modes, as a registered run. With a distributed ``cluster``
    (called in its main process) the shadows are shared out over its processes."""
    started = time.monotonic()
    # 1. register the audit run
    registry = project.registry()
    run = registry.create("audit", config, links=[Link("audited", "run", subject.experiment),
                                                  Link("data", "dataset", subject.population.data.fingerprint)])
    with registry.track(run.id):
        # 2. shadows: transfer (real data, the teacher's recipe), then each model's pipeline shadows
        transfer, pipelines = audit_shadows(config, subject, project, progress, cluster)
        # 3. attacks: every model against the shadows of each of its modes
        population = subject.population
        views, results = {}, {}
        for audited in subject.models:
            views[audited.name] = _query(audited, population)
            results[audited.name] = _attack_modes(config, audited, views[audited.name], population, transfer,
                                                  pipelines.get(audited.name))
        # 4. metrics, per-example scores and the most vulnerable members
        accuracy = {m.name: m.accuracy for m in subject.models}
        metrics: dict[str, Any] = {m.name: _model_entry(accuracy[m.name], results[m.name], m) for m in subject.models}
        metrics["shadows"] = {"transfer": _shadow_summary(transfer),
                              **{_shadow_key(name): _shadow_summary(s) for name, s in pipelines.items()}}
        metrics.update(vulnerable=str(run.run_dir / "vulnerable.json"), processes=cluster.size,
                       seconds=round(time.monotonic() - started, 2))
        _save_outputs(run.run_dir, population, views, results, metrics)
        registry.report(run.id, **{f"{m}_auc": metrics[m]["mia"]["auc"] for m in ("teacher", "student") if m in metrics},
                        **{f"{m}_empirical_epsilon": metrics[m]["mia"]["empirical_epsilon"]
                           for m in ("teacher", "student") if m in metrics},
                        headline=config.headline,
                        **({"student_mode": metrics["student"]["mia"]["mia_mode"]} if "student" in metrics else {}))
    return AuditResult(run.id, _strip_scores(metrics), time.monotonic() - started)


def audit_shadows(config: AuditConfig, subject: AuditSubject, project: Project, progress: ProgressFn = no_progress,
                  cluster: Cluster = SINGLE) -> tuple[ShadowLogits, dict[str, ShadowLogits]]:
    """Every shadow set the audit needs, in one fixed order (every process of a cluster goes through the
    same sets): the transfer shadows, then each model's pipeline shadows in the subject's order."""
    population = subject.population
    shadow_in = assign_shadows(len(population.population), config.n_shadows, population.size, config.seed)
    val_in = carve_validation(shadow_in, population.n_val, config.seed) if population.n_val else None
    recipe = subject.shadow_recipe
    transfer = load_or_train_shadows(
        project.root / "shadows", transfer_manifest(config, population, recipe), shadow_in,
        lambda idx: train_classifier_shadows(idx, population.population, population.z, shadow_in, val_in, recipe,
                                             population.views, population.data.num_classes, config.seed,
                                             config.batched, progress),
        cache_dir=Path(config.shadow_dir) if config.shadow_dir else None, cluster=cluster)
    pipelines = {name: subject.pipelines[name].result(progress, cluster)
                 for name in [m.name for m in subject.models] if name in subject.pipelines}
    return transfer, pipelines


def transfer_manifest(config: AuditConfig, population: Population, recipe: TrainConfig) -> dict[str, Any]:
    """What determines the transfer shadows (their cache key)."""
    return {**population.common, "kind": "transfer", "recipe": to_jsonable(recipe), "batched": config.batched}


def transfer_shadow_dir(config: AuditConfig, population: Population, recipe: TrainConfig, project: Project) -> Path:
    """Where the transfer shadows of ``recipe`` are cached (their logits and models)."""
    if config.shadow_dir:
        return Path(config.shadow_dir)
    return project.root / "shadows" / config_hash(transfer_manifest(config, population, recipe), 16)


def _query(audited: AuditedModel, population: Population) -> tuple[np.ndarray, np.ndarray]:
    """A model's logits on every view of the population and of z, at the model's own input size."""
    pop, z = population.at(audited.image_size)
    return view_logits(audited.model, pop.x, population.views), view_logits(audited.model, z.x, population.views)


def _attack_modes(config: AuditConfig, audited: AuditedModel, target: tuple[np.ndarray, np.ndarray],
                  population: Population, transfer: ShadowLogits, pipeline: ShadowLogits | None) -> dict[str, Any]:
    """One model's attacks: against the transfer shadows and, when it has them, its own pipeline's."""
    out = {}
    delta = audited.delta if audited.delta is not None else DEFAULT_DELTA
    if "transfer" in audited.modes:
        out["transfer"] = _attack_all(config, target, transfer, population, "transfer", "teacher", delta)
    if "pipeline" in audited.modes and pipeline is not None:
        out["pipeline"] = _attack_all(config, target, pipeline, population, "pipeline", audited.pipeline_label, delta)
    return out


def _attack_all(config: AuditConfig, target: tuple[np.ndarray, np.ndarray], shadows: ShadowLogits,
                population: Population, mode: str, shadow_recipe: str, delta: float = DEFAULT_DELTA
                ) -> dict[str, Any]:
    """Every configured attack on one model; an attack the shadows cannot support is recorded as skipped."""
    inputs = AttackInputs(population.population.y.numpy(), target[0], shadows.logits, shadows.shadow_in,
                          population.z.y.numpy(), target[1], shadows.z_logits, online=config.online)
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
        entry[name] = {**attack_metrics(scores, population.is_member, n_boot=config.bootstrap, seed=config.seed,
                                        delta=delta), "scores": scores}
    usable = [n for n in (config.headline, *config.attacks) if "auc" in entry[n]]
    if not usable:
        raise RuntimeError(f"no attack could run in {mode} mode: "
                           + "; ".join(f"{n}: {entry[n]['skipped']}" for n in config.attacks))
    entry["attack"] = usable[0]
    if usable[0] != config.headline:
        logger.warning("%s mode: headline attack %s skipped (%s); using %s", mode, config.headline,
                       entry[config.headline]["skipped"], usable[0])
    return entry


def _model_entry(accuracy: float, by_mode: dict[str, dict[str, Any]], audited: AuditedModel | None = None
                 ) -> dict[str, Any]:
    """One audited model's metrics: the headline mode (pipeline when present) flattened into ``mia``
    (so older readers find ``mia.auc`` and ``mia.empirical_epsilon``), every mode under ``mia_modes``,
    AOP of the headline, and the formal guarantee (``formal_epsilon`` None: the model has none)."""
    modes = {}
    for mode, entry in by_mode.items():
        headline = entry[entry["attack"]]
        flat = {k: v for k, v in headline.items() if k != "scores"}
        modes[mode] = {**flat, **entry, "aop": aop(accuracy, headline["auc"])}
    lead = "pipeline" if "pipeline" in modes else "transfer"
    formal = {"formal_epsilon": audited.epsilon if audited else None,
              "formal_delta": audited.delta if audited and audited.epsilon is not None else None}
    return {"accuracy": accuracy, "aop": modes[lead]["aop"], "mia": modes[lead], "mia_modes": modes, **formal}


def _shadow_key(name: str) -> str:
    return "pipeline" if name == "student" else f"pipeline {name}"


def _strip_scores(obj: Any) -> Any:
    """The metrics without per-example score arrays (those go to vulnerability/*.npz)."""
    if isinstance(obj, dict):
        return {k: _strip_scores(v) for k, v in obj.items() if k != "scores"}
    return obj


def _save_outputs(run_dir: Path, population: Population, views: dict[str, tuple[np.ndarray, np.ndarray]],
                  results: dict[str, dict[str, Any]], metrics: dict[str, Any]) -> None:
    """``metrics.json``, ``vulnerable.json``, per-example scores, and ``targets.npz`` (the audited
    models' logits: with the shadow cache, everything a re-scoring needs)."""
    pop, z = population.population, population.z
    np.savez(run_dir / "targets.npz", ids=np.array(pop.ids), is_member=population.is_member,
             labels=pop.y.numpy(), z_ids=np.array(z.ids), z_labels=z.y.numpy(),
             **{f"{name}_logits": v[0] for name, v in views.items()},
             **{f"{name}_z_logits": v[1] for name, v in views.items()})
    vulnerable = _save_vulnerability(run_dir, pop.ids, population.is_member, results)
    write_json(run_dir / "metrics.json", _strip_scores(metrics))
    write_json(run_dir / "vulnerable.json", vulnerable)


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
