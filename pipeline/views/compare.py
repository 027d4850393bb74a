"""Side-by-side generations: the same prompts and seeds through several versions of one generator.

For ``sd-lora`` the versions are the base model (the same pipeline without the LoRA) and the
fine-tuned model (with it), plus the LoRA of each kept checkpoint. The ``scratch`` backend has no
pretrained base, so its versions are the kept checkpoints of the training run (earliest ... latest)
and the final generator. Every version draws an image from the same seed, so differences come from
the weights alone.

    variants = list_variants(generator_dir)
    result = compare_generations(generator_dir, prompts, labels, seeds, [v.name for v in variants])
    result.images["final"][0]
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.common import Progress, ProgressFn, no_progress, read_json
from ..core.project import Project
from ..core.runs import RunRecord
from ..finetune import load_generator
from ..generators import Generator

logger = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step-(\d+)$")
# generic sampling controls -> each backend's config field
SAMPLING_FIELDS = {
    "scratch": {"steps": "sampling_steps", "guidance": "guidance_scale"},
    "sd-lora": {"steps": "num_inference_steps", "guidance": "guidance_scale"},
}


@dataclass(frozen=True)
class Variant:
    """One version of a trained generator."""

    name: str  # "base", "fine-tuned", "step 200", "final"
    backend: str  # scratch | sd-lora
    generator_dir: Path  # the run's saved generator (runs/<id>/generator)
    checkpoint: Path | None = None  # a training checkpoint folder to load instead of the final weights
    with_lora: bool = True  # sd-lora: False = the base model alone
    step: int | None = None  # training step of a checkpoint


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
    generator_dir = Path(generator_dir)
    backend = backend_of(generator_dir)
    # finetune trains into <run>/checkpoints; scratch keeps step-N there, sd-lora one level deeper
    root = generator_dir.parent / "checkpoints"
    if backend == "sd-lora":
        root = root / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(found)


def list_variants(generator_dir: Path) -> list[Variant]:
    """Every version of a saved generator that can be compared."""
    generator_dir = Path(generator_dir)
    backend = backend_of(generator_dir)
    ckpts = [Variant(f"step {step}", backend, generator_dir, path, step=step)
             for step, path in checkpoints(generator_dir)]
    if backend == "sd-lora":
        return [Variant("base", backend, generator_dir, with_lora=False), *ckpts,
                Variant("fine-tuned", backend, generator_dir)]
    return [*ckpts, Variant("final", backend, generator_dir)]


def default_variants(variants: Sequence[Variant]) -> list[str]:
    """What to compare by default: base vs fine-tuned (sd-lora); earliest vs latest checkpoint vs
    final (scratch)."""
    names = [v.name for v in variants]
    if "base" in names:
        return ["base", "fine-tuned"]
    ckpts = [v.name for v in variants if v.checkpoint is not None]
    return list(dict.fromkeys(ckpts[:1] + ckpts[-1:] + ["final"]))


def sampling_overrides(backend: str, steps: int | None = None, guidance: float | None = None) -> dict[str, Any]:
    """Backend config overrides for the generic sampling controls (unset ones are left out)."""
    fields = SAMPLING_FIELDS.get(backend)
    if fields is None:
        raise ValueError(f"no sampling controls for backend {backend!r}; known: {', '.join(SAMPLING_FIELDS)}")
    out: dict[str, Any] = {}
    if steps is not None:
        out[fields["steps"]] = int(steps)
    if guidance is not None:
        out[fields["guidance"]] = float(guidance)
    return out


def sampling_defaults(generator_dir: Path) -> dict[str, Any]:
    """The saved generator's own sampling settings as {"steps", "guidance"} (read from its config file)."""
    generator_dir = Path(generator_dir)
    backend = backend_of(generator_dir)
    files = {"scratch": ("scratch_config.json", None), "sd-lora": ("sd_lora.json", "config")}
    if backend not in files:
        raise ValueError(f"no sampling controls for backend {backend!r}; known: {', '.join(files)}")
    name, section = files[backend]
    config = read_json(generator_dir / name)
    config = config[section] if section else config
    return {key: config[field] for key, field in SAMPLING_FIELDS[backend].items()}


# -- loading and comparing -------------------------------------------------------------------------------
def load_variant(variant: Variant, **overrides: Any) -> Generator:
    """Load one version; ``overrides`` replace backend config fields (sampling steps, guidance...)."""
    if variant.backend == "sd-lora":
        if not variant.with_lora:
            return load_generator(variant.generator_dir, lora_path=None, **overrides)
        if variant.checkpoint is not None:
            from ..generators.sd_lora import LORA_FILE

            return load_generator(variant.generator_dir, lora_path=str(variant.checkpoint / LORA_FILE),
                                  **overrides)
        return load_generator(variant.generator_dir, **overrides)
    if variant.checkpoint is None:
        return load_generator(variant.generator_dir, **overrides)
    from ..generators import resolve_options
    from ..generators.scratch import ScratchGenerator

    return ScratchGenerator.load_checkpoint(variant.checkpoint, **resolve_options(ScratchGenerator, overrides))


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
