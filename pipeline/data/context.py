"""One experiment's data, loaded once: the dataset, its fingerprint and member / non-member split,
and each image decoded at most once per input size into tensors that every stage reads.

    data = DataContext.open(DatasetConfig(...))
    members = data.tensors("members", size=32)   # decoded now
    again = data.tensors("members", size=32)     # the same rows, nothing decoded

A stage run on its own (from the CLI) opens its own context; inside an experiment every stage gets
the experiment's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .datasets import DatasetConfig, ImageDataset, MembershipSplit, check_members, load_dataset
from .tensors import TensorData, images_to_tensor

logger = logging.getLogger(__name__)

PARTS = ("members", "nonmembers", "validation", "population", "test", "train")


@dataclass
class _Decoded:
    """Images of one input size decoded so far: id -> row of ``x`` / ``y``."""

    rows: dict[str, int] = field(default_factory=dict)
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None


class DataContext:
    """A loaded dataset with its split, fingerprinted once, decoded once per input size."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset
        self.split: MembershipSplit = dataset.membership()
        check_members(dataset, self.split)
        self._decoded: dict[int | None, _Decoded] = {}

    @classmethod
    def open(cls, config: DatasetConfig) -> DataContext:
        return cls(load_dataset(config))

    # -- what the data is ----------------------------------------------------------------------
    @property
    def config(self) -> DatasetConfig:
        return self.dataset.config

    @property
    def fingerprint(self) -> str:
        return self.dataset.fingerprint  # hashed once per dataset object

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    @property
    def num_classes(self) -> int:
        return len(self.dataset.class_names)

    def ids(self, part: str) -> tuple[str, ...]:
        """Image ids of a named part: members, nonmembers, validation, population (members then
        non-members: the audited set), test or train."""
        split = self.split
        named = {"members": split.members, "nonmembers": split.nonmembers, "validation": split.validation,
                 "population": split.members + split.nonmembers}
        if part in named:
            return tuple(named[part])
        if part in ("test", "train"):
            return tuple(r.id for r in self.dataset.split(part))
        raise ValueError(f"unknown data part {part!r}; valid: {', '.join(PARTS)}")

    # -- images as tensors --------------------------------------------------------------------------
    def tensors(self, part: str | Sequence[str], size: int | None = None) -> TensorData:
        """The images of a named part (or of these ids) at ``size`` (None: their own size), decoding
        only those not decoded at that size before; unreadable images are left out (``ids`` lists the
        kept ones, and the dataset records why)."""
        ids = self.ids(part) if isinstance(part, str) else tuple(part)
        cache = self._decoded.setdefault(size, _Decoded())
        self._decode(cache, [i for i in dict.fromkeys(ids) if i not in cache.rows], size)
        kept = [i for i in ids if i in cache.rows]
        if not kept:
            if ids:  # an empty batch would fail much later, in a model, with a message about kernel sizes
                raise ValueError(f"no readable image among the {len(ids)} {part if isinstance(part, str) else 'chosen'}"
                                 f" image(s) of dataset {self.dataset.name!r} (the first: "
                                 f"{self.dataset.skipped.get(ids[0], 'unreadable')}); `datasets inspect --check` "
                                 "lists the unreadable ones")
            side = size or 1
            return TensorData(torch.empty((0, 3, side, side)), torch.empty(0, dtype=torch.long), ids=[])
        index = torch.tensor([cache.rows[i] for i in kept])
        return TensorData(cache.x[index], cache.y[index], ids=kept)

    def _decode(self, cache: _Decoded, ids: list[str], size: int | None) -> None:
        if not ids:
            return
        pairs = list(self.dataset.iter_images([self.dataset.record(i) for i in ids]))
        if not pairs:
            return
        x = images_to_tensor([image for _, image in pairs], size)
        y = torch.tensor([record.label for record, _ in pairs], dtype=torch.long)
        start = 0 if cache.x is None else len(cache.x)
        if cache.x is not None and x.shape[1:] != cache.x.shape[1:]:
            raise ValueError(f"images of {self.dataset.name!r} have different sizes ({tuple(cache.x.shape[-2:])} "
                             f"and {tuple(x.shape[-2:])}); set the classifier's image_size to train at one")
        cache.x = x if cache.x is None else torch.cat([cache.x, x])
        cache.y = y if cache.y is None else torch.cat([cache.y, y])
        cache.rows.update({record.id: start + k for k, (record, _) in enumerate(pairs)})
        logger.debug("decoded %d images of %s at size %s", len(pairs), self.dataset.name, size)
