"""The audited population: the member and non-member images of an experiment, their ground truth,
RMIA's reference samples ``z`` (test images no model trained on), and the manifest fields that
identify them in a shadow cache. Built once per experiment from its :class:`DataContext` and shared
by the transfer shadows, the pipeline shadows and the attacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.common import config_hash
from ..data.context import DataContext
from ..data.tensors import TensorData


@dataclass
class Population:
    """Members + non-members (unreadable images skipped) at the teacher's input size, and z."""

    data: DataContext
    population: TensorData
    is_member: np.ndarray  # (n,) bool
    z: TensorData
    size: int  # a shadow trains on as many examples as the target's member set
    n_val: int  # and early-stops on as many as the target's validation set
    common: dict[str, Any]  # manifest fields every shadow set of this population shares
    image_size: int | None  # the input size of ``population`` and ``z``
    views: tuple[str, ...]  # query augmentations every model is scored on

    @classmethod
    def build(cls, data: DataContext, image_size: int | None, views: tuple[str, ...], reference_size: int,
              seed: int) -> Population:
        population = data.tensors("population", image_size)
        members = set(data.split.members)
        is_member = np.array([i in members for i in population.ids])
        z = data.tensors(reference_ids(data, reference_size, seed), image_size)
        size, n_val = int(is_member.sum()), len(data.split.validation)
        common = {"dataset": data.fingerprint, "population": config_hash(population.ids, 64),
                  "z": config_hash(z.ids, 64), "size": size, "n_val": n_val, "views": list(views), "seed": seed,
                  "num_classes": data.num_classes}
        return cls(data, population, is_member, z, size, n_val, common, image_size, tuple(views))

    def at(self, image_size: int | None) -> tuple[TensorData, TensorData]:
        """The population and z at another input size (decoded once per size by the data context)."""
        if image_size == self.image_size:
            return self.population, self.z
        return self.data.tensors(self.population.ids, image_size), self.data.tensors(self.z.ids, image_size)


def reference_ids(data: DataContext, limit: int, seed: int) -> list[str]:
    """RMIA's population samples z: test images (never trained on by any model), at most ``limit``."""
    ids = sorted(data.ids("test"))
    if not ids:
        raise ValueError("the audit needs test images as RMIA's reference population; the dataset has none")
    rng = np.random.default_rng(seed)
    return [ids[i] for i in sorted(rng.choice(len(ids), size=min(limit, len(ids)), replace=False))]
