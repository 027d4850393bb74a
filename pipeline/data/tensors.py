"""Images as tensors: what every classifier trains and is evaluated on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class TensorData:
    """Images as float tensors in [0, 1] (N, C, H, W), hard labels (N,), optional teacher logits (N, K)."""

    x: torch.Tensor
    y: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    ids: list[str] | None = None  # image ids of the rows, for real images

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, index: torch.Tensor | Sequence[int]) -> TensorData:
        """The rows ``index`` (ids and teacher logits kept along)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(self.x[index], self.y[index],
                          None if self.teacher_logits is None else self.teacher_logits[index],
                          None if self.ids is None else [self.ids[i] for i in index.tolist()])


def images_to_tensor(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images -> float tensor (N, 3, H, W) in [0, 1]; resized to ``size`` if given."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))
    if not arrays:
        side = size or 1
        return torch.empty((0, 3, side, side))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """Float images (N, 3, H, W) in [0, 1] back to RGB PIL images (exact for tensors made by
    :func:`images_to_tensor`: no decoding, and no loss)."""
    arrays = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arrays]
