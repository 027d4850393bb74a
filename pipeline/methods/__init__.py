"""Transfer methods: other ways than GKD to get a student from the teacher, on the same
accuracy / privacy plane and under the same audit.

- ``am`` — activation-maximisation students (Nikolaidis et al., "Learning from Higher-Layer Feature
  Visualizations"): images synthesised from the teacher alone, a student distilled on them (data-free);
- ``bss`` — KD with boundary-supporting samples (Heo et al., AAAI 2019) from the real members (the
  paper's setting: *not* private, a reference point);
- ``gkd+bss`` — the same on the synthetic rounds (data-free, composes with GKD);
- ``dp-sgd`` — the classifier trained on the real members with differential privacy (Opacus).

A method gets a :class:`MethodContext`. Only a method that declares ``reads_real_training_images``
receives the real member images; the others get ``real=None``, so a data-free student cannot read a
real training image by construction (as for GKD).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..classifiers.train import TrainConfig, TrainResult
from ..core import checkpoints
from ..core.common import ProgressFn
from ..core.registry import Registry
from ..core.schema import ConfigError, parse
from ..data.tensors import TensorData


@dataclass(frozen=True)
class RealData:
    """Real training images: the members (trained on) and the validation carve-out (early stopping)."""

    members: TensorData
    validation: TensorData | None


@dataclass(frozen=True)
class MethodContext:
    """What a transfer method may use."""

    teacher: nn.Module  # the trained teacher (eval mode)
    teacher_recipe: TrainConfig  # its input size
    student_recipe: TrainConfig  # the student's architecture and training recipe (shared with GKD)
    temperature: float  # KD temperature (the experiment's distillation settings)
    alpha: float  # KD weight
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) the teacher takes
    synthetic: tuple[TensorData, ...]  # the experiment's synthetic rounds at the student's size (labels = intended class)
    regen_every: int  # epochs on one synthetic round before the next (GKD's recycling period)
    real: RealData | None  # only for methods that read real training images
    seed: int


@dataclass
class MethodResult:
    """A trained method's student and what it cost."""

    model: nn.Module
    checkpoint: Path
    metrics: dict[str, Any]  # training figures; ``epsilon`` / ``delta`` for a DP method

    @classmethod
    def saved(cls, result: TrainResult, out_dir: Path, **figures: Any) -> MethodResult:
        """Save the trained student's weights as ``out_dir/model.pt``; the figures with its training's."""
        path = Path(out_dir) / "model.pt"
        checkpoints.save(path, result.model.state_dict())
        return cls(result.model.eval(), path, {**figures, "epochs_run": result.epochs_run,
                                               "best_epoch": result.best_epoch,
                                               "train_seconds": round(result.seconds, 2), "history": result.history})


class TransferMethod:
    """A registered way to get a private (or reference) student; subclasses set the class fields."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    reads_real_training_images: ClassVar[bool] = False
    private_model: ClassVar[bool] = False  # its student's architecture is Opacus' DP-compatible one

    def __init__(self, config: Any) -> None:
        self.config = config

    def label(self) -> str:
        """How the method appears in tables and plots (options that tell two runs apart included)."""
        return self.name

    def reads_real(self) -> bool:
        return self.reads_real_training_images

    def train(self, context: MethodContext, out_dir: Path, progress: ProgressFn) -> MethodResult:
        raise NotImplementedError


METHODS: Registry[type[TransferMethod]] = Registry("transfer method")


def register(cls: type[TransferMethod]) -> type[TransferMethod]:
    METHODS.register(cls.name, help=(cls.__doc__ or "").strip().split("\n")[0])(cls)
    return cls


def create_method(name: str, options: dict[str, Any] | None = None, path: str = "") -> TransferMethod:
    """A method by name with its config options, checked against its config dataclass as its schema (an
    unknown option lists the valid ones; a wrong type or NaN names ``path.option``)."""
    _import_methods()
    cls = METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise ConfigError(path, f": method {name!r} has no option(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return cls(parse(cls.config_class, options or {}, path=path))


def method_names() -> list[str]:
    _import_methods()
    return METHODS.names()


def _import_methods() -> None:
    from . import am, bss, dp  # noqa: F401 - registers them
