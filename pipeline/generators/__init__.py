"""Generator backends behind one interface, picked by name from :data:`GENERATORS`.

A backend fine-tunes (or trains) on image + prompt pairs, generates images for prompts with
per-image seeds, and saves / loads itself from a folder. Backends register themselves on import.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from ..core.common import ProgressFn, no_progress
from ..core.registry import Registry


class Generator(abc.ABC):
    """The interface every generator backend implements."""

    name: ClassVar[str]
    config_class: ClassVar[type]  # the backend's frozen config dataclass
    # common option names (CLI flags, studio fields) -> this backend's config field names
    option_aliases: ClassVar[dict[str, str]] = {}

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


GENERATORS: Registry[type[Generator]] = Registry("generator")


def generator_class(name: str) -> type[Generator]:
    """The backend class registered under ``name`` (importing the built-in backends first)."""
    _import_backends()
    return GENERATORS.get(name)


def resolve_options(cls: type[Generator], options: dict[str, Any]) -> dict[str, Any]:
    """Map common option names to ``cls``'s config fields; an unknown name is an error listing the
    valid ones (so ``--steps`` means training steps for every backend, whatever the field is called)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    resolved = {}
    for key, value in options.items():
        field = cls.option_aliases.get(key, key)
        if field not in fields:
            valid = sorted(fields | set(cls.option_aliases))
            raise ValueError(f"generator {cls.name!r} has no option {key!r}; valid: {', '.join(valid)}")
        resolved[field] = value
    return resolved


def create_generator(name: str, **options: Any) -> Generator:
    """Build a backend by name; ``options`` are fields of its config dataclass (or their aliases)."""
    cls = generator_class(name)
    return cls(cls.config_class(**resolve_options(cls, options)))


def _import_backends() -> None:
    # imported lazily: the SD backend pulls in diffusers/transformers, which is slow at start-up
    from . import scratch, sd_lora  # noqa: F401
