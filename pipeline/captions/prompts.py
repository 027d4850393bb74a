"""Prompt pools for generation: per-class lists of prompts from a caption store, a caption file
(per-image JSONL / CSV, a TCKR prompt file, ``class: caption`` lines) or the class names."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..core.project import Project
from ..data.datasets import ImageDataset
from .formats import READERS, read_prompt_pool, read_text_file, split_labelled_line
from .store import caption_store
from .templates import DEFAULT_CLASS_TEMPLATE, DEFAULT_TEMPLATE, TEMPLATES, build_prompt  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PromptPool:
    """Prompts per class, in class order; ``source`` says where they came from (for lineage)."""

    class_names: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]  # prompts[label] = prompts of that class
    source: str  # "store:<name>@<version>", "<format>:<file>" (jsonl, csv, tckr-json, txt) or "classnames"

    def __post_init__(self) -> None:
        empty = [self.class_names[i] for i, p in enumerate(self.prompts) if not p]
        if empty:
            raise ValueError(f"no prompts for classes {empty} in {self.source}")


def pool_from_store(project: Project, store_name: str, dataset: ImageDataset, ids: set[str] | None = None,
                    version: int | None = None, template: str = DEFAULT_TEMPLATE) -> PromptPool:
    """Prompts from a caption store, restricted to ``ids`` (e.g. the MIA members)."""
    store = caption_store(project, store_name)
    version = store.head() if version is None else version
    records = store.records(version)
    prompts: list[list[str]] = [[] for _ in dataset.class_names]
    index = {name: i for i, name in enumerate(dataset.class_names)}
    for image_id in sorted(records):
        if ids is not None and image_id not in ids:
            continue
        record = records[image_id]
        if record.label not in index:
            raise ValueError(f"store {store_name!r} has class {record.label!r}, not in {dataset.name!r}")
        prompts[index[record.label]].append(build_prompt(record.label, record.caption, template))
    return PromptPool(tuple(dataset.class_names), tuple(tuple(p) for p in prompts),
                      f"store:{store_name}@{version}")


def pool_from_file(path: Path, class_names: list[str], template: str = DEFAULT_TEMPLATE, *,
                   dataset: ImageDataset | None = None, ids: set[str] | None = None,
                   allow_nonmembers: bool = False) -> PromptPool:
    """Prompts from a caption file; the template turns each caption into a prompt.

    Per-image files (``.jsonl`` / ``.csv``, as ``captions export`` writes them) need ``dataset`` (their
    ids and labels are checked) and are restricted to ``ids`` (e.g. the MIA members). Per-class files,
    a TCKR prompt file (``.json``: ``{class: [captions]}``) or lines ``class: caption`` /
    ``class<TAB>caption`` (``.txt``, e.g. TCKR's ``*_finetuning.txt``), hold no ids and cannot be
    restricted: given ``ids`` they are refused unless ``allow_nonmembers``, because they may hold
    captions of non-members (TCKR's files caption the whole training set), which would condition the
    generator on them and make the student's membership audit unsound.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    kind = path.suffix.lower().lstrip(".")
    if kind in ("jsonl", "csv"):
        return _pool_from_rows(path, kind, template, dataset, ids)
    if ids is not None:
        if not allow_nonmembers:
            raise ValueError(
                f"{path} has no image ids, so its captions cannot be limited to the MIA members: captions of "
                "non-members would condition the generator and make the student's membership audit unsound. "
                "Use a per-image file (.jsonl / .csv from `captions export`) or a caption store (TCKR's "
                "*_finetuning.txt: `captions import --format tckr-txt`), or pass --allow-nonmember-prompts "
                "to accept the risk")
        logger.warning("%s has no image ids: captions of non-members may condition the generator "
                       "(--allow-nonmember-prompts)", path)
    if kind == "json":
        pools, kind = read_prompt_pool(path), "tckr-json"
    else:
        pools, kind = _read_labelled_lines(path, class_names), "txt"
    unknown = sorted(set(pools) - set(class_names))
    if unknown:
        raise ValueError(f"{path}: classes {unknown} are not among {', '.join(class_names)}")
    prompts = tuple(tuple(build_prompt(c, cap, template) for cap in pools.get(c, [])) for c in class_names)
    return PromptPool(tuple(class_names), prompts, f"{kind}:{path.name}")


def _pool_from_rows(path: Path, fmt: str, template: str, dataset: ImageDataset | None,
                    ids: set[str] | None) -> PromptPool:
    """Prompts from a per-image caption file, restricted to ``ids``."""
    if dataset is None:
        raise ValueError(f"{path}: a per-image caption file needs the dataset its ids belong to")
    rows = READERS.get(fmt)(path, dataset)
    prompts: list[list[str]] = [[] for _ in dataset.class_names]
    left_out = 0
    for image_id, caption in sorted(rows.pairs):
        if ids is not None and image_id not in ids:
            left_out += 1
            continue
        label = dataset.record(image_id).label
        prompts[label].append(build_prompt(dataset.class_name(label), caption.strip(), template))
    if rows.skipped:
        logger.warning("%s: %d empty captions left out (%s)", path, len(rows.skipped), rows.skipped[0])
    if left_out:
        logger.info("%s: left out %d captions of images outside the given ids (non-members)", path, left_out)
    return PromptPool(tuple(dataset.class_names), tuple(tuple(p) for p in prompts), f"{fmt}:{path.name}")


def _read_labelled_lines(path: Path, class_names: list[str]) -> dict[str, list[str]]:
    """``class: caption`` (TCKR) or ``class<TAB>caption`` lines -> captions per class."""
    pools: dict[str, list[str]] = {}
    empty = 0
    for n, line in enumerate(read_text_file(path).split("\n"), 1):
        if not line.strip():
            continue
        parsed = split_labelled_line(line, class_names)
        if parsed is None:
            raise ValueError(f"{path}:{n}: expected 'class: caption' or 'class<TAB>caption'")
        if parsed[1]:
            pools.setdefault(parsed[0], []).append(parsed[1])
        else:
            empty += 1
    if empty:
        logger.warning("%s: %d lines with an empty caption left out", path, empty)
    return pools


def pool_from_class_names(class_names: list[str], template: str = DEFAULT_CLASS_TEMPLATE) -> PromptPool:
    """One prompt per class made from its name (TCKR's class-name-only ablation)."""
    return PromptPool(tuple(class_names), tuple((template.format(label=c),) for c in class_names),
                      "classnames")
