"""The one augmentation module of classifier training: AugMix, a random shift (zero-pad and crop
back, the CIFAR "random crop") and a horizontal flip, each image with its own draw.

The draws come from the generator of the model being trained (one per model of a stacked run), in a
fixed order per batch (AugMix from torch's global stream, as torchvision draws it; then the shift
columns, the shift rows, the flips), so model i of a stacked run gets the same images as model i
trained alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("crop", "flip", "augmix", "mixup")  # mixup mixes labels too: it lives in the objectives


@dataclass(frozen=True)
class Augment:
    """Which augmentations a recipe asks for."""

    crop_padding: int = 0  # random shift of up to this many pixels (0: off)
    flip: bool = False  # horizontal flip of half the images
    augmix: bool = False  # torchvision's AugMix (per image; not stackable)

    @classmethod
    def of(cls, augment: tuple[str, ...], crop_padding: int) -> Augment:
        unknown = set(augment) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}; valid: {', '.join(AUGMENTATIONS)}")
        return cls(crop_padding if "crop" in augment else 0, "flip" in augment, "augmix" in augment)

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.augmix)

    def __call__(self, x: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """Augment a batch: x (B, C, H, W) with one generator, or (M, B, C, H, W) with M generators."""
        if not self.active:
            return x
        if x.ndim == 5:
            return torch.stack([self._one(xm, g) for xm, g in zip(x, gens)])
        return self._one(x, gens[0])

    def _one(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.augmix:
            from torchvision.transforms import v2

            augmix = v2.AugMix()
            x = torch.stack([augmix((img * 255).to(torch.uint8)).float() / 255 for img in x])
        if self.crop_padding > 0:
            n, p = len(x), self.crop_padding
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            x = shift(x, dy, dx, p)
        if self.flip:
            flipped = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flipped.to(x.device)[:, None, None, None], x.flip(-1), x)
        return x


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image of x (N, C, H, W) zero-padded by ``padding`` and cropped back at offset (dy, dx) (N,) each
    in [0, 2·padding]: a random shift that keeps the image size."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    rows = dy.to(x.device)[:, None] + torch.arange(h, device=x.device)[None, :]  # (n, h)
    cols = dx.to(x.device)[:, None] + torch.arange(w, device=x.device)[None, :]  # (n, w)
    return padded[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]
