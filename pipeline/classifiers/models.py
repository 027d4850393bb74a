"""Image classifiers by name: a tiny CPU default plus any timm model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core import checkpoints
from ..core.common import seed_everything
from ..core.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from .train import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierSpec:
    """What to build."""

    name: str = "tiny-cnn"  # a registered name (tiny-cnn, small-cnn) or any timm model name
    num_classes: int = 10  # output classes
    in_chans: int = 3  # input channels
    pretrained: bool = False  # timm: load pretrained weights (needs the Hub or a local cache)


CLASSIFIERS: Registry[Callable[[ClassifierSpec], nn.Module]] = Registry("classifier")
ModelFactory = Callable[[], nn.Module]


class TinyCNN(nn.Module):
    """Three conv layers with GroupNorm (no BatchNorm or dropout, so many copies can be trained at
    once with ``torch.func.vmap`` for LiRA shadows). ~30k parameters at width 32."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@CLASSIFIERS.register("tiny-cnn", help="3-layer CNN, ~30k parameters; the CPU default (vmap-able)")
def _tiny(spec: ClassifierSpec) -> nn.Module:
    return TinyCNN(spec.num_classes, spec.in_chans, width=32)


@CLASSIFIERS.register("small-cnn", help="the same CNN at width 64 (~120k parameters)")
def _small(spec: ClassifierSpec) -> nn.Module:
    return TinyCNN(spec.num_classes, spec.in_chans, width=64)


class _Block(nn.Module):
    """ResNet basic block (He et al. 2016) with GroupNorm: two 3x3 convs and a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out),
        )
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(8, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet for 28-64 px images trained from scratch on a CPU: a 3x3 stem and three
    stages of basic blocks (widths w, 2w, 4w; the last two halve the side). GroupNorm instead of
    BatchNorm and no dropout, so shadows of it train stacked with vmap. ~0.3M parameters at w=32."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32, blocks: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.GroupNorm(8, width),
                                   nn.ReLU()]
        c = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(_Block(c, c_out, 2 if stage > 0 and b == 0 else 1))
                c = c_out
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@CLASSIFIERS.register("small-resnet", help="ResNet-style, 3 stages, GroupNorm, ~0.3M parameters; for 28-64 px (vmap-able)")
def _small_resnet(spec: ClassifierSpec) -> nn.Module:
    return SmallResNet(spec.num_classes, spec.in_chans, width=32)


def create_classifier(spec: ClassifierSpec) -> nn.Module:
    """Build a registered classifier, or a timm model by name (e.g. ``resnet18``, ``vit_tiny_patch16_224``)."""
    if spec.name in CLASSIFIERS:
        return CLASSIFIERS.get(spec.name)(spec)
    import timm

    if not timm.is_model(spec.name):
        raise UnknownNameError(f"unknown classifier {spec.name!r}; valid names: "
                               f"{', '.join(CLASSIFIERS.names())} or any timm model (timm.list_models())")
    try:
        model = timm.create_model(spec.name, pretrained=spec.pretrained, num_classes=spec.num_classes,
                                  in_chans=spec.in_chans)
    except Exception as err:  # timm raises many kinds when weights cannot be fetched
        if not spec.pretrained:
            raise
        raise RuntimeError(f"could not load pretrained weights for timm model {spec.name!r} ({err}); "
                           "connect to the Hugging Face Hub, fill its cache, or train with pretrained=False"
                           ) from err
    # the pipeline feeds every classifier [0, 1] images; a timm model normalises them the way its
    # (pretrained) weights expect, from timm's data config (also without weights, so that a model
    # rebuilt to load a checkpoint has the same structure)
    data_config = timm.data.resolve_model_data_config(model)
    mean, std = data_config["mean"], data_config["std"]
    if len(mean) != spec.in_chans:
        mean, std = (sum(mean) / len(mean),) * spec.in_chans, (sum(std) / len(std),) * spec.in_chans
    return Normalized(model, mean, std)


class Normalized(nn.Module):
    """A classifier that takes images in [0, 1] and normalises them itself: (x - mean) / std per channel."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def vmap_compatible(model: nn.Module) -> bool:
    """True when copies of ``model`` can be trained stacked (no BatchNorm running stats, no dropout)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or isinstance(module, nn.Dropout):
            if isinstance(module, nn.Dropout) and module.p == 0:
                continue
            return False
    return True


def classifier_names() -> list[str]:
    """The registered classifiers (any timm model name is accepted besides them)."""
    return CLASSIFIERS.names()


def build_classifier(recipe: TrainConfig, num_classes: int, in_chans: int = 3) -> nn.Module:
    """A fresh classifier of ``recipe.model`` whose initial weights come from ``recipe.seed`` (python,
    numpy and torch seeded from it, as every training of the product starts)."""
    seed_everything(recipe.seed)
    return create_classifier(ClassifierSpec(recipe.model, num_classes, in_chans, recipe.pretrained))


def seeded_model(factory: ModelFactory, seed: int) -> nn.Module:
    """``factory()`` with its initial weights drawn from ``seed``, torch's global stream left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.train()


def load_classifier(path: Path, recipe: TrainConfig, num_classes: int, private: bool = False) -> nn.Module:
    """A trained classifier saved by the product (``*.pt``: its state dict), in eval mode on the CPU.
    ``private``: the architecture as DP-SGD trained it (BatchNorm swapped by Opacus' validator)."""
    from dataclasses import replace

    model = build_classifier(replace(recipe, pretrained=False), num_classes)  # the weights come from the file
    if private:
        from opacus.validators import ModuleValidator

        model = ModuleValidator.fix(model)
    model.load_state_dict(checkpoints.load(path))
    return model.eval()
