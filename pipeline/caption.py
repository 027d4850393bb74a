"""Captioning stage: caption every training image into a versioned caption store (TCKR step 1)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .captions.captioners import Captioner, CaptionerConfig, create_captioner
from .captions.prompts import DEFAULT_TEMPLATE, TEMPLATES, build_prompt  # noqa: F401  (re-exported)
from .captions.store import CaptionRecord, CaptionStore, caption_store
from .core.common import Progress, ProgressFn, config_hash, no_progress, write_json
from .core.project import Project
from .core.runs import Link, RecordedProgress
from .core.schema import schema
from .data.context import DataContext
from .data.datasets import DatasetConfig, ImageDataset, ImageRecord

logger = logging.getLogger(__name__)

SUBSETS = ("train", "members", "all")


@schema
@dataclass(frozen=True)
class CaptionConfig:
    """What to caption, with which captioner, into which store."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the images
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)  # the captioning model
    store: str | None = None  # caption store name (default: the dataset's name)
    subset: str = "train"  # which images: train | members (MIA members only) | all (train + test)
    overwrite: bool = False  # re-caption images that already have a machine caption (edited and reviewed ones are kept)
    overwrite_reviewed: bool = False  # re-caption edited and reviewed captions too (implies overwrite)


@dataclass(frozen=True)
class CaptionResult:
    """What a captioning run produced."""

    run_id: str
    store: str
    version: int  # caption store version holding the new captions
    captioned: int  # captions this run saved (including resumed pending ones)
    already_done: int  # images skipped because they already had a caption (or an edited or reviewed one)
    corrupt: dict[str, str]  # image id -> reason, for images that could not be read
    seconds: float
    curated_kept: int = 0  # edited or reviewed captions kept although overwrite was asked (the curator's work wins)
    curated_replaced: int = 0  # edited or reviewed captions replaced (overwrite_reviewed)


def default_store_name(dataset: ImageDataset) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", dataset.name).strip("-") or "captions"


def select_images(dataset: ImageDataset, subset: str) -> list[ImageRecord]:
    if subset == "train":
        return dataset.split("train")
    if subset == "members":
        members = set(dataset.membership().members)
        return [r for r in dataset.split("train") if r.id in members]
    if subset == "all":
        return list(dataset.records)
    raise ValueError(f"unknown subset {subset!r}; valid: {', '.join(SUBSETS)}")


def caption(
    config: CaptionConfig,
    project: Project,
    progress: ProgressFn = no_progress,
    captioner: Captioner | None = None,
    data: DataContext | None = None,
) -> CaptionResult:
    """Caption the chosen images into a caption store, resumably.

    Captions are appended to the store's pending file after every batch; a rerun after a crash or
    cancel picks them up and only captions what is missing. The finished captions become one new
    store version. ``data``: the experiment's loaded data (a stage run on its own loads it).
    """
    started = time.monotonic()
    # 1. load the data and the store
    dataset = (data or DataContext.open(config.dataset)).dataset
    store = caption_store(project, config.store or default_store_name(dataset), create=True)
    store.bind(dataset.name, dataset.fingerprint, dataset.class_names)
    captioner = captioner or create_captioner(config.captioner)
    source = captioner.source()
    pending_key = config_hash({"source": source, "fingerprint": dataset.fingerprint})

    # 2. decide what is left to do
    plan = _plan(config, dataset, store, pending_key)

    # 3. register the run
    registry = project.registry()
    run = registry.create("caption", config, links=[Link("data", "dataset", dataset.fingerprint)])
    write_json(run.run_dir / "membership.json", dataset.membership().to_dict())
    report = RecordedProgress.for_run(registry, run.id, forward=progress)
    with registry.track(run.id):
        # 4. caption batch by batch, appending to the pending file
        _caption_all(captioner, dataset, store, pending_key, source, plan.todo, config.captioner.batch_size, report)
        # 5. commit everything pending as one store version; edits and reviews made meanwhile (also
        #    while a killed run waited to resume) win over the pending machine captions
        new = store.read_pending(pending_key)
        version, kept = store.save_captioned(
            new.values(), since=plan.since, replace=plan.replace, author=f"run {run.id}",
            message=f"caption with {source['captioner']} ({source.get('model') or 'no model'})")
        store.clear_pending(pending_key)
        saved = len(new) - len(kept)
        kept_curated = len(set(kept) | (plan.curated - plan.replace if plan.overwrite else set()))
        replaced = len(plan.replace & set(new) - set(kept))
        registry.link(run.id, Link("captions", "captions", f"{store.name}@{version}"))
        registry.report(run.id, captioned=saved, already_done=len(plan.done), curated_kept=kept_curated,
                        curated_replaced=replaced, corrupt=len(dataset.skipped), store=store.name,
                        version=version)

    if dataset.skipped:
        write_json(run.run_dir / "corrupt_images.json", dataset.skipped)
    return CaptionResult(run.id, store.name, version, saved, len(plan.done), dict(dataset.skipped),
                         time.monotonic() - started, kept_curated, replaced)


@dataclass(frozen=True)
class _Plan:
    """What a caption run has left to do, from the store's head and the pending file."""

    since: int  # the store version the run starts from
    done: dict[str, CaptionRecord]  # id -> caption kept as it is
    todo: list[ImageRecord]  # images still to caption
    curated: set[str]  # wanted ids whose caption a person edited or reviewed
    replace: set[str]  # of those, the ones to caption again (overwrite_reviewed)
    overwrite: bool


def _plan(config: CaptionConfig, dataset: ImageDataset, store: CaptionStore, pending_key: str) -> _Plan:
    """The images to caption: the chosen subset less those captioned already (unless overwritten) and
    those pending from an earlier run; edited and reviewed captions are a person's work, replaced only
    when ``overwrite_reviewed`` asks for them by name."""
    wanted = select_images(dataset, config.subset)
    since = store.head()
    existing = store.records(since)
    overwrite = config.overwrite or config.overwrite_reviewed
    curated = {r.id for r in wanted if r.id in existing and existing[r.id].curated}
    replace = curated if config.overwrite_reviewed else set()
    done = {i: r for i, r in existing.items() if not overwrite or r.curated and i not in replace}
    pending = store.read_pending(pending_key)
    todo = [r for r in wanted if r.id not in done and r.id not in pending]
    if replace:
        logger.warning("replacing %d edited or reviewed caption(s) of store %s (curators: %s), as "
                       "overwrite_reviewed asks", len(replace), store.name,
                       ", ".join(sorted({existing[i].curator for i in replace} - {""})) or "unnamed")
    logger.info("captioning %d images (%d already captioned, %d pending from an earlier run)",
                len(todo), len(done), len(pending))
    return _Plan(since, done, todo, curated, replace, overwrite)


def _caption_all(captioner: Captioner, dataset: ImageDataset, store: CaptionStore, key: str, source: dict[str, Any],
                 todo: list[ImageRecord], batch_size: int, progress: ProgressFn) -> None:
    """Caption ``todo`` in batches (unreadable images skipped), each batch appended to the pending file."""
    started, batch, finished = time.monotonic(), [], 0
    for record, image in dataset.iter_images(todo):
        batch.append((record, image))
        if len(batch) == batch_size:
            finished += _caption_batch(captioner, dataset, store, key, source, batch)
            batch = []
            _report(progress, finished, len(todo), started)
    if batch:
        finished += _caption_batch(captioner, dataset, store, key, source, batch)
    _report(progress, finished, len(todo), started)


def _caption_batch(captioner: Captioner, dataset: ImageDataset, store: CaptionStore, key: str,
                   source: dict[str, Any], batch: list[tuple[ImageRecord, Any]]) -> int:
    labels = [dataset.class_name(r.label) for r, _ in batch]
    texts = captioner.caption([image for _, image in batch], labels)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    store.append_pending(key, [CaptionRecord(r.id, label, text.strip(), source, stamp)
                               for (r, _), label, text in zip(batch, labels, texts)])
    return len(batch)


def _report(progress: ProgressFn, done: int, total: int, started: float) -> None:
    rate = done / max(time.monotonic() - started, 1e-9)
    progress(Progress("caption", done, total, {"images_per_s": round(rate, 2)}))
