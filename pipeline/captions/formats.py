"""Import and export caption files: JSONL, CSV and TCKR prompt files (``{class: [captions]}``)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.common import atomic_write_text
from ..core.registry import Registry
from ..data.datasets import ImageDataset
from .store import CaptionRecord, CaptionStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportReport:
    """What an import did."""

    version: int  # the store version written
    imported: int  # records written
    unused: int  # rows / captions that matched no image (TCKR pools larger than the class)


Reader = Callable[[Path, ImageDataset], tuple[list[tuple[str, str]], int]]
Writer = Callable[[dict[str, CaptionRecord], list[str]], str]
READERS: Registry[Reader] = Registry("caption import format")
WRITERS: Registry[Writer] = Registry("caption export format")


def import_captions(store: CaptionStore, path: Path, fmt: str, dataset: ImageDataset,
                    base_version: int | None = None) -> ImportReport:
    """Read a caption file into a new store version; every id and label is checked first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} does not exist")
    reader = READERS.get(fmt)
    pairs, unused = reader(path, dataset)
    if not pairs:
        raise ValueError(f"{path} holds no captions for dataset {dataset.name!r}")
    store.bind(dataset.name, dataset.fingerprint, dataset.class_names)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    source = {"captioner": "import", "model": None, "params": {"file": path.name, "format": fmt}}
    records = [CaptionRecord(i, dataset.class_name(dataset.record(i).label), text.strip(), source, stamp)
               for i, text in pairs]
    version = store.save(records, base_version=base_version, message=f"import {path.name} ({fmt})")
    return ImportReport(version, len(records), unused)


def export_captions(store: CaptionStore, path: Path, fmt: str, version: int | None = None) -> int:
    """Write the captions of ``version`` (default head) to ``path``; returns the number written."""
    writer = WRITERS.get(fmt)
    records = store.records(version)
    classes = store.meta().get("classes") or sorted({r.label for r in records.values()})
    atomic_write_text(Path(path), writer(records, classes))
    return len(records)


# -- formats ----------------------------------------------------------------------------------------
def _check_row(dataset: ImageDataset, image_id: str, label: str | None, where: str) -> None:
    try:
        record = dataset.record(image_id)
    except KeyError:
        raise ValueError(f"{where}: image id {image_id!r} is not in dataset {dataset.name!r}") from None
    if label not in (None, "") and label != dataset.class_name(record.label):
        raise ValueError(f"{where}: image {image_id!r} is labelled {label!r} in the file but "
                         f"{dataset.class_name(record.label)!r} in the dataset; labels are never changed")


@READERS.register("jsonl", help="one JSON object a line: {id, caption, label?}")
def _read_jsonl(path: Path, dataset: ImageDataset) -> tuple[list[tuple[str, str]], int]:
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image_id, text = str(row["id"]), str(row["caption"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: expected {{\"id\", \"caption\"}}: {err}") from None
        _check_row(dataset, image_id, row.get("label"), f"{path}:{n}")
        pairs.append((image_id, text))
    return pairs, 0


@READERS.register("csv", help="CSV with a header: id,caption[,label]")
def _read_csv(path: Path, dataset: ImageDataset) -> tuple[list[tuple[str, str]], int]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"id", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: the header needs columns id and caption (missing {sorted(missing)})")
        pairs = []
        for n, row in enumerate(reader, 2):
            _check_row(dataset, row["id"], row.get("label"), f"{path}:{n}")
            pairs.append((row["id"], row["caption"]))
    return pairs, 0


@READERS.register("tckr-json", help="TCKR prompt file {class: [captions]}, assigned in id order per class")
def _read_tckr(path: Path, dataset: ImageDataset) -> tuple[list[tuple[str, str]], int]:
    pools = read_prompt_pool(path)
    unknown = sorted(set(pools) - set(dataset.class_names))
    if unknown:
        raise ValueError(f"{path}: classes {unknown} are not in dataset {dataset.name!r} "
                         f"(classes: {', '.join(dataset.class_names)})")
    # The file is a per-class pool, not per-image captions (its order need not match the images):
    # the k-th caption of a class goes to the k-th training image of that class in id order.
    pairs, unused = [], 0
    for label, name in enumerate(dataset.class_names):
        images = sorted(r.id for r in dataset.split("train") if r.label == label)
        pool = pools.get(name, [])
        pairs += list(zip(images, pool))
        unused += max(0, len(pool) - len(images))
        if len(pool) < len(images):
            logger.warning("class %s: %d captions for %d images; %d images keep their caption",
                           name, len(pool), len(images), len(images) - len(pool))
    return pairs, unused


def read_prompt_pool(path: Path) -> dict[str, list[str]]:
    """Read a TCKR prompt file ``{class_name: [caption, ...]}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(c, str) for c in v) for v in data.values()
    ):
        raise ValueError(f"{path}: a TCKR prompt file is a JSON object {{class: [caption, ...]}}")
    return {str(k): list(v) for k, v in data.items()}


@WRITERS.register("jsonl", help="one JSON object a line with id, label, caption, source, timestamp")
def _write_jsonl(records: dict[str, CaptionRecord], classes: list[str]) -> str:
    return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for _, r in sorted(records.items()))


@WRITERS.register("csv", help="CSV: id,label,caption,captioner")
def _write_csv(records: dict[str, CaptionRecord], classes: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "label", "caption", "captioner"])
    for _, r in sorted(records.items()):
        writer.writerow([r.id, r.label, r.caption, r.source.get("captioner", "")])
    return out.getvalue()


@WRITERS.register("tckr-json", help="TCKR prompt file {class: [captions]} (id order within a class)")
def _write_tckr(records: dict[str, CaptionRecord], classes: list[str]) -> str:
    pools: dict[str, list[str]] = {c: [] for c in classes}
    for _, r in sorted(records.items()):
        pools.setdefault(r.label, []).append(r.caption)
    return json.dumps(pools, ensure_ascii=False, indent=1) + "\n"


def formats() -> dict[str, Any]:
    return {"import": READERS.describe(), "export": WRITERS.describe()}
