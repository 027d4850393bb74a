"""Side-by-side generations: the same prompts and seeds through several versions of one generator.

Which versions a trained generator has is the backend's to say (``Generator.variants``): for a
backend with a pretrained base (``sd-lora``) the base model alone and the fine-tuned one, plus the
LoRA of each kept checkpoint; for one trained from scratch its kept checkpoints and the final
generator. Every version draws an image from the same seed, so differences come from the weights alone.

    variants = list_variants(generator_dir)
    result = compare_generations(generator_dir, prompts, labels, seeds, [v.name for v in variants])
    result.images["final"][0]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.common import Progress, ProgressFn, no_progress, read_json
from ..core.project import Project
from ..core.runs import RunRecord
from ..generators import Generator, Variant, generator_class

logger = logging.getLogger(__name__)

__all__ = ["Variant", "Comparison", "compare_generations", "list_variants", "load_variant"]


@dataclass
class Comparison:
    """Images per variant, in the order of the prompts (``images[variant][i]``)."""

    variants: tuple[str, ...]
    prompts: tuple[str, ...]
    labels: tuple[int, ...]
    seeds: tuple[int, ...]
    images: dict[str, list[Image.Image]] = field(default_factory=dict)


# -- which generators and versions exist ---------------------------------------------------------------
def generator_runs(project: Project) -> list[RunRecord]:
    """Finished fine-tuning runs that saved a generator, newest first."""
    return [r for r in project.registry().list(kind="finetune", status="done", limit=10_000)
            if (r.run_dir / "generator" / "backend.json").exists()]


def resolve_generator(project: Project, ref: str) -> Path:
    """A generator folder from a finetune run id, an experiment run id (its generator) or a path
    inside the project."""
    registry = project.registry()
    try:
        record = registry.get(ref)
    except KeyError:
        path = project.confine(ref)
        if not (path / "backend.json").exists():
            raise FileNotFoundError(f"{ref} is neither a run id nor a saved generator folder") from None
        return path
    if record.kind == "experiment":
        parents = [link.ref for link in record.links if link.role == "generator" and link.ref_kind == "run"]
        if not parents:
            raise ValueError(f"run {ref} has no generator yet (still running, or failed before step 2)")
        record = registry.get(parents[0])
    directory = record.run_dir / "generator"
    if not (directory / "backend.json").exists():
        raise FileNotFoundError(f"run {record.id} ({record.kind}) saved no generator in {directory}")
    return directory


def backend_of(generator_dir: Path) -> str:
    return read_json(Path(generator_dir) / "backend.json")["backend"]


def checkpoints(generator_dir: Path) -> list[tuple[int, Path]]:
    """Kept training checkpoints of the run that saved ``generator_dir``, oldest first."""
    return generator_class(backend_of(generator_dir)).checkpoints(Path(generator_dir))


def list_variants(generator_dir: Path) -> list[Variant]:
    """Every version of a saved generator that can be compared."""
    return generator_class(backend_of(generator_dir)).variants(Path(generator_dir))


def default_variants(variants: Sequence[Variant]) -> list[str]:
    """What to compare by default: the base model vs the fine-tuned one where there is a base; else
    the earliest and latest checkpoints and the final generator."""
    bases = [v.name for v in variants if v.base_only]
    if bases:
        return [bases[0], variants[-1].name]
    ckpts = [v.name for v in variants if v.checkpoint is not None]
    return list(dict.fromkeys(ckpts[:1] + ckpts[-1:] + [variants[-1].name]))


def sampling_overrides(backend: str, steps: int | None = None, guidance: float | None = None) -> dict[str, Any]:
    """Backend config overrides for the generic sampling controls (unset ones are left out)."""
    fields = generator_class(backend).sampling_fields
    if not fields:
        raise ValueError(f"generator {backend!r} has no sampling controls")
    out: dict[str, Any] = {}
    if steps is not None:
        out[fields["steps"]] = int(steps)
    if guidance is not None:
        out[fields["guidance"]] = float(guidance)
    return out


def sampling_defaults(generator_dir: Path) -> dict[str, Any]:
    """The saved generator's own sampling settings as {"steps", "guidance"} (read from its config file)."""
    cls = generator_class(backend_of(generator_dir))
    if not cls.sampling_fields:
        raise ValueError(f"generator {cls.name!r} has no sampling controls")
    config = cls.saved_config(Path(generator_dir))
    return {key: config[field] for key, field in cls.sampling_fields.items()}


# -- loading and comparing -------------------------------------------------------------------------------
def load_variant(variant: Variant, **overrides: Any) -> Generator:
    """Load one version; ``overrides`` replace backend config fields (sampling steps, guidance...)."""
    return generator_class(variant.backend).load_variant(variant, **overrides)


Loader = Callable[..., Generator]


def compare_generations(
    generator_dir: Path,
    prompts: Sequence[str],
    labels: Sequence[int],
    seeds: Sequence[int],
    variants: Sequence[str] | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    loader: Loader = load_variant,
    progress: ProgressFn = no_progress,
) -> Comparison:
    """Generate ``prompts`` (with ``labels`` and ``seeds``) with each named variant of a generator.

    ``variants`` are names from :func:`list_variants` (default :func:`default_variants`); ``steps``
    and ``guidance`` set the sampling of every variant alike. ``loader(variant, **overrides)`` loads
    one version (the studio passes a cached one).
    """
    # 1. check inputs
    if not (len(prompts) == len(labels) == len(seeds)) or not prompts:
        raise ValueError(f"need as many prompts, labels and seeds, at least one (got {len(prompts)}, "
                         f"{len(labels)}, {len(seeds)})")
    available = {v.name: v for v in list_variants(generator_dir)}
    names = list(variants) if variants else default_variants(list(available.values()))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; this generator has: {', '.join(available)}")
    # 2. the same sampling settings for every variant
    overrides = sampling_overrides(backend_of(generator_dir), steps, guidance)
    result = Comparison(tuple(names), tuple(prompts), tuple(int(y) for y in labels), tuple(int(s) for s in seeds))
    # 3. one batch per variant
    for k, name in enumerate(names):
        generator = loader(available[name], **overrides)
        result.images[name] = generator.generate(list(prompts), list(result.labels), list(result.seeds))
        progress(Progress("compare", k + 1, len(names), {"variant": name}))
    return result


def class_grid(class_names: Sequence[str], per_class: int, seed: int = 0,
               template: str = "{label}") -> tuple[list[str], list[int], list[int]]:
    """Prompts, labels and seeds of a per-class grid: ``per_class`` seeds for each class."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    prompts, labels, seeds = [], [], []
    for label, name in enumerate(class_names):
        for k in range(per_class):
            prompts.append(template.format(label=name))
            labels.append(label)
            seeds.append(seed + k)
    return prompts, labels, seeds
