"""The whole TCKR loop as one run: caption → generator → synthetic rounds → teacher → GKD student →
membership-inference audit of both (the student in transfer and pipeline mode).
``python -m pipeline quickstart`` runs it on the built-in dataset; ``python -m pipeline run CONFIG.json``
on any dataset, backbone and generator.

The data is loaded, fingerprinted and split once (:class:`~pipeline.data.context.DataContext`) and
every stage reads it from there; each model's test accuracy is measured once and handed to the audit
with everything else it audits (:class:`~pipeline.audit.AuditSubject`). Every stage is also recorded
as its own run with lineage, so an interrupted experiment resumes where it stopped.
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

from .audit import AuditConfig, AuditedModel, AuditResult, AuditSubject, audit, audit_shadows
from .caption import CaptionConfig, caption
from .captions.captioners import CaptionerConfig
from .captions.store import caption_store
from .captions.templates import DEFAULT_TEMPLATE
from .classifiers.models import load_classifier
from .classifiers.train import TrainConfig
from .core.cluster import SINGLE, Cluster
from .core.common import ProgressFn, from_dict, no_progress, read_json, safe_filename, to_jsonable, write_json
from .core.project import Project
from .core.runs import Link, RecordedProgress, config_differences
from .core.schema import Options, checked, schema
from .data.context import DataContext
from .data.datasets import DatasetConfig, skipped_images
from .distill import (
    DistillConfig,
    ModelResult,
    evaluate_on_test,
    train_private_teacher,
    train_student,
    train_teacher,
)
from .fidelity import cas_recipe, copy_gate, round_fidelity, round_memorisation
from .finetune import (
    FinetuneConfig,
    FinetuneResult,
    backend_options,
    check_privacy,
    finetune,
    finished_generator,
    load_generator,
    spend_on_ledger,
)
from .generate import GenerateConfig, SyntheticSet, synthesize
from .generators import backend_config
from .methods import create_method
from .methods.dp import DPConfig
from .privacy.accounting import DPPart, composed, ledger_summary
from .privacy.memorisation import MemorisationConfig
from .privacy.pipeline_shadows import PipelineShadows
from .privacy.population import Population
from .replay import PipelineRecipe, method_context, pipeline_shadows

logger = logging.getLogger(__name__)

DP_LABELS = ("class", "dp-teacher")


@schema
@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one end-to-end run needs; saved resolved into the run folder."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # real data and MIA split
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)  # step 1
    store: str | None = None  # caption store (default: the dataset's name)
    store_version: int | None = None  # use this curated caption version as is (None: caption, use newest)
    template: str = DEFAULT_TEMPLATE  # prompt template for training and generation
    generator: str = "scratch"  # step 2 backend: scratch | sd-lora
    generator_options: Options = field(default_factory=dict)  # backend config fields by name (its config's schema)
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
    # a formal guarantee (see pipeline/privacy/accounting.py): privacy="dp" trains the generator with DP-SGD at
    # (epsilon, delta), prompts it with class names only, and labels the student without the real members
    privacy: str = "none"  # none | dp
    epsilon: float | None = None  # DP: the generator's target ε
    delta: float | None = None  # DP: target δ (None: 1 / (10 · members))
    dp_labels: str = "class"  # DP: the student's labels: class (generated class; student ε = generator ε) |
    # dp-teacher (soft labels of a DP-SGD teacher; ε composed over generator and teacher by the accountant)
    teacher_epsilon: float | None = None  # DP with dp-teacher: the teacher's target ε (None: epsilon)
    epsilon_budget: float | None = None  # the dataset's ε budget in the project's ledger (a warning past it)

    def __post_init__(self) -> None:
        check_privacy(self.privacy, self.epsilon, self.delta)
        if self.dp_labels not in DP_LABELS:
            raise ValueError(f"unknown dp_labels {self.dp_labels!r}; valid: {', '.join(DP_LABELS)}")
        if self.privacy == "dp" and (self.store or self.store_version is not None):
            raise ValueError("privacy='dp' prompts the generator with class names only (per-image captions of "
                             "private images are private data); drop store / store_version")
        if self.privacy == "dp" and self.copy_gate:
            raise ValueError("privacy='dp' cannot use the copy gate: redrawing images that look like members "
                             "hands the student a decision made on the real members; set copy_gate to 0")
        if not self.cardinality > 0:
            raise ValueError(f"cardinality must be positive, got {self.cardinality}")
        for name in ("rounds", "generation_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.cas_epochs < 0 or self.copy_gate < 0:
            raise ValueError(f"cas_epochs and copy_gate must be >= 0, got {self.cas_epochs}, {self.copy_gate}")
        if self.seed < 0:  # numpy's seed sequences take no negative seed
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        # the backend's own config is the options' schema (types, ranges, names): checked here, not in a stage
        object.__setattr__(self, "generator_options", dict(self.generator_options))
        backend_config(self.generator, self.generator_options, path="generator_options")
        object.__setattr__(self, "methods", tuple((str(n), dict(o or {})) for n, o in self.methods))
        labels = [create_method(n, o, path=f"methods.{i}.{n}").label()  # unknown names / options fail here
                  for i, (n, o) in enumerate(self.methods)]
        if len(set(labels)) != len(labels):
            raise ValueError(f"methods {labels} contain the same method twice")

    def validate(self) -> ExperimentConfig:
        """This config checked against its schema as a config file would be (a config built in code
        from arguments or a form: NaN, out-of-range values, a bad option); raises :class:`ConfigError`."""
        return checked(self)

    @property
    def private(self) -> bool:
        return self.privacy == "dp"

    def backend_options(self) -> dict[str, Any]:
        """The generator's options, with its DP-SGD budget in DP mode."""
        return backend_options(self.generator, self.generator_options, self.privacy, self.epsilon, self.delta)

    def teacher_dp(self) -> DPConfig:
        """The DP-SGD teacher's budget (dp_labels="dp-teacher"): its own target ε, the generator's δ."""
        return DPConfig(epsilon=self.teacher_epsilon or self.epsilon or 1.0, delta=self.delta, accountant="rdp")

    def student_distill(self) -> DistillConfig:
        """The student's distillation settings: in DP mode with class labels, the generated classes."""
        if self.private and self.dp_labels == "class":
            return replace(self.distill, labels="class")
        return self.distill

    @classmethod
    def from_file(cls, path: Path) -> ExperimentConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return from_dict(cls, data, source=str(path))

    def pipeline_recipe(self, captions: str | None) -> PipelineRecipe:
        """What a pipeline-mode shadow replays (trained on the captions ``<store>@<version>``)."""
        # the options as the pairs the shadows' cache key has always held (with the DP budget in DP mode)
        return PipelineRecipe(self.dataset, captions, self.template, self.generator,
                              tuple(self.backend_options().items()), self.cardinality, self.rounds,
                              self.generation_batch, self.seed, self.teacher, self.student_distill())


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
    config = config.validate()  # a bad field or option fails now, not after the generator trained
    # 1. the data, loaded, fingerprinted and split once for every stage; the run
    data = DataContext.open(config.dataset)
    registry = project.registry()
    run = registry.create("experiment", config, links=[Link("data", "dataset", data.fingerprint)]) \
        if run_id is None else registry.get(run_id)
    steps = _Steps(config, project, data, run, progress, cluster)
    with ExitStack() as stack:
        steps.begin(stack, resume)  # a second process executing this run stops here, before it writes
        # 2. captions: a pinned curated version as is, else caption what is missing
        captions = steps.captions()
        # 3. the generator on the member images and their captions (a finished one is reused)
        trained = steps.generator(captions)
        # 4. synthetic rounds from the members' captions (a finished round reused, a partial one resumed)
        rounds = steps.rounds(trained, captions)
        # 5. teacher on the real members; near-copies of a member redrawn; student on the rounds only
        teacher = steps.teacher()
        rounds = steps.copy_gate(teacher, rounds, trained)
        student = steps.student(teacher, rounds)
        # the formal guarantee of a DP run (None without DP): the student carries it into the audit
        privacy = steps.privacy(trained, teacher)
        if privacy:
            student.train["privacy"] = privacy["student"]
        # 6. the other transfer methods on the same teacher (and rounds), each its own run
        methods = steps.methods(teacher, rounds)
        # 7. fidelity and memorisation of every round, the teacher as the feature extractor
        fidelity, memorisation = steps.checks(teacher, rounds)
        # 8. test accuracy of every model, measured once; 9. the audit of every model (its shadows, the
        # pipeline shadows included, are trained there: after the main run, so they never compete with it)
        tested = steps.test(teacher, student, methods)
        audited = steps.audit(tested, captions)
        # 10. metrics
        metrics = steps.finish(tested, audited, rounds, trained, fidelity, memorisation, privacy, resume, started)
    return ExperimentResult(run.id, metrics, time.monotonic() - started)


@dataclass(frozen=True)
class _Captions:
    store: str
    version: int

    @property
    def ref(self) -> str:
        return f"{self.store}@{self.version}"


@dataclass
class _Tested:
    """A trained model of the experiment with its recipe, run and test figures."""

    name: str
    model: Any
    recipe: TrainConfig
    run: str
    test: dict[str, Any]
    train: dict[str, Any]
    method: tuple[str, dict[str, Any]] | None = None  # (name, options) of a transfer method
    reads_real: bool = False


class _Steps:
    """The experiment's stages over one run: each step records its stage run(s), lineage and time."""

    def __init__(self, config: ExperimentConfig, project: Project, data: DataContext, run: Any,
                 progress: ProgressFn, cluster: Cluster) -> None:
        self.config, self.project, self.data, self.run, self.cluster = config, project, data, run, cluster
        self.registry = project.registry()
        self.progress = RecordedProgress.for_run(self.registry, run.id, forward=progress,
                                                 events=run.run_dir / "events.jsonl")
        self.earlier: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.round_runs: list[str] = []
        self.gate: dict[str, Any] | None = None  # the copy gate's report
        self._population: Population | None = None

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - t0, 2)
        self.registry.report(self.run.id, progress={"stage": name, "done": 1, "total": 1}, timings=self.timings)

    @property
    def population(self) -> Population:
        if self._population is None:
            audit = self.config.audit
            self._population = Population.build(self.data, self.config.teacher.image_size, audit.views,
                                                audit.reference_size, audit.seed)
        return self._population

    def begin(self, stack: ExitStack, resume: bool) -> None:
        stack.enter_context(self.registry.claim(self.run.id))
        record = self.registry.get(self.run.id)
        self.earlier = earlier_stages(record, self.config, self.data.fingerprint, resume)
        self.timings.update(record.metrics.get("timings", {}) if resume else {})
        stack.enter_context(self.registry.track(self.run.id))
        self.registry.link(self.run.id, Link("data", "dataset", self.data.fingerprint))
        write_json(self.run.run_dir / "membership.json", self.data.split.to_dict())

    def captions(self) -> _Captions | None:
        if self.config.private:  # class prompts only: no caption of a private image is made or used
            return None
        with self.timed("caption"):
            if "captions" in self.earlier:
                store, _, version = self.earlier["captions"].rpartition("@")
                captions = _Captions(store, int(version))
            elif self.config.store_version is not None:
                if not self.config.store:
                    raise ValueError("store_version needs the store it belongs to (set `store`)")
                caption_store(self.project, self.config.store).records(self.config.store_version)  # the valid range
                captions = _Captions(self.config.store, self.config.store_version)
            else:
                made = caption(CaptionConfig(dataset=self.config.dataset, captioner=self.config.captioner,
                                             store=self.config.store), self.project, self.progress, data=self.data)
                captions = _Captions(made.store, made.version)
                # its own stage run: archived and deleted with the experiment (the store version stays)
                self.registry.link(self.run.id, Link("caption", "run", made.run_id))
            self.registry.link(self.run.id, Link("captions", "captions", captions.ref))
        return captions

    def generator(self, captions: _Captions | None) -> FinetuneResult:
        config = self.config
        with self.timed("generator"):
            previous = self.earlier.get("generator")
            if previous and self.registry.get(previous).status == "done":
                return finished_generator(self.registry, previous)
            finetune_config = FinetuneConfig(dataset=config.dataset, generator=config.generator,
                                             options=config.generator_options,
                                             store=captions.store if captions else None,
                                             store_version=captions.version if captions else None,
                                             template=config.template, privacy=config.privacy, epsilon=config.epsilon,
                                             delta=config.delta, epsilon_budget=config.epsilon_budget)
            return finetune(finetune_config, self.project, self.progress, resume=previous, data=self.data,
                            registered=lambda rid: self.registry.relink(self.run.id, Link("generator", "run", rid)))

    def rounds(self, trained: FinetuneResult, captions: _Captions | None) -> list[SyntheticSet]:
        config, rounds = self.config, []
        with self.timed("generate"):
            for k in range(config.rounds):
                out_dir = self.run.run_dir / "synthetic" / f"round-{k}"
                previous = self.earlier.get(f"synthetic round {k}")
                if previous and self.registry.get(previous).status == "done":
                    rounds.append(SyntheticSet.load(out_dir))
                    self.round_runs.append(previous)
                    continue
                made = synthesize(GenerateConfig(
                    generator=str(trained.generator_dir), prompts=f"store:{captions.ref}" if captions else "classnames",
                    template=config.template,
                    dataset=config.dataset, cardinality=config.cardinality, round=k, seed=config.seed,
                    batch_size=config.generation_batch, out_dir=str(out_dir)), self.project, self.progress,
                    cluster=self.cluster, data=self.data)
                self.registry.relink(self.run.id, Link(f"synthetic round {k}", "run", made.run_id))
                rounds.append(made.synthetic)
                self.round_runs.append(made.run_id)
        return rounds

    def teacher(self) -> _Tested:
        recipe, data = self.config.teacher, self.data
        with self.timed("teacher"), stage_run(self.registry, self.run.id, "teacher", recipe,
                                              [Link("data", "dataset", data.fingerprint)],
                                              self.earlier.get("teacher")) as teacher_run:
            val = data.tensors("validation", recipe.image_size) if data.split.validation else None
            members = data.tensors("members", recipe.image_size)
            if self.config.private and self.config.dp_labels == "dp-teacher":  # its labels reach the student
                trained = train_private_teacher(members, val, recipe, data.num_classes, self.run.run_dir,
                                                self.config.teacher_dp(), self.progress)
            else:
                trained = train_teacher(members, val, recipe, data.num_classes, self.run.run_dir, self.progress)
        return _Tested("teacher", trained.model, recipe, teacher_run, {}, trained.metrics)

    def copy_gate(self, teacher: _Tested, rounds: list[SyntheticSet], trained: FinetuneResult) -> list[SyntheticSet]:
        """Near-copies of a member are redrawn before the student sees them (once: a resumed run keeps
        the gated rounds, reloaded from their manifests)."""
        path = self.run.run_dir / "copy_gate.json"
        if path.exists():
            self.gate = read_json(path)
            return [SyntheticSet.load(r.root) for r in rounds]
        if not self.config.copy_gate:
            return rounds
        with self.timed("copy gate"):
            rounds, self.gate = copy_gate(teacher.model, self.data, rounds, load_generator(trained.generator_dir),
                                          self.config.teacher.image_size, self.config.memorisation,
                                          self.config.copy_gate)
            write_json(path, self.gate)
        return rounds

    def student(self, teacher: _Tested, rounds: list[SyntheticSet]) -> _Tested:
        config = self.config
        links = [Link("teacher", "run", teacher.run)] + \
            [Link(f"synthetic round {k}", "run", rid) for k, rid in enumerate(self.round_runs)]
        with self.timed("student"), stage_run(self.registry, self.run.id, "student", config.distill, links,
                                              self.earlier.get("student")) as student_run:
            trained: ModelResult = train_student(teacher.model, rounds, config.student_distill(), self.data.num_classes,
                                                 self.run.run_dir, self.progress, teacher_recipe=config.teacher)
        return _Tested("student", trained.model, config.distill.student, student_run, {}, trained.metrics)

    def methods(self, teacher: _Tested, rounds: list[SyntheticSet]) -> list[_Tested]:
        """Every configured transfer method trained on the teacher, each its own run, listed in
        ``methods.json``. Only a method that reads real training images gets them."""
        if not self.config.methods:
            return []
        with self.timed("methods"):
            trained = [self._method(name, options, teacher, rounds) for name, options in self.config.methods]
        return trained

    def _method(self, name: str, options: dict[str, Any], teacher: _Tested, rounds: list[SyntheticSet]) -> _Tested:
        config, method = self.config, create_method(name, options)
        key = method.label()
        folder = self.run.run_dir / "methods" / safe_filename(key.replace("+", "-plus-"))
        recipe = config.distill.student
        with stage_run(self.registry, self.run.id, "method", {"method": name, "options": options},
                       [Link("teacher", "run", teacher.run)], self.earlier.get(f"method {key}"),
                       role=f"method {key}") as method_run:
            if (folder / "metrics.json").exists() and self.registry.get(method_run).status == "done":
                model = load_classifier(folder / "model.pt", recipe, self.data.num_classes, method.private_model)
                metrics = read_json(folder / "metrics.json")
            else:
                started = time.monotonic()
                context = method_context(teacher.model, config.teacher, config.distill, self.data, rounds,
                                         self.data.split.members, self.data.split.validation, method.reads_real())
                result = method.train(context, folder, self.progress)
                model = result.model
                metrics = {**to_jsonable(result.metrics), "seconds": round(time.monotonic() - started, 2)}
                write_json(folder / "metrics.json", metrics)
        listing = read_json(self.run.run_dir / "methods.json") if (self.run.run_dir / "methods.json").exists() else {}
        listing[key] = {"method": name, "options": options, "run": method_run, "recipe": to_jsonable(recipe),
                        "checkpoint": str(folder / "model.pt"), "reads_real_training_images": method.reads_real(),
                        "dp": method.private_model}
        write_json(self.run.run_dir / "methods.json", listing)
        return _Tested(key, model.eval(), recipe, method_run, {}, metrics, (name, options), method.reads_real())

    def checks(self, teacher: _Tested, rounds: list[SyntheticSet]) -> tuple[dict[str, Any], dict[str, Any]]:
        config = self.config
        with self.timed("fidelity"):
            fidelity = round_fidelity(teacher.model, self.data, rounds, config.teacher.image_size,
                                      cas_recipe(config.distill.student, config.cas_epochs), config.seed, self.progress)
            memorisation = round_memorisation(teacher.model, self.data, rounds, config.teacher.image_size,
                                              config.memorisation)
        return fidelity, memorisation

    def test(self, teacher: _Tested, student: _Tested, methods: list[_Tested]) -> list[_Tested]:
        """Each model's accuracy on the real test split, measured once (at its own input size)."""
        tested = [teacher, student, *methods]
        for model in tested:
            model.test = evaluate_on_test(model.model, self.data.tensors("test", model.recipe.image_size),
                                          self.data.num_classes)
        self.registry.link(self.run.id, Link("teacher", "run", teacher.run), Link("student", "run", student.run))
        for model in (teacher, student):
            self.registry.report(model.run, accuracy=model.test["accuracy"],
                                 weights=str(self.run.run_dir / f"{model.name}.pt"))
        return tested

    def audit(self, tested: list[_Tested], captions: _Captions | None) -> AuditResult:
        config = replace(self.config.audit, experiment=self.run.id)
        with self.timed("audit"):
            subject = audit_subject(self.config, config, self.project, self.population, tested,
                                    captions.ref if captions else None)
            self.cluster.assign("audit-shadows", config=config, project_root=str(self.project.root))
            return audit(config, subject, self.project, self.progress, self.cluster)

    def privacy(self, trained: FinetuneResult, teacher: _Tested) -> dict[str, Any] | None:
        """The formal guarantee of a DP run: each trained part's record, the student's total (composed by
        the accountant over the parts whose outputs reach it) and the dataset's ledger; None for a run
        without DP. Evaluation (fidelity, memorisation, CAS, the audit) reads the real members and is
        reported apart: it is not part of the student's path."""
        if not self.config.private:
            return None
        parts = {"generator": trained.metrics.get("privacy")}
        if self.config.dp_labels == "dp-teacher":
            parts["teacher"] = teacher.train.get("privacy")
            if parts["teacher"]:
                spend_on_ledger(self.project, self.data, teacher.run, parts["teacher"])
        missing = [name for name, part in parts.items() if not part]
        if missing:
            raise ValueError(f"DP run without the privacy record of its {', '.join(missing)}; rerun that stage")
        records = [DPPart(**{k: v for k, v in p.items() if k in DPPart.__dataclass_fields__}) for p in parts.values()]
        return {"parts": parts, "student": {**composed(records), "labels": self.config.dp_labels},
                "guarantee": "the student's (ε, δ) is a DP-SGD guarantee from the accountant; the audit's "
                             "figures are attacks' empirical results, not guarantees",
                "ledger": ledger_summary(self.project.root, self.data.fingerprint)}

    def finish(self, tested: list[_Tested], audited: AuditResult, rounds: list[SyntheticSet],
               trained: FinetuneResult, fidelity: dict[str, Any], memorisation: dict[str, Any],
               privacy: dict[str, Any] | None, resume: bool, started: float) -> dict[str, Any]:
        """``metrics.json`` and the run's headline figures in the registry."""
        by_name = {m.name: m for m in tested}
        metrics = {
            **{name: model_metrics(by_name[name].test, audited.metrics[name], by_name[name].train)
               for name in ("teacher", "student")},
            "audit": {"run": audited.run_id, "headline_attack": self.config.audit.headline,
                      "shadows": audited.metrics["shadows"], "vulnerable": audited.metrics["vulnerable"]},
            **run_summary(self.config, self.data, len(self.data.tensors("test", self.config.teacher.image_size)),
                          rounds, trained.metrics),
            "fidelity": fidelity, "memorisation": memorisation, "copy_gate": self.gate,
            "methods": {m.name: {**model_metrics(m.test, audited.metrics[m.name], m.train), "method": m.method[0],
                                 "label": m.name, "reads_real_training_images": m.reads_real,
                                 "epsilon": m.train.get("epsilon")} for m in tested if m.method is not None},
            "timings": self.timings, "seconds": round(time.monotonic() - started, 2), "resumed": resume,
            "privacy": privacy,
        }
        unreadable = skipped_images(self.data.dataset)
        metrics["dataset"]["unreadable"] = len(unreadable)
        if unreadable:  # every stage skipped them; listed once here
            write_json(self.run.run_dir / "unreadable_images.json", unreadable)
            logger.warning("%d unreadable images were skipped in every stage; listed in %s", len(unreadable),
                           self.run.run_dir / "unreadable_images.json")
        write_json(self.run.run_dir / "metrics.json", metrics)
        headline = _headline(metrics, fidelity, memorisation)
        if metrics["privacy"]:
            headline["student_epsilon"] = metrics["privacy"]["student"]["epsilon"]
        self.registry.report(self.run.id, **headline)
        return metrics


def model_metrics(test: dict[str, Any], audited: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """One model's entry of ``metrics.json``: test accuracy, the audit's figures, its training's."""
    return {
        "accuracy": test["accuracy"],
        "per_class_accuracy": test["per_class_accuracy"],
        "aop": audited["aop"],
        "mia": audited["mia"],  # the headline mode (pipeline for the student when it ran); mia.auc = headline attack
        "mia_modes": audited["mia_modes"],  # every mode, each with every attack
        "formal_epsilon": audited.get("formal_epsilon"),  # its DP guarantee's ε (None: no guarantee)
        "formal_delta": audited.get("formal_delta"),
        "train": {k: v for k, v in train.items() if k != "history"},
        "history": train.get("history", []),
    }


def run_summary(config: ExperimentConfig, data: DataContext, n_test: int, rounds: list[SyntheticSet],
                generator_metrics: dict[str, Any]) -> dict[str, Any]:
    """The data, synthetic-set and generator figures of an experiment's ``metrics.json``."""
    return {
        "dataset": {"name": data.dataset.name, "fingerprint": data.fingerprint, "members": len(data.split.members),
                    "nonmembers": len(data.split.nonmembers), "test": n_test},
        "synthetic": {"rounds": len(rounds), "images_per_round": len(rounds[0]), "cardinality": config.cardinality},
        "generator": {"backend": config.generator,
                      **{k: v for k, v in generator_metrics.items() if isinstance(v, (int, float))}},
    }


def _headline(metrics: dict[str, Any], fidelity: dict[str, Any], memorisation: dict[str, Any]) -> dict[str, Any]:
    """The figures the run registry (and ``runs list``) keeps for an experiment."""
    return {"teacher_accuracy": metrics["teacher"]["accuracy"], "student_accuracy": metrics["student"]["accuracy"],
            "teacher_auc": metrics["teacher"]["mia"]["auc"], "student_auc": metrics["student"]["mia"]["auc"],
            "student_mia_mode": metrics["student"]["mia"]["mia_mode"],
            **{f"{m}_{k}": v for m in ("teacher", "student") for k, v in epsilon_figures(metrics[m]).items()},
            "class_fidelity": fidelity["class_fidelity"], "frechet_distance": fidelity["frechet_distance"],
            "precision": fidelity["precision"], "recall": fidelity["recall"], "cas": fidelity["cas"],
            "copies": memorisation["copies"], "copy_rate": memorisation["copy_rate"], "ct": memorisation["ct"]}


def epsilon_figures(model: dict[str, Any]) -> dict[str, Any]:
    """A model's formal ε (its DP guarantee; "none" without one) and empirical ε (the headline attack's lower
    bound on ε, never a guarantee), as ``runs show`` lists them."""
    formal = model.get("formal_epsilon")
    return {"formal_epsilon": "none" if formal is None else formal,
            "empirical_epsilon": model["mia"].get("empirical_epsilon")}


# -- the audit of an experiment -----------------------------------------------------------------------------------
def audit_subject(config: ExperimentConfig, audit_config: AuditConfig, project: Project, population: Population,
                  tested: list[Any], captions: str | None, shadows: dict[str, PipelineShadows] | None = None
                  ) -> AuditSubject:
    """What the audit reads: the teacher (its own recipe's shadows), the student and every method's
    student in their modes, with the pipeline shadows of each (those started ahead reused)."""
    shadows = dict(shadows or {})
    recipe = config.pipeline_recipe(captions)
    models = []
    for m in tested:
        is_method = m.method is not None
        modes = ("transfer",) if m.name == "teacher" else audit_config.modes_of(is_method)
        if "pipeline" in modes and m.name != "teacher" and m.name not in shadows:
            shadows[m.name] = pipeline_shadows(recipe, population, project, audit_config, method=m.method)
        label = f"{m.name} pipeline" if is_method else "student pipeline"
        epsilon, delta = formal_guarantee(m.train)
        models.append(AuditedModel(m.name, m.model, m.recipe.image_size, m.test["accuracy"], modes, label,
                                   epsilon=epsilon, delta=delta))
    return AuditSubject(audit_config.experiment or "", population, config.teacher, models, shadows)


def formal_guarantee(train: dict[str, Any]) -> tuple[float | None, float | None]:
    """A model's DP guarantee (ε, δ) from its training figures: a DP-SGD method's ``epsilon`` / ``delta``, or
    a ``privacy`` record (a DP teacher's own part; a DP run's student: the total composed over the parts
    that reached it); (None, None) for a model without one."""
    if train.get("epsilon") is not None:
        return float(train["epsilon"]), _float_or_none(train.get("delta"))
    record = train.get("privacy")
    if isinstance(record, dict) and record.get("epsilon") is not None:
        return float(record["epsilon"]), _float_or_none(record.get("delta"))
    return None, None


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def audit_experiment(audit_config: AuditConfig, project: Project, progress: ProgressFn = no_progress,
                     cluster: Cluster = SINGLE) -> AuditResult:
    """Re-audit a finished experiment (``audit --run``): its models and recipes read back from its run
    folder, cached shadows reused, more trained only when asked for."""
    config, tested, captions, data = _finished(project, audit_config.experiment)
    population = Population.build(data, config.teacher.image_size, audit_config.views, audit_config.reference_size,
                                  audit_config.seed)
    subject = audit_subject(config, audit_config, project, population, tested, captions)
    cluster.assign("audit-shadows", config=audit_config, project_root=str(project.root))
    return audit(audit_config, subject, project, progress, cluster)


def audit_share(config: AuditConfig, project_root: str, cluster: Cluster) -> None:
    """A serving process's part of an audit under ``accelerate launch``: its share of every shadow set."""
    project = Project.open(project_root)
    experiment, tested, captions, data = _finished(project, config.experiment)
    population = Population.build(data, experiment.teacher.image_size, config.views, config.reference_size,
                                  config.seed)
    audit_shadows(config, audit_subject(experiment, config, project, population, tested, captions),
                  project, no_progress, cluster)


def _finished(project: Project, run_id: str | None) -> tuple[ExperimentConfig, list[_Tested], str | None, DataContext]:
    """A trained experiment read back from its run: config, models (with the test accuracy it measured),
    caption version, data."""
    if not run_id:
        raise ValueError("the audit needs an experiment run id (AuditConfig.experiment, or `audit --run ID`)")
    record = project.registry().get(run_id)
    if record.kind != "experiment":
        raise ValueError(f"run {run_id} is a {record.kind} run; audit an experiment run")
    missing = [f for f in ("teacher.pt", "student.pt") if not (record.run_dir / f).exists()]
    if missing:
        raise ValueError(f"experiment {run_id} has no {', '.join(missing)} yet; finish (or resume) it first")
    config = from_dict(ExperimentConfig, {k: v for k, v in record.config.items() if k != "audit"},
                       source=f"the saved config of run {run_id}")
    data = DataContext.open(config.dataset)
    recorded = read_json(record.run_dir / "metrics.json") if (record.run_dir / "metrics.json").exists() else {}
    tested = [_read_model(record.run_dir / f"{name}.pt", name, recipe, data, recorded.get(name))
              for name, recipe in (("teacher", config.teacher), ("student", config.distill.student))]
    if (recorded.get("privacy") or {}).get("student"):  # a DP run's student: its guarantee (older runs kept it here only)
        tested[1].train.setdefault("privacy", recorded["privacy"]["student"])
    listing = read_json(record.run_dir / "methods.json") if (record.run_dir / "methods.json").exists() else {}
    for key, entry in listing.items():
        recipe = from_dict(TrainConfig, entry["recipe"])
        model = _read_model(Path(entry["checkpoint"]), key, recipe, data, recorded.get("methods", {}).get(key),
                            entry.get("dp", False))
        model.method, model.reads_real = (entry["method"], entry.get("options", {})), entry["reads_real_training_images"]
        tested.append(model)
    captions = next((link.ref for link in record.links if link.role == "captions"), None)
    return config, tested, captions, data


def _read_model(path: Path, name: str, recipe: TrainConfig, data: DataContext, recorded: dict[str, Any] | None,
                private: bool = False) -> _Tested:
    """A saved model; its test accuracy as the experiment measured it (measured now if it has none)."""
    model = load_classifier(path, recipe, data.num_classes, private)
    test = {"accuracy": recorded["accuracy"]} if recorded and "accuracy" in recorded else \
        evaluate_on_test(model, data.tensors("test", recipe.image_size), data.num_classes)
    # its training figures as recorded: a DP model's ε and δ (its guarantee, and the δ of its empirical ε)
    return _Tested(name, model, recipe, "", test, dict((recorded or {}).get("train") or {}))


# -- runs and stages ----------------------------------------------------------------------------------------------
def earlier_stages(record: Any, config: ExperimentConfig, fingerprint: str, resume: bool) -> dict[str, str]:
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
    saved = from_dict(ExperimentConfig, record.config, source=f"the saved config of run {record.id}")
    differences = config_differences(saved, config)  # defaults filled
    if differences:
        raise ValueError(f"run {record.id} was started with another config ({'; '.join(differences)})")
    earlier = {link.role: link.ref for link in record.links}
    if earlier.get("data", fingerprint) != fingerprint:
        raise ValueError(f"the data of run {record.id} changed since it started (dataset fingerprint "
                         f"{earlier['data'][:12]}, now {fingerprint[:12]}); start a new run")
    return earlier


@contextmanager
def stage_run(registry: Any, experiment: str, kind: str, config: Any, links: list[Link],
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


def config_json(config: ExperimentConfig) -> str:
    return json.dumps(to_jsonable(config), indent=2)
