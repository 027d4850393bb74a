"""Generator backends behind one interface, picked by name from :data:`GENERATORS`.

A backend fine-tunes (or trains) on image + prompt pairs, generates images for prompts with
per-image seeds, and saves / loads itself from a folder. It also describes itself, so that nothing
else names it: its sampling controls, the file its config is saved in, where its training
checkpoints are kept and which versions of a trained generator can be compared, the base model
field it takes (if any), and what the studio's run form offers. Backends register themselves on
import; adding one is a file in this folder with a registered :class:`Generator` subclass, plus its
module name in ``_BUILT_IN``.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from ..core.common import ProgressFn, no_progress, read_json
from ..core.registry import Registry
from ..core.schema import ConfigError, parse

_BUILT_IN = ("scratch", "sd_lora")


class SamplerDiverged(RuntimeError):
    """A backend's sampler produced NaN or infinity: its images would be black or one flat colour, so
    none is returned. The message names the backend, how many images and the sampling settings."""


@dataclass(frozen=True)
class Variant:
    """One version of a trained generator, to compare with the others."""

    name: str  # "base", "fine-tuned", "step 200", "final"
    backend: str
    generator_dir: Path  # the run's saved generator (runs/<id>/generator)
    checkpoint: Path | None = None  # a training checkpoint folder to load instead of the final weights
    base_only: bool = False  # the pretrained base model alone, without what training added
    step: int | None = None  # training step of a checkpoint


class Generator(abc.ABC):
    """The interface every generator backend implements."""

    name: ClassVar[str]
    config_class: ClassVar[type]  # the backend's frozen config dataclass
    # common option names (CLI flags, studio fields) -> this backend's config field names; "steps" is
    # the number of training steps
    option_aliases: ClassVar[dict[str, str]] = {}
    sampling_fields: ClassVar[dict[str, str]] = {}  # "steps" / "guidance" (sampling controls) -> config field
    config_file: ClassVar[str] = ""  # what save() writes the config to, in the generator's folder
    base_field: ClassVar[str | None] = None  # a config field naming a pretrained base model (hub id or folder)
    path_fields: ClassVar[frozenset[str]] = frozenset()  # config fields that name a model or a file
    form_sizes: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}  # model sizes the studio's form offers
    # DP-SGD training: "epsilon" / "delta" -> config fields of the target budget (empty: no DP training);
    # fit() then returns metrics["privacy"], a pipeline.privacy.accounting.DPPart as a dict
    dp_fields: ClassVar[dict[str, str]] = {}

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def fit(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        labels: Sequence[int],
        out_dir: Path,
        progress: ProgressFn = no_progress,
    ) -> dict[str, Any]:
        """Train on (image, prompt, label) triples; checkpoints go under ``out_dir``.

        Returns metrics (final loss, seconds per step, ...). Resumes from the latest checkpoint
        found in ``out_dir``.
        """

    @abc.abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        labels: Sequence[int],
        seeds: Sequence[int],
        progress: ProgressFn = no_progress,
    ) -> list[Image.Image]:
        """One image per (prompt, label, seed); the same seed gives the same image."""

    @abc.abstractmethod
    def save(self, directory: Path) -> None:
        """Write everything needed to :meth:`load` this generator again."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: Path, **overrides: Any) -> Generator:
        """Load a generator written by :meth:`save`."""

    @classmethod
    def suggest_options(cls, side: int, channels: int, images: int, device: str) -> dict[str, Any]:
        """Config fields this backend recommends for training images of ``side`` pixels on ``device``
        (``cpu`` or ``cuda``); presets start from these. Default: none (the config's defaults)."""
        return {}

    def time_steps(self, side: int, channels: int, num_classes: int) -> dict[str, float] | None:
        """Measured ``{"train_step_s", "image_s"}`` and the configured ``train_steps``, for a time
        estimate, from a few steps on random data of this shape (no training data needed); None when
        the backend cannot tell cheaply."""
        return None


    # -- self-description (what the studio, the CLI and the comparisons ask) ------------------------------
    @classmethod
    def field_of(cls, option: str) -> str:
        """This backend's config field for a common option name (e.g. "steps")."""
        return cls.option_aliases.get(option, option)

    @classmethod
    def saved_config(cls, directory: Path) -> dict[str, Any]:
        """The config fields a generator saved in ``directory`` was saved with."""
        return read_json(Path(directory) / cls.config_file)

    @classmethod
    def checkpoints(cls, generator_dir: Path) -> list[tuple[int, Path]]:
        """Kept training checkpoints (step, folder) of the run that saved ``generator_dir``, oldest first."""
        return []

    @classmethod
    def trained_steps(cls, generator_dir: Path) -> int | None:
        """How many training steps the saved generator finished (its config's steps field; None: not
        recorded)."""
        try:
            return int(cls.saved_config(Path(generator_dir))[cls.field_of("steps")])
        except (OSError, KeyError, TypeError, ValueError):
            return None

    @classmethod
    def earlier_checkpoints(cls, generator_dir: Path) -> list[tuple[int, Path]]:
        """The kept checkpoints before the final weights: the one of the last step holds the saved
        generator's own weights, a second copy of the final version, so it is left out."""
        last = cls.trained_steps(generator_dir)
        return [(step, path) for step, path in cls.checkpoints(generator_dir) if step != last]

    @classmethod
    def variants(cls, generator_dir: Path) -> list[Variant]:
        """Every version of a saved generator that can be compared: its earlier checkpoints, then the final
        one (with the step it was saved at)."""
        return [*(Variant(f"step {step}", cls.name, Path(generator_dir), path, step=step)
                  for step, path in cls.earlier_checkpoints(generator_dir)),
                Variant("final", cls.name, Path(generator_dir), step=cls.trained_steps(generator_dir))]

    @classmethod
    def load_variant(cls, variant: Variant, **overrides: Any) -> Generator:
        """Load one version; ``overrides`` are config fields (or their aliases)."""
        return cls.load(variant.generator_dir, **resolve_options(cls, overrides))

    @classmethod
    def comparison_options(cls, train_steps: int) -> dict[str, Any]:
        """Options that keep a few checkpoints along a training of ``train_steps`` (for comparisons)."""
        return {}


GENERATORS: Registry[type[Generator]] = Registry("generator")


def generator_class(name: str) -> type[Generator]:
    """The backend class registered under ``name`` (importing the built-in backends first)."""
    _import_backends()
    return GENERATORS.get(name)


def generator_names() -> list[str]:
    _import_backends()
    return GENERATORS.names()


def base_model_backends() -> list[str]:
    """Backends that sample from (and fine-tune) a pretrained base model named by a hub id or folder."""
    return [n for n in generator_names() if generator_class(n).base_field]


def resolve_options(cls: type[Generator], options: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Map common option names to ``cls``'s config fields; an unknown name is an error listing the
    valid ones (so ``--steps`` means training steps for every backend, whatever the field is called)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    resolved = {}
    for key, value in options.items():
        field = cls.field_of(key)
        if field not in fields:
            valid = sorted(fields | set(cls.option_aliases))
            raise ConfigError(path, f": generator {cls.name!r} has no option {key!r}; valid: {', '.join(valid)}")
        resolved[field] = value
    return resolved


def backend_config(name: str, options: dict[str, Any], path: str = "options") -> Any:
    """Backend ``name``'s config from ``options`` (its fields or their aliases), checked against the
    config dataclass as its schema: a wrong type, NaN, an out-of-range value or an unknown name is a
    :class:`ConfigError` naming ``path.field``."""
    cls = generator_class(name)
    return parse(cls.config_class, resolve_options(cls, dict(options), path), path=path)


def create_generator(name: str, **options: Any) -> Generator:
    """Build a backend by name; ``options`` are fields of its config dataclass (or their aliases)."""
    return generator_class(name)(backend_config(name, options))


def _import_backends() -> None:
    # imported lazily: the SD backend pulls in diffusers/transformers, which is slow at start-up
    for module in _BUILT_IN:
        importlib.import_module(f".{module}", __name__)
