"""Data layer: every source, stable ids, lazy decoding, corrupt files, membership split."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED, write_image_folder
from PIL import Image

from pipeline.core.registry import UnknownNameError
from pipeline.data.datasets import (
    CorruptImageError,
    DatasetConfig,
    load_dataset,
    parse_dataset_spec,
)


def test_digits_builtin_has_stable_ids_splits_and_fingerprint():
    a = load_dataset(DatasetConfig())
    b = load_dataset(DatasetConfig(seed=5))
    assert a.class_names == [str(d) for d in range(10)]
    assert len(a) == 1797
    assert [r.id for r in a.records] == [r.id for r in b.records]
    assert [r.split for r in a.records] == [r.split for r in b.records]  # test carve-out ignores seed
    assert 0.15 < len(a.split("test")) / len(a) < 0.25
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    image = a.load_image(a.records[0])
    assert image.size == (8, 8) and image.mode == "RGB"


def test_membership_split_is_seeded_disjoint_and_class_balanced():
    dataset = load_dataset(DatasetConfig(member_fraction=0.5, seed=3))
    split = dataset.membership()
    assert split == dataset.membership()  # same seed -> same split
    members, nonmembers, val = set(split.members), set(split.nonmembers), set(split.validation)
    assert members.isdisjoint(nonmembers) and val.isdisjoint(members | nonmembers)
    assert members | nonmembers | val == {r.id for r in dataset.split("train")}
    for label in range(10):
        ids = [r.id for r in dataset.split("train") if r.label == label]
        assert abs(len(set(ids) & val) / len(ids) - 0.1) < 0.01
        share = len(set(ids) & members) / len(set(ids) - val)
        assert abs(share - 0.5) < 0.01
    other = load_dataset(DatasetConfig(member_fraction=0.5, seed=4)).membership()
    assert other.members != split.members
    full = load_dataset(DatasetConfig(member_fraction=1.0)).membership()
    assert full.nonmember_source == "test"
    assert set(full.nonmembers) == {r.id for r in dataset.split("test")}


def test_imagefolder_without_splits_carves_test(image_folder: Path):
    dataset = load_dataset(DatasetConfig(source="imagefolder", path=str(image_folder)))
    assert dataset.class_names == ["cat", "dog"]
    assert len(dataset) == 12
    assert dataset.record("dog/003.png").label == 1
    assert np.asarray(dataset.load_image("cat/000.png")).mean() < 100


def test_imagefolder_with_train_test_splits(tmp_path: Path):
    root = write_image_folder(tmp_path / "split", splits=True, per_class=3)
    dataset = load_dataset(DatasetConfig(source="imagefolder", path=str(root)))
    assert len(dataset.split("train")) == 6 and len(dataset.split("test")) == 6
    assert dataset.record("test/dog/001.png").split == "test"


def test_corrupt_image_is_reported_with_path_and_skipped(image_folder: Path, caplog):
    (image_folder / "cat" / "001.png").write_bytes(b"not a png at all")
    dataset = load_dataset(DatasetConfig(source="imagefolder", path=str(image_folder)))
    with pytest.raises(CorruptImageError, match=r"cat/001\.png"):
        dataset.load_image("cat/001.png")
    seen = {record.id: record.label for record, _ in dataset.iter_images()}
    assert "cat/001.png" not in seen and len(seen) == 11
    assert "cat/001.png" in dataset.skipped and str(image_folder) in dataset.skipped["cat/001.png"]
    # no other image changed label
    assert all(label == (0 if i.startswith("cat/") else 1) for i, label in seen.items())
    assert "cat/001.png" in caplog.text


def test_fingerprint_changes_with_content(image_folder: Path):
    before = load_dataset(DatasetConfig(source="imagefolder", path=str(image_folder))).fingerprint
    Image.new("RGB", (8, 8), "white").save(image_folder / "dog" / "000.png")
    after = load_dataset(DatasetConfig(source="imagefolder", path=str(image_folder))).fingerprint
    assert before != after


def _write_parquet(path: Path, n: int, classes: list[str]) -> None:
    rng = np.random.default_rng(1)
    cells, labels = [], []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
        labels.append(i % len(classes))
    table = pa.table({"img": cells, "label": labels})
    table = table.replace_schema_metadata({"classes": ",".join(classes)})
    pq.write_table(table, path)


def test_parquet_folder_with_train_and_test(tmp_path: Path):
    _write_parquet(tmp_path / "train.parquet", 10, ["a", "b"])
    _write_parquet(tmp_path / "test.parquet", 4, ["a", "b"])
    dataset = load_dataset(parse_dataset_spec(f"parquet:{tmp_path}"))
    assert dataset.class_names == ["a", "b"]
    assert len(dataset.split("train")) == 10 and len(dataset.split("test")) == 4
    assert dataset.record("train/000003").label == 1
    assert dataset.load_image("test/000001").size == (8, 8)


def test_parquet_wrong_column_names_a_clear_error(tmp_path: Path):
    _write_parquet(tmp_path / "train.parquet", 4, ["a", "b"])
    with pytest.raises(ValueError, match="no column 'picture'"):
        load_dataset(DatasetConfig(source="parquet", path=str(tmp_path), image_column="picture"))


@pytest.mark.skipif(not (SHARED / "cifar10" / "train.parquet").exists(), reason="../shared is absent")
def test_shared_cifar10_parquet():
    dataset = load_dataset(DatasetConfig(source="parquet", path=str(SHARED / "cifar10")))
    assert dataset.class_names[:3] == ["airplane", "automobile", "bird"]
    assert len(dataset.split("train")) == 50_000 and len(dataset.split("test")) == 10_000
    assert dataset.load_image(dataset.records[0]).size == (32, 32)


def test_hf_save_to_disk_folder(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(6)]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["red", "dark"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(6)]}, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "hf"))
    dataset = load_dataset(DatasetConfig(source="hf", path=str(tmp_path / "hf")))
    assert dataset.class_names == ["red", "dark"]
    assert len(dataset.split("train")) == 6 and len(dataset.split("test")) == 2
    assert dataset.load_image("train/000005").getpixel((0, 0)) == (100, 0, 0)


def test_unknown_source_lists_valid_names():
    with pytest.raises(UnknownNameError, match="digits.*hf.*imagefolder.*parquet"):
        load_dataset(DatasetConfig(source="nope"))
    with pytest.raises(ValueError, match="valid: digits"):
        parse_dataset_spec("nope:/x")


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(DatasetConfig(source="imagefolder", path=str(tmp_path / "missing")))
    shutil.rmtree(tmp_path)


def test_limit_is_a_seeded_class_stratified_sample(tmp_path):
    from conftest import write_image_folder

    # label-sorted rows: the first 12 training images are all "a"
    root = write_image_folder(tmp_path / "sorted", classes=("a", "b", "c"), per_class=12, splits=True)
    full = load_dataset(DatasetConfig(source="imagefolder", path=str(root)))
    limited = load_dataset(DatasetConfig(source="imagefolder", path=str(root), limit=9))
    counts = [sum(r.label == c for r in limited.split("train")) for c in range(3)]
    assert counts == [3, 3, 3] and len(limited.split("test")) == 9
    again = load_dataset(DatasetConfig(source="imagefolder", path=str(root), limit=9))
    assert [r.id for r in again.records] == [r.id for r in limited.records]  # seeded
    other = load_dataset(DatasetConfig(source="imagefolder", path=str(root), limit=9, seed=1))
    assert [r.id for r in other.records] != [r.id for r in limited.records]
    assert set(r.id for r in limited.records) <= set(r.id for r in full.records)
    # unequal classes keep their shares (largest remainder)
    digits = load_dataset(DatasetConfig(limit=100))
    train = digits.split("train")
    assert len(train) == 100 and len({r.label for r in train}) == 10
    with pytest.raises(ValueError, match="limit must be at least 1"):
        load_dataset(DatasetConfig(limit=0))
    with pytest.raises(ValueError, match="limit=5 keeps too few images for 10 classes"):
        load_dataset(DatasetConfig(limit=5))


def test_hidden_and_system_folders_are_never_classes(tmp_path):
    from conftest import write_image_folder
    from PIL import Image

    root = write_image_folder(tmp_path / "mac", classes=("cat", "dog"), per_class=3)
    for junk in ("__MACOSX/cat", ".thumbnails", "cat/.hidden"):
        (root / junk).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / junk / "x.png")
    Image.new("RGB", (8, 8)).save(root / "dog" / "._dog.png")
    dataset = load_dataset(DatasetConfig(source="imagefolder", path=str(root), test_fraction=0.0))
    assert dataset.class_names == ["cat", "dog"] and len(dataset) == 6


def test_an_empty_class_or_a_single_class_is_refused_up_front(tmp_path):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "empty", classes=("cat", "dog"), per_class=3)
    (root / "fish").mkdir()
    with pytest.raises(ValueError, match=r"class\(es\) \['fish'\] have no training images"):
        load_dataset(DatasetConfig(source="imagefolder", path=str(root)))
    one = write_image_folder(tmp_path / "one", classes=("cat",), per_class=3)
    with pytest.raises(ValueError, match="needs at least two"):
        load_dataset(DatasetConfig(source="imagefolder", path=str(one)))
