"""Generator training stage: LoRA-fine-tune Stable Diffusion or train the scratch model (TCKR step 2).

The generator sees only the MIA *members* of the training split, so that the audit's non-members
are truly unseen by everything downstream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .captions.prompts import DEFAULT_TEMPLATE, build_prompt
from .core.common import Progress, ProgressFn, no_progress, read_json, to_jsonable, write_json
from .core.project import Project
from .core.runs import Link, config_differences, throttle
from .data.datasets import DatasetConfig, load_dataset
from .generators import Generator, generator_class, resolve_options

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Which generator to train on which images and captions."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the real images (members are used)
    generator: str = "scratch"  # registered backend: scratch | sd-lora
    options: tuple[tuple[str, Any], ...] = ()  # backend config fields, e.g. (("steps", 500),)
    store: str | None = None  # caption store; None = prompts from class names only
    store_version: int | None = None  # caption version (default: newest)
    template: str = DEFAULT_TEMPLATE  # prompt template: class | caption | class_caption | format string
    class_template: str = "a photo of a {label}"  # caption used when there is no caption store

    def backend_config(self) -> Any:
        cls = generator_class(self.generator)
        return cls.config_class(**resolve_options(cls, dict(self.options)))


@dataclass(frozen=True)
class FinetuneResult:
    run_id: str
    generator_dir: Path  # load with load_generator(generator_dir)
    metrics: dict[str, Any]


def finetune(config: FinetuneConfig, project: Project, progress: ProgressFn = no_progress,
             resume: str | None = None, registered: Callable[[str], None] | None = None) -> FinetuneResult:
    """Train a generator on the member images; ``resume`` = id of an interrupted run to continue.

    A resumed run must be unfinished and ``config`` must equal its recorded config (on the same data
    and caption version); otherwise nothing is written and a ``ValueError`` says what differs.
    ``registered`` is called with the run id before training starts (the experiment records it then,
    so that a resume after a crash finds the run's checkpoints).
    """
    # 1. check inputs: backend config first, so a typo fails before any data is loaded
    backend_config = config.backend_config()
    registry = project.registry()
    previous = _resumable(registry, resume, config) if resume else None
    dataset = load_dataset(config.dataset)
    members = set(dataset.membership().members)
    records = [r for r in dataset.split("train") if r.id in members]
    if previous is not None:
        recorded = {link.role: link.ref for link in previous.links}
        if recorded.get("data") not in (None, dataset.fingerprint):
            raise ValueError(f"run {resume} was trained on other data (dataset fingerprint "
                             f"{recorded['data'][:12]}, now {dataset.fingerprint[:12]}); start a new run")

    # 2. prompts for each member image (a resumed run keeps the caption version it started with)
    captions: dict[str, Any] = {}
    links = [Link("data", "dataset", dataset.fingerprint)]
    if config.store:
        store = project.caption_store(config.store)
        version = store.head() if config.store_version is None else config.store_version
        if previous is not None and "captions" in recorded:
            version = int(recorded["captions"].rpartition("@")[2])
        captions = store.records(version)
        links.append(Link("captions", "captions", f"{store.name}@{version}"))
        missing = [r.id for r in records if r.id not in captions]
        if missing:
            # an image nobody could caption because it cannot be read is skipped like in every stage
            missing = [i for i in missing if dataset.readable(dataset.record(i))]
        if missing:
            raise ValueError(f"{len(missing)} member images have no caption in store {config.store!r} "
                             f"(e.g. {missing[0]}); caption them first")

    def prompt_of(record_id: str, label: str) -> str:
        if record_id in captions:
            return build_prompt(label, captions[record_id].caption, config.template)
        return config.class_template.format(label=label)

    # 3. register (or reopen) the run
    run = previous if previous is not None else registry.create("finetune", config, links=links)
    if registered is not None:
        registered(run.id)
    ready = throttle(2.0)

    def report(event: Progress) -> None:
        progress(event)
        if ready(event.total is not None and event.done >= event.total):
            registry.report(run.id, progress={"stage": event.stage, "done": event.done,
                                              "total": event.total, **event.info})

    with registry.track(run.id):
        # 4. decode member images (unreadable ones are skipped and listed)
        images, prompts, labels = [], [], []
        for record, image in dataset.iter_images(records):
            label = dataset.class_name(record.label)
            images.append(image)
            prompts.append(prompt_of(record.id, label))
            labels.append(record.label)
        write_json(run.run_dir / "membership.json", dataset.membership().to_dict())
        write_json(run.run_dir / "training_prompts.json", {"class_names": dataset.class_names,
                                                           "prompts": prompts, "labels": labels})

        # 5. train, checkpointing into the run folder (resumes from the newest checkpoint)
        started = time.monotonic()
        generator = generator_class(config.generator)(backend_config)
        metrics = generator.fit(images, prompts, labels, run.run_dir / "checkpoints", report)
        metrics = {**to_jsonable(metrics), "train_images": len(images),
                   "wall_seconds": round(time.monotonic() - started, 2)}

        # 6. save the generator next to the run
        generator.save(run.run_dir / "generator")
        write_json(run.run_dir / "generator" / "backend.json", {"backend": config.generator, "run": run.id})
        write_json(run.run_dir / "metrics.json", metrics)
        registry.report(run.id, **metrics)
    return FinetuneResult(run.id, run.run_dir / "generator", metrics)


def _resumable(registry: Any, run_id: str, config: FinetuneConfig) -> Any:
    """The record of an unfinished finetune run whose recorded config is ``config``, else ValueError."""
    run = registry.get(run_id)
    if run.kind != "finetune":
        raise ValueError(f"run {run_id} is a {run.kind} run, not a finetune run")
    if run.status == "done":
        raise ValueError(f"run {run_id} is already finished (its generator is {run.run_dir / 'generator'}); "
                         "nothing to resume")
    differences = config_differences(run.config, config)
    if differences:
        raise ValueError(f"finetune --resume {run_id}: the arguments differ from the run's recorded config "
                         f"({'; '.join(differences)}); resume with the run's own config or start a new run")
    return run


def finished_generator(registry: Any, run_id: str) -> FinetuneResult:
    """A finished finetune run's result, read back from its folder (nothing is retrained)."""
    run = registry.get(run_id)
    if run.kind != "finetune" or run.status != "done":
        raise ValueError(f"run {run_id} is not a finished finetune run ({run.kind}, {run.status})")
    return FinetuneResult(run.id, run.run_dir / "generator", read_json(run.run_dir / "metrics.json"))


def load_generator(directory: Path, name: str | None = None, **overrides: Any) -> Generator:
    """Load a saved generator; the backend is read from its ``backend.json`` unless named."""
    directory = Path(directory)
    if name is None:
        meta = directory / "backend.json"
        if not meta.exists():
            raise FileNotFoundError(f"{directory} is not a saved generator (no backend.json); "
                                    "pass the backend name")
        name = read_json(meta)["backend"]
    cls = generator_class(name)
    return cls.load(directory, **resolve_options(cls, overrides))
