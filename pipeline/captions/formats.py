"""Import and export caption files: JSONL, CSV, TCKR prompt files (``{class: [captions]}``) and TCKR's
per-image fine-tuning captions (``class: caption`` lines in the dataset's order).

A file is checked whole before anything is written: an error names the file and the line; an empty
caption is skipped and reported (its image keeps the caption it has)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.common import atomic_write_text
from ..core.registry import Registry
from ..data.datasets import ImageDataset, ImageRecord, load_dataset
from .store import MAX_CAPTION_CHARS, CaptionRecord, CaptionStore, check_caption

logger = logging.getLogger(__name__)

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Formats whose captions are grouped by class, not tied to images
POOL_FORMATS = ("tckr-json",)


@dataclass(frozen=True)
class ImportReport:
    """What an import did."""

    version: int  # the store version written
    imported: int  # records written
    unused: int  # rows / captions that matched no image (TCKR pools larger than the class, --limit)
    skipped: tuple[str, ...] = ()  # "file:line: why" of rows left out (empty captions)


@dataclass
class Rows:
    """What a reader found: (image id, caption) pairs, and what it did not use."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    unused: int = 0  # captions for images the dataset (as loaded) does not have
    skipped: list[str] = field(default_factory=list)  # "file:line: why" of rows left out


Reader = Callable[[Path, ImageDataset], Rows]
Writer = Callable[[dict[str, CaptionRecord], list[str]], str]
READERS: Registry[Reader] = Registry("caption import format")
WRITERS: Registry[Writer] = Registry("caption export format")


def import_captions(store: CaptionStore, path: Path, fmt: str, dataset: ImageDataset,
                    base_version: int | None = None, assign_in_order: bool = False) -> ImportReport:
    """Read a caption file into a new store version; every id, label and caption is checked first.

    ``assign_in_order``: a per-class prompt pool (``tckr-json``) has no image ids, so it is refused
    unless this is set; then the k-th caption of a class is stored for the k-th training image of that
    class in id order (it describes some image of the class, not that one).
    """
    # 1. check inputs
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} does not exist")
    reader = READERS.get(fmt)
    if fmt in POOL_FORMATS and not assign_in_order:
        raise ValueError(f"{path} is a per-class prompt pool: its captions are not tied to images, so importing "
                         "it pairs them with arbitrary images of their class. Use it as a prompt pool "
                         "(generate --prompts FILE), or pass --assign-in-order to store the k-th caption of a "
                         "class for its k-th training image anyway")
    # 2. read and check every row
    rows = reader(path, dataset)
    if not rows.pairs:
        empty = f" ({len(rows.skipped)} empty captions skipped)" if rows.skipped else ""
        raise ValueError(f"{path} holds no captions for dataset {dataset.name!r}{empty}")
    # 3. one new version
    store.bind(dataset.name, dataset.fingerprint, dataset.class_names)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    source = {"captioner": "import", "model": None, "params": {"file": path.name, "format": fmt}}
    records = [CaptionRecord(i, dataset.class_name(dataset.record(i).label), text.strip(), source, stamp)
               for i, text in rows.pairs]
    version = store.save(records, base_version=base_version, message=f"import {path.name} ({fmt})")
    return ImportReport(version, len(records), rows.unused, tuple(rows.skipped))


def export_captions(store: CaptionStore, path: Path, fmt: str, version: int | None = None) -> int:
    """Write the captions of ``version`` (default head) to ``path``; returns the number written."""
    writer = WRITERS.get(fmt)
    records = store.records(version)
    for record in records.values():  # a caption saved before the limit: never a file import refuses
        check_caption(record.id, record.caption, f"caption store {store.name!r} version {version or store.head()}: ")
    classes = store.meta().get("classes") or sorted({r.label for r in records.values()})
    atomic_write_text(Path(path), writer(records, classes))
    return len(records)


def read_text_file(path: Path) -> str:
    """A text file as UTF-8; a byte-order mark (Excel's "CSV UTF-8") is dropped. Other encodings are
    refused, naming the line, rather than guessed."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8 "
                         "(Excel: CSV UTF-8)") from None


def split_labelled_line(line: str, class_names: Sequence[str]) -> tuple[str, str] | None:
    """``class<TAB>caption`` or TCKR's ``class: caption`` -> (class, caption), or None without a
    separator. A known class name is matched first, so a colon inside a class name or a caption does
    not move the split."""
    line = line.strip()
    for name in sorted(class_names, key=len, reverse=True):
        if line.startswith(name) and line[len(name):len(name) + 1] in ("\t", ":"):
            return name, line[len(name) + 1:].strip()
    for sep in ("\t", ":"):
        if sep in line:
            label, _, caption = line.partition(sep)
            return label.strip(), caption.strip()
    return None


# -- formats ----------------------------------------------------------------------------------------
def _check_row(dataset: ImageDataset, image_id: str, label: str | None, where: str) -> None:
    try:
        record = dataset.record(image_id)
    except KeyError:
        raise ValueError(f"{where}: image id {image_id!r} is not in dataset {dataset.name!r}") from None
    if label not in (None, "") and label != dataset.class_name(record.label):
        raise ValueError(f"{where}: image {image_id!r} is labelled {label!r} in the file but "
                         f"{dataset.class_name(record.label)!r} in the dataset; labels are never changed")


class _RowChecker:
    """Checks the rows of a per-image file as they are read: a known id and label, each id once, a
    caption that is text of a sane length. Empty captions are skipped and reported."""

    def __init__(self, path: Path, dataset: ImageDataset) -> None:
        self.path, self.dataset, self.rows = path, dataset, Rows()
        self.seen: dict[str, int] = {}  # image id -> line it was first on

    def add(self, line: int, image_id: str, caption: Any, label: Any = None) -> None:
        where = f"{self.path}:{line}"
        if image_id in self.seen:
            # Refused rather than last-wins: one of two captions would be dropped silently, and which one
            # the user meant is unknown (usually two exports pasted together).
            raise ValueError(f"{where}: image id {image_id!r} is also on line {self.seen[image_id]}; "
                             "keep one caption per image")
        self.seen[image_id] = line
        _check_row(self.dataset, image_id, None if label is None else str(label), where)
        if caption is not None and not isinstance(caption, str):
            raise ValueError(f"{where}: the caption must be text, got {type(caption).__name__} {caption!r}")
        if caption is None or not caption.strip():
            # a captioner that said nothing, a blank cell: skipped, so the image keeps the caption it
            # has instead of getting "" (or "None")
            self.rows.skipped.append(f"{where}: empty caption for {image_id!r}, skipped")
            return
        if len(caption) > MAX_CAPTION_CHARS:
            raise ValueError(f"{where}: the caption of {image_id!r} is {len(caption):,} characters; captions are "
                             f"limited to {MAX_CAPTION_CHARS:,} characters (is a double quote left open?)")
        self.rows.pairs.append((image_id, caption))


def _lines(path: Path) -> list[str]:
    """The lines of a text file; only \\n (and \\r\\n) end a line, as in JSONL (``splitlines`` would
    also split at U+2028, which a JSON string may hold unescaped)."""
    lines = [line.removesuffix("\r") for line in read_text_file(path).split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


@READERS.register("jsonl", help="one JSON object a line: {id, caption, label?}")
def _read_jsonl(path: Path, dataset: ImageDataset) -> Rows:
    checker = _RowChecker(path, dataset)
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err})") from None
        if not isinstance(row, dict) or row.get("id") is None or "caption" not in row:
            raise ValueError(f"{path}:{n}: expected an object with \"id\" and \"caption\"")
        checker.add(n, str(row["id"]), row["caption"], row.get("label"))
    return checker.rows


@READERS.register("csv", help="CSV with a header: id,caption[,label]")
def _read_csv(path: Path, dataset: ImageDataset) -> Rows:
    reader = csv.reader(io.StringIO(read_text_file(path), newline=""))
    checker, start = _RowChecker(path, dataset), 1
    try:
        header = [name.strip() for name in next(reader, [])]
        missing = sorted({"id", "caption"} - set(header))
        if missing:
            raise ValueError(f"{path}:1: the header needs columns id and caption (missing {missing}, found {header})")
        column = {name: header.index(name) for name in ("id", "caption", "label") if name in header}
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                break
            if not "".join(row).strip():
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{start}: {len(row)} fields, the header has {len(header)} (a caption "
                                 "with commas or line breaks must be in double quotes)")
            cells = [_unescape_cell(cell) for cell in row]
            checker.add(start, cells[column["id"]], cells[column["caption"]],
                        cells[column["label"]] if "label" in column else None)
    except csv.Error as err:
        why = (f"a field is longer than {csv.field_size_limit():,} characters; captions are limited to "
               f"{MAX_CAPTION_CHARS:,} characters (is a double quote left open?)"
               if "field larger than field limit" in str(err) else f"not valid CSV ({err})")
        raise ValueError(f"{path}:{start}: {why}") from None
    return checker.rows


@READERS.register("tckr-json", help="TCKR prompt file {class: [captions]}: a per-class pool, not per-image "
                                    "captions (needs --assign-in-order)")
def _read_tckr(path: Path, dataset: ImageDataset) -> Rows:
    pools, skipped = _pool_entries(path)
    unknown = sorted(set(pools) - set(dataset.class_names))
    if unknown:
        raise ValueError(f"{path}: classes {unknown} are not in dataset {dataset.name!r} "
                         f"(classes: {', '.join(dataset.class_names)})")
    # The file is a per-class pool, not per-image captions (its order need not match the images):
    # the k-th caption of a class goes to the k-th training image of that class in id order.
    logger.warning("%s: per-class captions stored for images in id order; each describes some image of "
                   "its class, not the one it is stored for", path)
    rows = Rows(skipped=skipped)
    for label, name in enumerate(dataset.class_names):
        images = sorted(r.id for r in dataset.split("train") if r.label == label)
        pool = pools.get(name, [])
        rows.pairs += list(zip(images, pool))
        rows.unused += max(0, len(pool) - len(images))
        if len(pool) < len(images):
            logger.warning("class %s: %d captions for %d images; %d images keep their caption",
                           name, len(pool), len(images), len(images) - len(pool))
    return rows


@READERS.register("tckr-txt", help="TCKR original_order/*_finetuning.txt: a 'class: caption' line per "
                                   "training image, in the source's order")
def _read_tckr_txt(path: Path, dataset: ImageDataset) -> Rows:
    """TCKR's per-image fine-tuning captions (``prompts/original_order/<dataset>_blip2_finetuning.txt``
    in their reference code): line k is ``<class>: <caption>`` of the k-th image of the training split,
    in the order the source lists it (TCKR: the Hugging Face train split; here parquet / HF row order,
    image folders by class then file name, digits in scikit-learn's order).

    Assumed, as in their files: one file per dataset covering its whole training split, before
    ``--limit`` drops images (lines of dropped images count as unused). Every line's class must be
    its image's: a file made on a differently ordered copy is refused at its first misplaced line
    instead of pairing captions with the wrong images.
    """
    lines = _lines(path)
    order = _source_order(dataset, len(lines), path)
    present = {r.id for r in dataset.records}
    checker = _RowChecker(path, dataset)
    for n, (record, line) in enumerate(zip(order, lines), 1):
        name = dataset.class_name(record.label)
        parsed = split_labelled_line(line, [name])
        if parsed is None:
            raise ValueError(f"{path}:{n}: expected 'class: caption'")
        if parsed[0] != name:
            raise ValueError(f"{path}:{n}: the line is of class {parsed[0]!r} but training image {n} ({record.id}) "
                             f"is {name!r}: the file is not in this dataset's image order (use it as a prompt "
                             "pool: generate --prompts FILE)")
        if record.id in present:
            checker.add(n, record.id, parsed[1])
        else:
            checker.rows.unused += 1
    return checker.rows


def _source_order(dataset: ImageDataset, n_lines: int, path: Path) -> list[ImageRecord]:
    """The training images in the source's order, before ``--limit``: those of the training split, or
    all images when the file covers the test share carved from a source without a test split too."""
    full = dataset if dataset.config.limit is None else load_dataset(replace(dataset.config, limit=None))
    train = [r for r in full.records if r.split == "train"]
    if n_lines == len(train):
        return train
    if n_lines == len(full.records):
        return full.records
    raise ValueError(f"{path}: {n_lines} lines, but a TCKR original-order file has one line per training image "
                     f"and {dataset.name!r} has {len(train)} training images ({len(full.records)} with its test "
                     "split); is it the file of another dataset?")


def read_prompt_pool(path: Path) -> dict[str, list[str]]:
    """Read a TCKR prompt file ``{class_name: [caption, ...]}``; empty captions are left out."""
    pools, skipped = _pool_entries(path)
    if skipped:
        logger.warning("%s: %d empty captions left out (%s)", path, len(skipped), skipped[0])
    return pools


def _pool_entries(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """The captions of a TCKR prompt file per class, and a "file: where: why" for each empty one."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        twice = sorted(name for name, n in Counter(name for name, _ in pairs).items() if n > 1)
        if twice:  # json.loads would keep the last silently, dropping the first class's captions
            raise ValueError(f"{path}: classes {twice} appear twice")
        return dict(pairs)

    try:
        data = json.loads(read_text_file(path), object_pairs_hook=no_repeats)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a TCKR prompt file is a JSON object {{class: [caption, ...]}}")
    pools: dict[str, list[str]] = {}
    skipped = []
    for name, captions in data.items():
        if not isinstance(captions, list) or not all(c is None or isinstance(c, str) for c in captions):
            raise ValueError(f"{path}: class {name!r} must hold a list of caption strings "
                             "(a TCKR prompt file is {class: [caption, ...]})")
        pools[str(name)] = []
        for k, caption in enumerate(captions, 1):
            if caption is None or not caption.strip():
                skipped.append(f"{path}: class {name!r} caption {k}: empty, skipped")
            elif len(caption) > MAX_CAPTION_CHARS:
                raise ValueError(f"{path}: class {name!r} caption {k} is {len(caption):,} characters; captions "
                                 f"are limited to {MAX_CAPTION_CHARS:,} characters")
            else:
                pools[str(name)].append(caption.strip())
    return pools, skipped


def _escape_cell(text: str) -> str:
    """A leading ' keeps a spreadsheet from running the cell as a formula. A cell that already starts
    with quotes before such a character gets one more, so :func:`_unescape_cell` undoes exactly this."""
    return "'" + text if text.lstrip("'")[:1] in FORMULA_START else text


def _unescape_cell(text: str) -> str:
    """Undo :func:`_escape_cell` (a hand-made cell written as ``'=...`` loses its first quote too)."""
    return text[1:] if text.startswith("'") and text.lstrip("'")[:1] in FORMULA_START else text


@WRITERS.register("jsonl", help="one JSON object a line with id, label, caption, source, timestamp")
def _write_jsonl(records: dict[str, CaptionRecord], classes: list[str]) -> str:
    return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for _, r in sorted(records.items()))


@WRITERS.register("csv", help="CSV: id,label,caption,captioner (a cell starting = + - @ gets a leading ')")
def _write_csv(records: dict[str, CaptionRecord], classes: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "label", "caption", "captioner"])
    for _, r in sorted(records.items()):
        writer.writerow([_escape_cell(str(cell)) for cell in (r.id, r.label, r.caption, r.source.get("captioner", ""))])
    return out.getvalue()


@WRITERS.register("tckr-json", help="TCKR prompt file {class: [captions]} (id order within a class)")
def _write_tckr(records: dict[str, CaptionRecord], classes: list[str]) -> str:
    pools: dict[str, list[str]] = {c: [] for c in classes}
    for _, r in sorted(records.items()):
        pools.setdefault(r.label, []).append(r.caption)
    return json.dumps(pools, ensure_ascii=False, indent=1) + "\n"


def formats() -> dict[str, Any]:
    return {"import": READERS.describe(), "export": WRITERS.describe()}
