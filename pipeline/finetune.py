"""Generator training stage: LoRA-fine-tune Stable Diffusion or train the scratch model (TCKR step 2).

The generator sees only the MIA *members* of the training split, so that the audit's non-members
are truly unseen by everything downstream. :func:`training_examples` and :func:`fit_generator` are
the stage's steps; the experiment's pipeline-mode shadows call them too, on their own half.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .captions.store import caption_store
from .captions.templates import DEFAULT_CLASS_TEMPLATE, DEFAULT_TEMPLATE, build_prompt
from .core.common import ProgressFn, from_dict, no_progress, read_json, to_jsonable, write_json
from .core.project import Project
from .core.runs import Link, RecordedProgress, config_differences
from .core.schema import Options, schema
from .data.context import DataContext
from .data.datasets import DatasetConfig
from .data.tensors import tensor_to_images
from .generators import Generator, backend_config, generator_class, generator_names, resolve_options
from .privacy.accounting import DPPart, record_spend, set_budget

logger = logging.getLogger(__name__)


@schema
@dataclass(frozen=True)
class FinetuneConfig:
    """Which generator to train on which images and captions."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the real images (members are used)
    generator: str = "scratch"  # registered backend: scratch | sd-lora
    options: Options = field(default_factory=dict)  # backend config fields by name, e.g. {"steps": 500}
    store: str | None = None  # caption store; None = prompts from class names only
    store_version: int | None = None  # caption version (default: newest)
    template: str = DEFAULT_TEMPLATE  # prompt template: class | caption | class_caption | format string
    class_template: str = DEFAULT_CLASS_TEMPLATE  # caption used when there is no caption store
    privacy: str = "none"  # none | dp: DP-SGD training of the generator at (epsilon, delta), class prompts only
    epsilon: float | None = None  # DP target ε (privacy="dp")
    delta: float | None = None  # DP target δ (None: 1 / (10 · members))
    epsilon_budget: float | None = None  # the dataset's ε budget in the project's ledger (a warning past it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options))  # (name, value) pairs given in code too
        check_privacy(self.privacy, self.epsilon, self.delta)
        if self.privacy == "dp" and self.store:
            raise ValueError("privacy='dp' prompts the generator with class names only (per-image captions of "
                             "private images are private data); drop the caption store")
        self.backend_config()  # the backend's config is the options' schema: a bad one fails here

    def backend_options(self) -> dict[str, Any]:
        """The backend's options, with the DP-SGD budget when ``privacy`` is dp."""
        return backend_options(self.generator, self.options, self.privacy, self.epsilon, self.delta)

    def backend_config(self) -> Any:
        """The backend's config from the options (and the DP budget), checked against its schema."""
        return backend_config(self.generator, self.backend_options())


PRIVACY_MODES = ("none", "dp")


def check_privacy(privacy: str, epsilon: float | None, delta: float | None) -> None:
    """A privacy mode and its budget, checked before anything runs."""
    if privacy not in PRIVACY_MODES:
        raise ValueError(f"unknown privacy mode {privacy!r}; valid: {', '.join(PRIVACY_MODES)}")
    if privacy == "dp" and (epsilon is None or not epsilon > 0):
        raise ValueError("privacy='dp' needs a positive epsilon (--epsilon E)")
    if privacy == "none" and (epsilon is not None or delta is not None):
        raise ValueError("epsilon / delta are only used with privacy='dp' (--privacy dp)")


def backend_options(generator: str, options: Mapping[str, Any], privacy: str, epsilon: float | None,
                    delta: float | None) -> dict[str, Any]:
    """``options`` as a dict, plus the backend's DP fields in DP mode (refused for a backend without DP-SGD)."""
    values = dict(options)
    if privacy != "dp":
        return values
    cls = generator_class(generator)
    if not cls.dp_fields:
        raise ValueError(f"generator {generator!r} cannot train with DP-SGD; backends that can: "
                         f"{', '.join(n for n in generator_names() if generator_class(n).dp_fields)}")
    return {**values, cls.dp_fields["epsilon"]: epsilon, cls.dp_fields["delta"]: delta}


@dataclass(frozen=True)
class FinetuneResult:
    run_id: str
    generator_dir: Path  # load with load_generator(generator_dir)
    metrics: dict[str, Any]


def finetune(config: FinetuneConfig, project: Project, progress: ProgressFn = no_progress,
             resume: str | None = None, registered: Callable[[str], None] | None = None,
             data: DataContext | None = None) -> FinetuneResult:
    """Train a generator on the member images; ``resume`` = id of an interrupted run to continue.

    A resumed run must be unfinished and ``config`` must equal its recorded config (on the same data
    and caption version); otherwise nothing is written and a ``ValueError`` says what differs.
    ``registered`` is called with the run id before training starts (the experiment records it then,
    so that a resume after a crash finds the run's checkpoints). ``data``: the experiment's loaded data
    (a stage run on its own loads it).
    """
    # 1. check inputs: backend config first, so a typo fails before any data is loaded
    config.backend_config()
    registry = project.registry()
    previous = _resumable(registry, resume, config) if resume else None
    data = data or DataContext.open(config.dataset)
    recorded = {link.role: link.ref for link in previous.links} if previous is not None else {}
    if recorded.get("data") not in (None, data.fingerprint):
        raise ValueError(f"run {resume} was trained on other data (dataset fingerprint "
                         f"{recorded['data'][:12]}, now {data.fingerprint[:12]}); start a new run")
    # 2. captions of the members (a resumed run keeps the caption version it started with)
    captions, links = _member_captions(config, project, data, recorded)
    # 3. register (or reopen) the run
    run = previous if previous is not None else registry.create("finetune", config, links=links)
    if registered is not None:
        registered(run.id)
    report = RecordedProgress.for_run(registry, run.id, forward=progress, every_s=2.0)
    with registry.track(run.id):
        # 4. the member images (decoded once, unreadable ones skipped) and their prompts
        images, prompts, labels = training_examples(data, data.split.members, captions, config.template,
                                                    config.class_template)
        write_json(run.run_dir / "membership.json", data.split.to_dict())
        write_json(run.run_dir / "training_prompts.json", {"class_names": data.class_names,
                                                           "prompts": prompts, "labels": labels})
        # 5. train (resuming from the newest checkpoint in the run folder) and save the generator
        metrics = fit_generator(config.generator, tuple(config.backend_options().items()), images, prompts, labels,
                                run.run_dir / "checkpoints", run.run_dir / "generator", run.id, report)
        write_json(run.run_dir / "metrics.json", metrics)
        registry.report(run.id, **metrics)
        # 6. a DP generator's spend goes into the dataset's ledger (a warning past its budget)
        spend_on_ledger(project, data, run.id, metrics.get("privacy"), config.epsilon_budget)
    return FinetuneResult(run.id, run.run_dir / "generator", metrics)


def spend_on_ledger(project: Project, data: DataContext, run_id: str, privacy: dict[str, Any] | None,
                    budget: float | None = None) -> None:
    """Record a DP part's ε in the project's ledger under the data's fingerprint; set the budget if given."""
    if budget is not None:
        set_budget(project.root, data.fingerprint, budget, data.dataset.name)
    if privacy:
        part = DPPart(**{k: v for k, v in privacy.items() if k in DPPart.__dataclass_fields__})
        record_spend(project.root, data.fingerprint, run_id, part, data.dataset.name)


def training_examples(data: DataContext, ids: Sequence[str], captions: Mapping[str, str], template: str,
                      class_template: str = DEFAULT_CLASS_TEMPLATE) -> tuple[list[Image.Image], list[str], list[int]]:
    """The generator's training triples for images ``ids``: image (from the data's decoded tensors),
    prompt (its caption through ``template``; ``class_template`` for an image without one) and label."""
    tensors = data.tensors(ids)
    prompts, labels = [], []
    for image_id, label in zip(tensors.ids, tensors.y.tolist()):
        name = data.dataset.class_name(label)
        prompts.append(build_prompt(name, captions[image_id], template) if image_id in captions
                       else class_template.format(label=name))
        labels.append(label)
    return tensor_to_images(tensors.x), prompts, labels


def fit_generator(backend: str, options: Mapping[str, Any] | Sequence[tuple[str, Any]], images: Sequence[Image.Image],
                  prompts: Sequence[str], labels: Sequence[int], checkpoints: Path, out_dir: Path, run_ref: str,
                  progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Train backend ``backend`` with ``options`` on the triples (resuming from ``checkpoints``) and save it
    to ``out_dir`` with its ``backend.json``; returns the training figures."""
    started = time.monotonic()
    generator = generator_class(backend)(backend_config(backend, dict(options)))
    metrics = generator.fit(images, prompts, labels, Path(checkpoints), progress)
    generator.save(Path(out_dir))
    write_json(Path(out_dir) / "backend.json", {"backend": backend, "run": run_ref})
    return {**to_jsonable(metrics), "train_images": len(images), "wall_seconds": round(time.monotonic() - started, 2)}


def _member_captions(config: FinetuneConfig, project: Project, data: DataContext, recorded: dict[str, str]
                     ) -> tuple[dict[str, str], list[Link]]:
    """id -> caption of every member (none without a store) and the run's links; a member without a
    caption (that can be read) is an error."""
    links = [Link("data", "dataset", data.fingerprint)]
    if not config.store:
        return {}, links
    store = caption_store(project, config.store)
    version = store.head() if config.store_version is None else config.store_version
    if "captions" in recorded:
        version = int(recorded["captions"].rpartition("@")[2])
    records = store.records(version)
    links.append(Link("captions", "captions", f"{store.name}@{version}"))
    missing = [i for i in data.split.members if i not in records]
    # an image nobody could caption because it cannot be read is skipped like in every stage
    missing = [i for i in missing if data.dataset.readable(data.dataset.record(i))]
    if missing:
        raise ValueError(f"{len(missing)} member images have no caption in store {config.store!r} "
                         f"(e.g. {missing[0]}); caption them first")
    return {i: r.caption for i, r in records.items()}, links


def _resumable(registry: Any, run_id: str, config: FinetuneConfig) -> Any:
    """The record of an unfinished finetune run whose recorded config is ``config``, else ValueError."""
    run = registry.get(run_id)
    if run.kind != "finetune":
        raise ValueError(f"run {run_id} is a {run.kind} run, not a finetune run")
    if run.status == "done":
        raise ValueError(f"run {run_id} is already finished (its generator is {run.run_dir / 'generator'}); "
                         "nothing to resume")
    differences = config_differences(from_dict(FinetuneConfig, run.config, source=f"the saved config of run {run_id}"),
                                     config)
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
