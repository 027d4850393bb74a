"""Issue 23 item 6: labels are checked when a dataset opens. A null, negative, fractional, unknown-name or
out-of-range label is refused in one line naming the file, the column, the row and the value (never counted
as the last class, never a TypeError or "invalid literal for int()" later); a label of 10^12 is refused
before any per-class list is built; string labels are class names."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli.main import main
from pipeline.data.datasets import (
    MAX_CLASSES,
    SOURCES,
    DatasetConfig,
    ImageDataset,
    ImageRecord,
    load_dataset,
)

GOOD = [0, 1] * 5  # rows 0..9; the bad label goes in row 10


def _parquet(folder: Path, labels: list, classes: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cells = []
    for i in range(len(labels)):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    table = pa.table({"img": cells, "label": labels})
    if classes:
        table = table.replace_schema_metadata({"classes": ",".join(classes)})
    pq.write_table(table, folder / "train.parquet")
    return folder


@pytest.mark.parametrize("good,bad,classes,expected", [
    (GOOD, None, None, "the label is missing (null)"),
    (GOOD, -1, None, "label -1 is negative"),
    (GOOD, -1, ["cat", "dog"], "label -1 is negative; labels are class numbers from 0 to 1"),
    ([float(v) for v in GOOD], 1.5, None, "label 1.5 is not a class number"),
    (GOOD, 2, ["cat", "dog"], "label 2 is beyond the 2 class names"),
    (["cat", "dog"] * 5, "bird", ["cat", "dog"], "label 'bird' is not a class name; the classes are cat, dog"),
    (GOOD, 100_000, None, "label 100000 is too large"),
    (GOOD, 10**12, None, f"below {MAX_CLASSES:,} classes"),
], ids=["null", "negative", "negative-named", "fraction", "beyond-names", "unknown-name", "1e5", "1e12"])
def test_a_bad_label_is_one_line_naming_file_column_row_and_value(tmp_path, good, bad, classes, expected):
    folder = _parquet(tmp_path / "data", good + [bad], classes)
    with pytest.raises(ValueError) as caught:
        load_dataset(DatasetConfig(source="parquet", path=str(folder)))
    message = str(caught.value)
    assert message.startswith(f"{folder / 'train.parquet'} column 'label' row 10: ") and expected in message
    assert "\n" not in message and len(message) < 400, message


def test_datasets_inspect_refuses_a_negative_label_instead_of_counting_it_as_the_last_class(tmp_path, capsys):
    folder = _parquet(tmp_path / "data", GOOD + [-1], ["cat", "dog"])
    assert main(["datasets", "inspect", "--dataset", f"parquet:{folder}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 10: label -1 is negative" in err, err


def test_string_labels_are_class_names(tmp_path):
    named = _parquet(tmp_path / "named", ["dog", "cat"] * 5, ["cat", "dog"])
    assert [r.label for r in load_dataset(DatasetConfig(source="parquet", path=str(named))).records][:2] == [1, 0]
    unnamed = _parquet(tmp_path / "unnamed", ["dog", "cat"] * 5)  # no class names in the file: the labels are
    dataset = load_dataset(DatasetConfig(source="parquet", path=str(unnamed)))
    assert dataset.class_names == ["cat", "dog"] and dataset.records[0].label == 1


def test_hf_missing_class_label_is_refused_with_split_column_and_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "dark"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1, -1, 1]}, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"hf split 'train' column 'label' row 4: label -1 is negative"):
        load_dataset(DatasetConfig(source="hf", path=str(tmp_path / "hf")))


def test_any_source_with_a_label_outside_its_classes_is_refused_naming_the_image(monkeypatch):
    def source(config: DatasetConfig) -> ImageDataset:
        records = [ImageRecord(f"img-{i}", label, "train") for i, label in enumerate([0, 1, 0, -1])]
        return ImageDataset("odd", ["cat", "dog"], records, lambda r: b"", lambda data, r: Image.new("RGB", (8, 8)),
                            lambda r: f"odd store {r.id}", DatasetConfig(source="odd"))

    monkeypatch.setitem(SOURCES._entries, "odd", source)
    with pytest.raises(ValueError, match=r"^odd store img-3: label -1 is not a class number 0 to 1"):
        load_dataset(DatasetConfig(source="odd"))
