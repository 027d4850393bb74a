"""Captioning stage: resumable runs into the store, templates, import / export formats."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import SHARED

from pipeline.caption import CaptionConfig, build_prompt, caption
from pipeline.captions.captioners import Captioner, CaptionerConfig
from pipeline.captions.formats import export_captions, import_captions
from pipeline.captions.store import caption_store
from pipeline.data.datasets import DatasetConfig, load_dataset


class CrashingCaptioner(Captioner):
    """Captions like the classname captioner but dies after ``crash_after`` batches."""

    name = "crashing"

    def __init__(self, crash_after: int | None) -> None:
        super().__init__(CaptionerConfig(batch_size=4))
        self.crash_after, self.batches, self.seen = crash_after, 0, []

    def source(self):
        return {"captioner": "crashing", "model": None, "params": {}}

    def caption(self, images, labels):
        if self.crash_after is not None and self.batches == self.crash_after:
            raise RuntimeError("simulated crash")
        self.batches += 1
        self.seen += list(labels)
        return [f"digit {label}" for label in labels]


def _config(folder: Path, **kw) -> CaptionConfig:
    return CaptionConfig(dataset=DatasetConfig(source="imagefolder", path=str(folder)),
                         captioner=CaptionerConfig(batch_size=4), subset="all", **kw)


def test_classname_captioning_of_the_builtin_dataset(project):
    config = CaptionConfig(dataset=DatasetConfig(limit=40),
                           captioner=CaptionerConfig(class_template="a handwritten digit {label}"))
    result = caption(config, project)
    store = caption_store(project, result.store)
    records = store.records()
    assert result.captioned == len(records) == 40 and result.version == 1
    record = next(r for r in records.values() if r.label == "0")
    assert record.caption == "a handwritten digit 0"
    assert record.source["captioner"] == "classname"
    run = project.registry().get(result.run_id)
    assert run.status == "done" and run.metrics["captioned"] == 40
    assert {link.ref_kind for link in run.links} == {"dataset", "captions"}
    assert (run.run_dir / "membership.json").exists()
    # a rerun captions nothing and writes no new version
    again = caption(config, project)
    assert again.captioned == 0 and again.already_done == 40 and again.version == 1


def test_crashed_run_resumes_without_redoing_work(project, image_folder):
    config = _config(image_folder, store="pets")
    with pytest.raises(RuntimeError, match="simulated crash"):
        caption(config, project, captioner=CrashingCaptioner(crash_after=1))
    failed = project.registry().list(kind="caption")[0]
    assert failed.status == "failed"
    store = caption_store(project, "pets")
    assert store.head() == 0 and len(store.read_pending(_only_pending_key(store))) == 4

    second = CrashingCaptioner(crash_after=None)
    result = caption(config, project, captioner=second)
    assert len(second.seen) == 12 - 4  # only the images the crashed run had not finished
    assert result.captioned == 12 and len(store.records()) == 12
    assert not list((store.root / "pending").glob("*.jsonl"))


def _only_pending_key(store) -> str:
    (path,) = (store.root / "pending").glob("*.jsonl")
    return path.stem


def test_corrupt_image_is_skipped_and_reported(project, image_folder):
    (image_folder / "dog" / "002.png").write_bytes(b"\x89PNG broken")
    result = caption(_config(image_folder), project)
    assert list(result.corrupt) == ["dog/002.png"]
    assert "dog/002.png" not in caption_store(project, result.store).records()
    assert result.captioned == 11


def test_overwrite_keeps_hand_edits(project, image_folder):
    result = caption(_config(image_folder), project)
    store = caption_store(project, result.store)
    store.edit({"cat/000.png": "a grumpy cat"}, base_version=store.head())
    caption(_config(image_folder, overwrite=True), project,
            captioner=CrashingCaptioner(crash_after=None))
    assert store.get("cat/000.png").caption == "a grumpy cat"
    assert store.get("cat/001.png").caption == "digit cat"


def test_store_refuses_captions_of_another_dataset(project, image_folder, tmp_path):
    caption(_config(image_folder, store="shared-name"), project)
    with pytest.raises(ValueError, match="choose another store name"):
        caption(CaptionConfig(dataset=DatasetConfig(limit=20), store="shared-name"), project)


@pytest.mark.parametrize("template,expected", [
    ("class", "cat"), ("caption", "a cat on a mat"), ("class_caption", "cat: a cat on a mat"),
    ("{caption}, a photo of {label}", "a cat on a mat, a photo of cat")])
def test_prompt_templates(template, expected):
    assert build_prompt("cat", "a cat on a mat", template) == expected


def test_unknown_template_is_an_error():
    with pytest.raises(ValueError, match="class, caption, class_caption"):
        build_prompt("cat", "x", "fancy")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_import_roundtrip(project, image_folder, tmp_path, fmt):
    result = caption(_config(image_folder), project)
    store = caption_store(project, result.store)
    out = tmp_path / f"captions.{fmt}"
    assert export_captions(store, out, fmt) == 12
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        for row in rows:
            row["caption"] = row["caption"].upper()
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        rows = list(csv.DictReader(out.open()))
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=rows[0].keys())
            writer.writeheader()
            writer.writerows({**r, "caption": r["caption"].upper()} for r in rows)
    dataset = load_dataset(DatasetConfig(source="imagefolder", path=str(image_folder)))
    report = import_captions(store, out, fmt, dataset)
    assert report.imported == 12 and store.get("cat/000.png").caption == "A PHOTO OF A CAT"
    assert store.get("cat/000.png").source["captioner"] == "import"


def test_import_refuses_a_changed_label(project, image_folder, tmp_path):
    dataset = load_dataset(DatasetConfig(source="imagefolder", path=str(image_folder)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "cat/000.png", "caption": "x", "label": "dog"}) + "\n")
    with pytest.raises(ValueError, match="labels are never changed"):
        import_captions(caption_store(project, "s", create=True), bad, "jsonl", dataset)
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"id": "cat/999.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="not in dataset"):
        import_captions(caption_store(project, "s", create=True), unknown, "jsonl", dataset)


def test_tckr_prompt_file_import_and_export(project, image_folder, tmp_path):
    dataset = load_dataset(DatasetConfig(source="imagefolder", path=str(image_folder)))
    n_train = {c: sum(1 for r in dataset.split("train") if r.label == i) for i, c in enumerate(["cat", "dog"])}
    pool = {"cat": [f"cat caption {k}" for k in range(20)], "dog": [f"dog caption {k}" for k in range(20)]}
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(pool))
    store = caption_store(project, "tckr", create=True)
    with pytest.raises(ValueError, match="per-class prompt pool"):  # captions not tied to images: ask first
        import_captions(store, path, "tckr-json", dataset)
    report = import_captions(store, path, "tckr-json", dataset, assign_in_order=True)
    assert report.imported == sum(n_train.values())
    assert report.unused == 40 - sum(n_train.values())
    first_cat = sorted(r.id for r in dataset.split("train") if r.label == 0)[0]
    assert store.get(first_cat).caption == "cat caption 0"
    out = tmp_path / "out.json"
    export_captions(store, out, "tckr-json")
    exported = json.loads(out.read_text())
    assert len(exported["cat"]) == n_train["cat"] and exported["cat"][0] == "cat caption 0"
    path.write_text(json.dumps({"lion": ["x"]}))
    with pytest.raises(ValueError, match="'lion'"):
        import_captions(store, path, "tckr-json", dataset, assign_in_order=True)


@pytest.mark.skipif(not (SHARED / "cifar10" / "blip2_captions_by_class.json").exists(),
                    reason="../shared is absent")
def test_real_tckr_blip2_prompt_file_parses():
    from pipeline.captions.formats import read_prompt_pool

    pools = read_prompt_pool(SHARED / "cifar10" / "blip2_captions_by_class.json")
    assert len(pools) == 10 and all(len(v) == 5000 for v in pools.values())
