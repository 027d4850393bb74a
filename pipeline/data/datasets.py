"""Data layer: labelled image datasets from several sources, with stable ids and MIA splits.

Every source yields the same thing: a :class:`ImageDataset` whose records carry a stable id, a label
and a split, whose images are decoded lazily, and whose content fingerprint lets runs say which data
they used. The member / non-member split for membership-inference audits is seeded and recorded.
"""

from __future__ import annotations

import hashlib
import io
import logging
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.common import to_jsonable
from ..core.registry import Registry
from ..core.schema import schema
from .images import check_pixels

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# classes numbered by the labels themselves (no class names in the file): the most a dataset may have.
# Checked before any per-class list is built; ImageNet-21k's 21,843 classes fit.
MAX_CLASSES = 50_000


@schema
@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset to load and how to split it."""

    source: str = "digits"  # registered source: digits | imagefolder | parquet | hf
    path: str | None = None  # folder, parquet file/folder, hub id or save_to_disk folder
    image_column: str | None = None  # image column of parquet / HF data (None: detect)
    label_column: str | None = None  # label column of parquet / HF data (None: detect)
    train_split: str = "train"  # name of the training split in the source
    test_split: str = "test"  # name of the test split (carved from train when absent)
    test_fraction: float = 0.2  # share of images held out as test when the source has no test split
    val_fraction: float = 0.1  # share of the training split held out for validation (never a member)
    member_fraction: float = 0.5  # share of the remaining training images that are MIA "members"
    seed: int = 0  # seeds the member / non-member split
    limit: int | None = None  # at most this many images per split: a seeded, class-stratified sample

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 < self.member_fraction <= 1.0:
            raise ValueError(f"member_fraction must be in (0, 1], got {self.member_fraction}")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 image per split or null, got {self.limit}")

    @property
    def name(self) -> str:
        """A short human name, e.g. 'digits' or 'parquet:cifar10'."""
        if self.path is None:
            return self.source
        return f"{self.source}:{Path(str(self.path).rstrip('/')).name}"


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image; ``id`` is stable across loads of the same data."""

    id: str
    label: int
    split: str  # "train" or "test"


@dataclass(frozen=True)
class MembershipSplit:
    """Which training images are MIA members (seen by target models) and which are held out."""

    members: tuple[str, ...]
    nonmembers: tuple[str, ...]
    validation: tuple[str, ...]  # real training images for early stopping: neither member nor non-member
    seed: int
    member_fraction: float
    nonmember_source: str  # "train" (held-out training images) or "test"

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


# unreadable images met in this process: (dataset name, spec, id) -> reason (warned once; see skipped_images)
_WARNED: dict[tuple[str, str, str], str] = {}


def skipped_images(dataset: ImageDataset) -> dict[str, str]:
    """Every image of ``dataset`` that any stage of this process could not read: id -> reason."""
    spec = f"{dataset.config.source}:{dataset.config.path}"
    return {**{i: r for (name, s, i), r in _WARNED.items() if name == dataset.name and s == spec},
            **dataset.skipped}


class CorruptImageError(ValueError):
    """An image that cannot be decoded; the message names its path or id."""


@dataclass
class ImageDataset:
    """A labelled image dataset with lazily decoded images.

    ``read_bytes(record)`` returns the encoded (or raw) bytes of one image and ``decode`` turns them
    into a PIL image; both are provided by the source.
    """

    name: str
    class_names: list[str]
    records: list[ImageRecord]
    read_bytes: Callable[[ImageRecord], bytes]
    decode: Callable[[bytes, ImageRecord], Image.Image]
    describe_location: Callable[[ImageRecord], str]
    config: DatasetConfig = field(default_factory=DatasetConfig)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> reason, filled while iterating
    _by_id: dict[str, ImageRecord] = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {r.id: r for r in self.records}
        if len(self._by_id) != len(self.records):
            raise ValueError(f"dataset {self.name!r} has duplicate image ids")

    # -- lookup -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def record(self, image_id: str) -> ImageRecord:
        try:
            return self._by_id[image_id]
        except KeyError:
            raise KeyError(f"no image with id {image_id!r} in dataset {self.name!r}") from None

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]

    def class_name(self, label: int) -> str:
        return self.class_names[label]

    # -- images -------------------------------------------------------------------------------
    def load_image(self, record: ImageRecord | str) -> Image.Image:
        """Decode one image as RGB; raises :class:`CorruptImageError` naming its location."""
        if isinstance(record, str):
            record = self.record(record)
        where = self.describe_location(record)
        try:
            data = self.read_bytes(record)
            image = self.decode(data, record)
            check_pixels(image, "it")  # from the header: a small file can hold a huge image
            image.load()
        except Image.DecompressionBombError as err:  # not an OSError: would crash every caller
            raise CorruptImageError(f"cannot read image {record.id!r} at {where}: too large to decode safely "
                                    f"({err})") from err
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            raise CorruptImageError(f"cannot read image {record.id!r} at {where}: {err}") from err
        return to_rgb(image)

    def iter_images(
        self, records: Sequence[ImageRecord] | None = None
    ) -> Iterator[tuple[ImageRecord, Image.Image]]:
        """Yield (record, image) pairs, skipping unreadable images.

        A skipped image is logged with its location and recorded in ``self.skipped``; its record is
        simply left out, so no other image changes label.
        """
        for record in self.records if records is None else records:
            try:
                yield record, self.load_image(record)
            except CorruptImageError as err:
                self._skip(record, err)

    def readable(self, record: ImageRecord) -> bool:
        """Whether an image decodes (an unreadable one is recorded in ``skipped`` like in iteration)."""
        try:
            self.load_image(record)
        except CorruptImageError as err:
            self._skip(record, err)
            return False
        return True

    def _skip(self, record: ImageRecord, err: CorruptImageError) -> None:
        self.skipped[record.id] = str(err)
        # every stage opens the dataset afresh and meets the same bad file: warn once per process
        key = (self.name, f"{self.config.source}:{self.config.path}", record.id)
        if key not in _WARNED:
            _WARNED[key] = str(err)
            logger.warning("skipping %s", err)

    # -- identity and splits --------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """SHA-256 over ids, labels, class names and image bytes (order independent)."""
        if self._fingerprint is None:
            digest = hashlib.sha256("\n".join(self.class_names).encode())
            for record in sorted(self.records, key=lambda r: (r.split, r.id)):
                try:
                    content = hashlib.sha256(self.read_bytes(record)).hexdigest()
                except OSError:
                    content = "unreadable"
                digest.update(f"{record.split}\t{record.id}\t{record.label}\t{content}\n".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def membership(self) -> MembershipSplit:
        """Seeded validation / member / non-member split of the training images, per class.

        First a ``val_fraction`` share of each class is set aside for validation (early stopping);
        those images are never audited, since no target model trains on them. Of the rest,
        ``member_fraction`` are members (the only real images the teacher and the generator see)
        and the others non-members. When every remaining image is a member (fraction 1.0, TCKR's
        setting) the test split serves as non-members.
        """
        cfg = self.config  # (its fractions were checked when it was made)
        rng = np.random.default_rng(cfg.seed)
        members: list[str] = []
        rest: list[str] = []
        validation: list[str] = []
        train = self.split("train")
        for label in range(len(self.class_names)):
            ids = sorted(r.id for r in train if r.label == label)
            order = [ids[i] for i in rng.permutation(len(ids))]
            n_val = _share(len(ids), cfg.val_fraction)
            validation += order[:n_val]
            order = order[n_val:]
            k = _share(len(order), cfg.member_fraction)
            members += order[:k]
            rest += order[k:]
        source = "train"
        if not rest:
            rest, source = [r.id for r in self.split("test")], "test"
        return MembershipSplit(
            members=tuple(sorted(members)),
            nonmembers=tuple(sorted(rest)),
            validation=tuple(sorted(validation)),
            seed=cfg.seed,
            member_fraction=cfg.member_fraction,
            nonmember_source=source,
        )

    def summary(self) -> dict[str, Any]:
        """Counts per split and class, for `datasets inspect` and the studio."""
        counts: dict[str, dict[str, int]] = {}
        for r in self.records:
            per_class = counts.setdefault(r.split, {name: 0 for name in self.class_names})
            per_class[self.class_names[r.label]] += 1
        return {
            "name": self.name,
            "classes": list(self.class_names),
            "images": len(self.records),
            "per_split": counts,
        }


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------
SOURCES: Registry[Callable[[DatasetConfig], ImageDataset]] = Registry("dataset source")


def load_dataset(config: DatasetConfig) -> ImageDataset:
    """Load a labelled image dataset from the source named in ``config``."""
    dataset = SOURCES.get(config.source)(config)
    if not dataset.split("train"):
        raise ValueError(f"dataset {dataset.name!r} has no training images")
    _check_classes(dataset)
    _check_readable(dataset)
    logger.info("loaded %s: %d images, %d classes", dataset.name, len(dataset), len(dataset.class_names))
    return dataset


def check_members(dataset: ImageDataset, split: MembershipSplit) -> None:
    """Refuse a split that leaves a class without a member: no model the stages train would learn it (and
    the generator would get no prompt for it)."""
    have = {dataset.record(i).label for i in split.members}
    without = [name for label, name in enumerate(dataset.class_names) if label not in have]
    if not without:
        return
    cfg = dataset.config
    label = dataset.class_names.index(without[0])
    n_train = sum(r.label == label for r in dataset.split("train"))
    n_test = sum(r.label == label for r in dataset.split("test"))
    need = next((f"at least {n}" for n in range(1, 10_000)
                 if _share(n - _share(n, cfg.val_fraction), cfg.member_fraction)), "more")
    others = f" (and {len(without) - 1} more: {', '.join(without[1:6])})" if len(without) > 1 else ""
    fix = f"limit={cfg.limit} keeps too few images: raise it" if cfg.limit else "add images of the class or remove it"
    raise ValueError(f"dataset {dataset.name!r}: class {without[0]!r}{others} has no MIA member, so no model would "
                     f"learn it: {n_train} training and {n_test} test image(s), and at member_fraction "
                     f"{cfg.member_fraction} and val_fraction {cfg.val_fraction} a class needs {need} training "
                     f"images; {fix}")


def _check_readable(dataset: ImageDataset) -> None:
    """Refuse, up front, a dataset none of whose images decodes (a wrong folder, column or format); stops at
    the first image that decodes, so a healthy dataset costs one decode."""
    first: CorruptImageError | None = None
    for record in dataset.records:
        try:
            dataset.load_image(record)
            return
        except CorruptImageError as err:
            first = first or err
    raise ValueError(f"no readable image in dataset {dataset.name!r}: none of its {len(dataset)} images decodes "
                     f"(the first: {first}); check the files, or the image column of a table")


def _share(n: int, fraction: float) -> int:
    """How many of a class's ``n`` images a fraction of them is (validation, then members)."""
    return int(round(fraction * n))


def _hash_fraction(image_id: str) -> float:
    """A number in [0, 1) fixed by the id alone, so carved-out test splits never move."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) / 16**8


def _carve_test(ids_labels: list[tuple[str, int]], fraction: float) -> list[ImageRecord]:
    return [
        ImageRecord(i, label, "test" if _hash_fraction(i) < fraction else "train")
        for i, label in ids_labels
    ]


def _apply_limit(records: list[ImageRecord], limit: int | None, seed: int = 0) -> list[ImageRecord]:
    """At most ``limit`` images per split: a seeded sample stratified by class (each class keeps its
    share, rounded by largest remainder), in the source's order. Never the first N rows: sources are
    often sorted by label, and those would all be one class."""
    if limit is None:
        return records
    if limit < 1:
        raise ValueError(f"limit must be at least 1 image per split, got {limit}")
    keep: set[str] = set()
    for s, split in enumerate(("train", "test")):
        rows = [r for r in records if r.split == split]
        if len(rows) <= limit:
            keep.update(r.id for r in rows)
            continue
        by_class: dict[int, list[ImageRecord]] = {}
        for r in rows:
            by_class.setdefault(r.label, []).append(r)
        labels = sorted(by_class)
        exact = {c: limit * len(by_class[c]) / len(rows) for c in labels}
        quota = {c: int(exact[c]) for c in labels}
        for c in sorted(labels, key=lambda c: (-(exact[c] - quota[c]), c))[:limit - sum(quota.values())]:
            quota[c] += 1
        rng = np.random.default_rng([seed, s])
        for c in labels:
            members = by_class[c]
            keep.update(members[i].id for i in rng.permutation(len(members))[:quota[c]])
        logger.info("limit %d: kept a class-stratified sample of %d of %d %s images (seed %d)",
                    limit, min(limit, len(rows)), len(rows), split, seed)
    return [r for r in records if r.id in keep]


def _check_classes(dataset: ImageDataset) -> None:
    """Refuse, up front, data a classifier cannot be trained on: fewer than two classes, or a class
    without a single training image (an empty class folder, a label no row uses)."""
    if len(dataset.class_names) < 2:
        raise ValueError(f"dataset {dataset.name!r} has {len(dataset.class_names)} class(es) "
                         f"{dataset.class_names}; a classifier needs at least two")
    n = len(dataset.class_names)
    # every source's labels: the table sources refuse bad ones with file, column and row (read_labels)
    bad = next((r for r in dataset.records if isinstance(r.label, bool) or not isinstance(r.label, numbers.Integral)
                or not 0 <= r.label < n), None)
    if bad is not None:
        raise ValueError(f"{dataset.describe_location(bad)}: label {bad.label!r} is not a class number 0 to {n - 1} "
                         f"of dataset {dataset.name!r}")
    counts = {name: 0 for name in dataset.class_names}
    for r in dataset.split("train"):
        counts[dataset.class_names[r.label]] += 1
    empty = [name for name, k in counts.items() if k == 0]
    if empty:
        limit = dataset.config.limit if dataset.config is not None else None
        in_test = {dataset.class_names[r.label] for r in dataset.split("test")} & set(empty)
        why = (f"limit={limit} keeps too few images for {len(counts)} classes; raise it" if limit
               else f"the only images of {sorted(in_test)[:10]} are in the test split; add training images "
                    "or remove the class" if in_test
               else "an empty class folder?; add images or remove the class")
        shown = str(empty[:10])[:-1] + (f", ... and {len(empty) - 10:,} more]" if len(empty) > 10 else "]")
        raise ValueError(f"dataset {dataset.name!r}: class(es) {shown} have no training images ({why})")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel. 16-bit and 32-bit integer greys (``I;16``, ``I``: scans, X-rays)
    and float images (``F``) are scaled to 0-255 instead of clipped, as ``convert("RGB")`` would
    (every value above 255 turns white)."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if image.mode == "F":
        scale = 255.0 if top <= 1.0 else 255.0 / top  # [0, 1] floats, or anything else by its maximum
    else:
        scale = 1.0 if top <= 255 else 255.0 / 65535.0 if top <= 65535 else 255.0 / top
    grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _hidden(name: str) -> bool:
    """System and hidden entries that are never classes or images (``.DS_Store``, ``._x.png``, ``__MACOSX``)."""
    return name.startswith(".") or name == "__MACOSX"


def _decode_encoded(data: bytes, _: ImageRecord) -> Image.Image:
    return Image.open(io.BytesIO(data))


@SOURCES.register("digits", help="built-in: scikit-learn's 8x8 handwritten digits (1,797 images, offline)")
def _digits(config: DatasetConfig) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 intensities -> 0..255 grey, white digit on black as in the original scans
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    ids = [f"digit-{i:04d}" for i in range(len(pixels))]
    index = {image_id: i for i, image_id in enumerate(ids)}
    records = _carve_test(list(zip(ids, (int(t) for t in bunch.target))), config.test_fraction)

    def read_bytes(record: ImageRecord) -> bytes:
        return pixels[index[record.id]].tobytes()

    def decode(data: bytes, _: ImageRecord) -> Image.Image:
        return Image.frombytes("L", (8, 8), data)

    return ImageDataset(
        name="digits",
        class_names=[str(d) for d in range(10)],
        records=_apply_limit(records, config.limit, config.seed),
        read_bytes=read_bytes,
        decode=decode,
        describe_location=lambda r: f"sklearn digits #{index[r.id]}",
        config=config,
    )


@SOURCES.register("imagefolder", help="folder/<class>/<image> or folder/{train,test}/<class>/<image>")
def _imagefolder(config: DatasetConfig) -> ImageDataset:
    root = _require_path(config)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    split_dirs = {s: root / name for s, name in (("train", config.train_split), ("test", config.test_split))}
    has_splits = split_dirs["train"].is_dir()
    tops = [split_dirs["train"]] + ([split_dirs["test"]] if split_dirs["test"].is_dir() else [])
    if not has_splits:
        tops = [root]
    class_names = sorted({d.name for top in tops for d in top.iterdir() if d.is_dir() and not _hidden(d.name)})
    if not class_names:
        raise ValueError(f"no class folders in {root}: expected {root}/<class>/<image files>")
    ids_labels: list[tuple[str, int, str | None]] = []
    for split, top in (split_dirs.items() if has_splits else [(None, root)]):
        if not top.is_dir():
            continue
        for label, name in enumerate(class_names):
            for file in sorted((top / name).rglob("*")) if (top / name).is_dir() else []:
                if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS and \
                        not any(_hidden(part) for part in file.relative_to(top / name).parts):
                    ids_labels.append((file.relative_to(root).as_posix(), label, split))
    if has_splits and split_dirs["test"].is_dir():
        records = [ImageRecord(i, label, split) for i, label, split in ids_labels]
    else:
        records = _carve_test([(i, label) for i, label, _ in ids_labels], config.test_fraction)
    return ImageDataset(
        name=config.name,
        class_names=class_names,
        records=_apply_limit(records, config.limit, config.seed),
        read_bytes=lambda r: (root / r.id).read_bytes(),
        decode=_decode_encoded,
        describe_location=lambda r: str(root / r.id),
        config=config,
    )


@SOURCES.register("parquet", help="Hugging Face-style parquet files (image struct + label columns)")
def _parquet(config: DatasetConfig) -> ImageDataset:
    import pyarrow.parquet as pq

    root = _require_path(config)
    files = _parquet_files(root, config)
    tables = {split: pq.read_table(path) for split, path in files.items()}
    first = next(iter(tables.values()))
    image_col = config.image_column or _detect_image_column(first.schema.names, first.schema)
    label_col = config.label_column or _detect_label_column(first.schema.names)
    for split, table in tables.items():
        for name in (image_col, label_col):
            if name not in table.schema.names:
                raise ValueError(f"{files[split]} has no column {name!r}; columns: {table.schema.names}")
    labels, class_names = read_labels(
        {split: table.column(label_col).to_pylist() for split, table in tables.items()},
        _parquet_class_names(pq.read_schema(next(iter(files.values()))), label_col),
        lambda split, row: f"{files[split]} column {label_col!r} row {row}")
    columns: dict[str, list[Any]] = {}
    raw: list[tuple[str, int, str | None]] = []
    for split, table in tables.items():
        for row, (image, label) in enumerate(zip(table.column(image_col).to_pylist(), labels[split])):
            image_id = f"{split}/{row:06d}"
            columns[image_id] = image
            raw.append((image_id, label, split))
    return _cells_dataset(config, class_names, raw, columns,
                          lambda r: f"{files[r.id.split('/')[0]]} row {int(r.id.split('/')[1])}")


@SOURCES.register("hf", help="Hugging Face datasets: a hub id (online) or a save_to_disk folder")
def _hf(config: DatasetConfig) -> ImageDataset:
    import datasets as hf

    path = config.path
    if not path:
        raise ValueError("the 'hf' source needs a path: a hub id or a folder written by save_to_disk")
    local = Path(path)
    if local.is_dir() and any((local / f).exists() for f in ("dataset_dict.json", "dataset_info.json")):
        loaded = hf.load_from_disk(path)
    else:
        loaded = hf.load_dataset(path)
    splits = loaded if isinstance(loaded, hf.DatasetDict) else hf.DatasetDict({config.train_split: loaded})
    if config.train_split not in splits:
        raise ValueError(f"{path} has no split {config.train_split!r}; splits: {list(splits)}")
    first = splits[config.train_split]
    image_col = config.image_column or _detect_image_column(first.column_names, first.features)
    label_col = config.label_column or _detect_label_column(first.column_names)
    names = {split: name for split, name in (("train", config.train_split), ("test", config.test_split))
             if name in splits}
    # HF's ClassLabel stores a missing label as -1: refused like any negative label
    labels, class_names = read_labels(
        {split: splits[name][label_col] for split, name in names.items()},
        list(getattr(first.features[label_col], "names", None) or []) or None,
        lambda split, row: f"{path} split {names[split]!r} column {label_col!r} row {row}")
    columns: dict[str, Any] = {}
    raw: list[tuple[str, int, str | None]] = []
    for split, name in names.items():
        ds = splits[name]
        if isinstance(ds.features[image_col], hf.Image):
            ds = ds.cast_column(image_col, hf.Image(decode=False))  # decode lazily, one at a time
        for row, (image, label) in enumerate(zip(ds[image_col], labels[split])):
            image_id = f"{split}/{row:06d}"
            columns[image_id] = image
            raw.append((image_id, label, split if config.test_split in splits else None))
    return _cells_dataset(config, class_names, raw, columns, lambda r: f"{path} {r.id}")


# -- source helpers --------------------------------------------------------------------------------


def _cells_dataset(config: DatasetConfig, class_names: list[str], raw: list[tuple[str, int, str | None]],
                   cells: dict[str, Any], describe: Callable[[ImageRecord], str]) -> ImageDataset:
    """A dataset of table rows: ``raw`` (id, label, split or None) with each id's image cell in ``cells``."""
    return ImageDataset(
        name=config.name,
        class_names=class_names,
        records=_apply_limit(_split_records(raw, config), config.limit, config.seed),
        read_bytes=lambda r: _image_cell_bytes(cells[r.id], r),
        decode=_decode_encoded,
        describe_location=describe,
        config=config,
    )


def _require_path(config: DatasetConfig) -> Path:
    if not config.path:
        raise ValueError(f"the {config.source!r} source needs a path")
    return Path(config.path).expanduser()


def _split_records(raw: list[tuple[str, int, str | None]], config: DatasetConfig) -> list[ImageRecord]:
    if any(split == "test" for _, _, split in raw):
        return [ImageRecord(i, label, split or "train") for i, label, split in raw]
    return _carve_test([(i, label) for i, label, _ in raw], config.test_fraction)


def _parquet_files(root: Path, config: DatasetConfig) -> dict[str, Path]:
    if root.is_file():
        return {"train": root}
    if not root.is_dir():
        raise FileNotFoundError(f"parquet path {root} does not exist")
    files: dict[str, Path] = {}
    for split, name in (("train", config.train_split), ("test", config.test_split)):
        found = sorted(root.glob(f"{name}.parquet")) or sorted(root.glob(f"{name}-*.parquet"))
        if len(found) > 1:
            raise ValueError(f"several parquet files for split {name!r} in {root}: merge them first")
        if found:
            files[split] = found[0]
    if "train" not in files:
        raise FileNotFoundError(f"no {config.train_split}.parquet in {root}")
    return files


def _parquet_class_names(schema: Any, label_col: str) -> list[str] | None:
    """The class names a parquet file's metadata gives (``classes`` or Hugging Face features); None if none."""
    meta = schema.metadata or {}
    if b"classes" in meta:
        text = meta[b"classes"].decode()
        try:
            import json

            names = json.loads(text)
        except ValueError:
            names = [n.strip() for n in text.split(",")]
        return [str(n) for n in names]
    if b"huggingface" in meta:
        import json

        features = json.loads(meta[b"huggingface"]).get("info", {}).get("features", {})
        names = features.get(label_col, {}).get("names")
        if names:
            return list(names)
    return None


def read_labels(columns: dict[str, list[Any]], class_names: list[str] | None,
                where: Callable[[str, int], str]) -> tuple[dict[str, list[int]], list[str]]:
    """The label column of each split as class indices, and the class names; a bad label is refused in
    one line that names where it is (``where(split, row)``: file, column and row) and its value.

    With ``class_names`` (from the source), a label is a class index below their number or one of the
    names. Without, the classes come from the labels: whole numbers 0..max (below the number of rows and
    :data:`MAX_CLASSES`, checked before any per-class list exists), or the sorted distinct strings.
    """
    cells = [(split, row, value) for split, values in columns.items() for row, value in enumerate(values)]
    if class_names is None and cells and all(isinstance(v, str) for _, _, v in cells):
        class_names = sorted({v for _, _, v in cells})
    by_name = {name: i for i, name in enumerate(class_names or [])}
    ceiling = len(class_names) if class_names is not None else min(len(cells), MAX_CLASSES)
    out: dict[str, list[int]] = {split: [] for split in columns}
    for split, row, value in cells:
        try:
            out[split].append(_label_index(value, by_name, ceiling, len(cells)))
        except ValueError as err:
            raise ValueError(f"{where(split, row)}: {err}") from None
    if class_names is None:
        class_names = [str(i) for i in range(max((i for ids in out.values() for i in ids), default=0) + 1)]
    return out, class_names


def _label_index(value: Any, by_name: dict[str, int], ceiling: int, rows: int) -> int:
    """One label as a class index (see :func:`read_labels`); a ValueError says what is wrong with it."""
    named = bool(by_name)
    if isinstance(value, str):
        if value in by_name:
            return by_name[value]
        known = ", ".join(list(by_name)[:10]) + (f" and {len(by_name) - 10:,} more" if len(by_name) > 10 else "")
        raise ValueError(f"label {value!r} is not a class name" +
                         (f"; the classes are {known}" if by_name else "; the file names no classes, so "
                          "labels must be class numbers 0, 1, ... (or every label a class name)"))
    if value is None or isinstance(value, float) and value != value:
        raise ValueError("the label is missing (null); give every image a class or drop the row")
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)) or \
            isinstance(value, float) and not value.is_integer():
        raise ValueError(f"label {value!r} is not a class number (a whole number from 0) or a class name")
    label = int(value)
    if label < 0:
        raise ValueError(f"label {label} is negative; labels are class numbers from 0"
                         + (f" to {ceiling - 1}" if named else ""))
    if label >= ceiling:
        if named:
            raise ValueError(f"label {label} is beyond the {ceiling} class names (0 to {ceiling - 1})")
        raise ValueError(f"label {label} is too large: without class names in the file the classes are "
                         f"numbered 0..max label, so a label must be below the number of rows ({rows:,}) and "
                         f"below {MAX_CLASSES:,} classes; fix the label or name the classes in the file")
    return label


def _detect_image_column(names: Sequence[str], schema_or_features: Any) -> str:
    for candidate in ("image", "img", "picture", "pixel_values"):
        if candidate in names:
            return candidate
    raise ValueError(f"cannot tell the image column among {list(names)}; pass image_column")


def _detect_label_column(names: Sequence[str]) -> str:
    for candidate in ("label", "labels", "fine_label", "class", "target"):
        if candidate in names:
            return candidate
    raise ValueError(f"cannot tell the label column among {list(names)}; pass label_column")


def _image_cell_bytes(cell: Any, record: ImageRecord) -> bytes:
    """Bytes of one HF-style image cell: a {'bytes', 'path'} struct, raw bytes or a file path."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            return Path(cell["path"]).read_bytes()
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, str):
        return Path(cell).read_bytes()
    raise OSError(f"image cell of {record.id} holds no bytes or path")


def parse_dataset_spec(spec: str, **overrides: Any) -> DatasetConfig:
    """'digits', 'imagefolder:/data/x', 'parquet:../cifar10', 'hf:user/name' -> DatasetConfig."""
    source, _, path = spec.partition(":")
    if source not in SOURCES:
        raise ValueError(f"unknown dataset source {source!r}; valid: {', '.join(SOURCES.names())}")
    return DatasetConfig(source=source, path=path or None, **overrides)
