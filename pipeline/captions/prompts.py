"""Prompt pools for generation: per-class lists of prompts from a caption store, a TCKR prompt file
or a text file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.project import Project
from ..data.datasets import ImageDataset
from .formats import read_prompt_pool

# TCKR's prompt variants (Sec. 4.3): class name only, caption only, and "class: caption" (default)
TEMPLATES = {"class": "{label}", "caption": "{caption}", "class_caption": "{label}: {caption}"}
DEFAULT_TEMPLATE = "class_caption"


def build_prompt(label: str, caption: str, template: str = DEFAULT_TEMPLATE) -> str:
    """A generation prompt from a class name and a caption.

    ``template`` is a name from :data:`TEMPLATES` or a format string using ``{label}`` and/or
    ``{caption}``.
    """
    fmt = TEMPLATES.get(template, template)
    if "{label}" not in fmt and "{caption}" not in fmt:
        raise ValueError(
            f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)} "
            "or a format string with {label} and/or {caption}"
        )
    return fmt.format(label=label, caption=caption)


@dataclass(frozen=True)
class PromptPool:
    """Prompts per class, in class order; ``source`` says where they came from (for lineage)."""

    class_names: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]  # prompts[label] = prompts of that class
    source: str  # "store:<name>@<version>", "tckr-json:<file>", "txt:<file>" or "classnames"

    def __post_init__(self) -> None:
        empty = [self.class_names[i] for i, p in enumerate(self.prompts) if not p]
        if empty:
            raise ValueError(f"no prompts for classes {empty} in {self.source}")


def pool_from_store(project: Project, store_name: str, dataset: ImageDataset, ids: set[str] | None = None,
                    version: int | None = None, template: str = DEFAULT_TEMPLATE) -> PromptPool:
    """Prompts from a caption store, restricted to ``ids`` (e.g. the MIA members)."""
    store = project.caption_store(store_name)
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


def pool_from_file(path: Path, class_names: list[str], template: str = DEFAULT_TEMPLATE) -> PromptPool:
    """A TCKR prompt file (``.json``: ``{class: [captions]}``) or a text file of ``class<TAB>caption``
    lines (``.txt``); the template turns each caption into a prompt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.suffix == ".json":
        pools, kind = read_prompt_pool(path), "tckr-json"
    else:
        pools, kind = {}, "txt"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            label, sep, caption = line.partition("\t")
            if not sep:
                raise ValueError(f"{path}:{n}: expected 'class<TAB>caption'")
            pools.setdefault(label.strip(), []).append(caption.strip())
    unknown = sorted(set(pools) - set(class_names))
    if unknown:
        raise ValueError(f"{path}: classes {unknown} are not among {', '.join(class_names)}")
    prompts = tuple(tuple(build_prompt(c, cap, template) for cap in pools.get(c, [])) for c in class_names)
    return PromptPool(tuple(class_names), prompts, f"{kind}:{path.name}")


def pool_from_class_names(class_names: list[str], template: str = "a photo of a {label}") -> PromptPool:
    """One prompt per class made from its name (TCKR's class-name-only ablation)."""
    return PromptPool(tuple(class_names), tuple((template.format(label=c),) for c in class_names),
                      "classnames")
