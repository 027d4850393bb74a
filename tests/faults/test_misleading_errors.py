"""Issue 23 item 7: errors that misled now say what is wrong and what to do, in one line: a class no member
is left of, a dataset none of whose images decodes, `report` on a moved project or a deleted run folder, a
damaged caption store (a truncated version file, garbage in HEAD: named, and `captions rollback` restores
it), one malformed registry row in `runs list`, and a caption too long to import (one limit everywhere)."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import write_image_folder

from pipeline.captions.formats import export_captions, import_captions
from pipeline.captions.store import MAX_CAPTION_CHARS, caption_store
from pipeline.cli.main import main
from pipeline.core.project import Project
from pipeline.data.context import DataContext
from pipeline.data.datasets import DatasetConfig, load_dataset
from pipeline.views.stakeholder import report_content


def _one_line_error(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _folder(tmp_path: Path, rare: tuple[str, ...]) -> DatasetConfig:
    """cat and dog with 6 images each, and class 'rare' with only the named files of cat's."""
    root = write_image_folder(tmp_path / "images", classes=("cat", "dog", "rare"))
    for file in (root / "rare").iterdir():
        if file.name not in rare:
            file.unlink()
    return DatasetConfig(source="imagefolder", path=str(root))


# -- a class the models would never see ----------------------------------------------------------------------
def test_a_class_whose_only_image_is_in_the_test_split_says_so(tmp_path):
    config = _folder(tmp_path, ("002.png",))  # its id hashes into the test split
    with pytest.raises(ValueError, match=r"class\(es\) \['rare'\] have no training images \(the only images of "
                                         r"\['rare'\] are in the test split"):
        load_dataset(config)


def test_a_class_left_without_a_member_is_refused_before_any_stage(tmp_path):
    config = _folder(tmp_path, ("001.png", "002.png"))  # one training image: at member_fraction 0.5, a non-member
    with pytest.raises(ValueError, match=r"class 'rare' has no MIA member, so no model would learn it: 1 training "
                                         r"and 1 test image\(s\).* needs at least 2 training images"):
        DataContext.open(config)


# -- nothing readable ----------------------------------------------------------------------------------------
def test_a_dataset_of_unreadable_images_says_no_readable_image_up_front(tmp_path, capsys):
    root = write_image_folder(tmp_path / "images")
    for file in root.rglob("*.png"):
        file.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"no readable image in dataset 'imagefolder:images': none of its 12"):
        load_dataset(DatasetConfig(source="imagefolder", path=str(root)))
    code = main(["finetune", "--project", str(tmp_path / "p"), "--dataset", f"imagefolder:{root}", "--steps", "1"])
    _one_line_error(capsys, code, "no readable image in dataset 'imagefolder:images'")


def test_members_that_are_all_unreadable_are_named_not_an_empty_batch(tmp_path):
    root = write_image_folder(tmp_path / "images", splits=True)
    for file in (root / "train").rglob("*.png"):
        file.write_bytes(b"not a png")
    data = DataContext.open(DatasetConfig(source="imagefolder", path=str(root)))  # the test images decode
    with pytest.raises(ValueError, match=r"no readable image among the \d+ members image\(s\) of dataset "
                                         r"'imagefolder:images' \(the first: cannot read image 'train/"):
        data.tensors("members", 8)


# -- report --------------------------------------------------------------------------------------------------
def test_report_on_a_moved_project_reads_its_runs_and_a_deleted_run_folder_is_named(tmp_path, add_finished_run,
                                                                                     fake_metrics, capsys):
    project = Project.open(tmp_path / "before")
    kept, deleted = add_finished_run(project, fake_metrics()), add_finished_run(project, fake_metrics())
    shutil.move(tmp_path / "before", tmp_path / "after")
    moved = Project.open(tmp_path / "after")
    assert report_content(moved, [kept], "t").points  # the registry still names the old folder
    shutil.rmtree(moved.runs_dir / deleted)
    code = main(["report", "--project", str(moved.root), "--run", deleted, "--out", str(tmp_path / "out")])
    _one_line_error(capsys, code, f"the folder of run {deleted} is gone ({moved.runs_dir / deleted}",
                    f"`runs delete {deleted} --yes`")


# -- a damaged caption store ---------------------------------------------------------------------------------
@pytest.fixture
def two_versions(project):
    """Store 'digits' of 20 digits: version 1 'a photo of a <d>', version 2 'x <d>'."""
    for template in ("a photo of a {label}", "x {label}"):
        assert main(["-q", "caption", "--project", str(project.root), "--limit", "20", "--overwrite",
                     "--class-template", template]) == 0
    return caption_store(project, "digits")


def test_a_truncated_version_file_is_named_and_rollback_restores_the_store(project, two_versions, capsys):
    path = two_versions.root / "versions" / "000002.json"
    path.write_text(path.read_text()[:100])
    capsys.readouterr()
    code = main(["captions", "show", "digits", "--project", str(project.root)])
    _one_line_error(capsys, code, f"version file {path} cannot be read", "`captions rollback digits 1`")
    assert main(["captions", "rollback", "digits", "1", "--project", str(project.root)]) == 0
    store = caption_store(project, "digits")
    assert store.head() == 1 and {r.caption[:12] for r in store.records().values()} >= {"a photo of a"}
    assert list((store.root / "versions").glob("set-aside-*/000002.json"))  # kept, not deleted
    store.edit({sorted(store.records())[0]: "a new edit"}, store.head())  # and it takes new versions again
    assert store.head() == 2


def test_garbage_in_head_is_named_and_rollback_restores_the_store(project, two_versions, capsys):
    (two_versions.root / "HEAD").write_text("garbage\n")
    capsys.readouterr()
    code = main(["captions", "history", "digits", "--project", str(project.root)])
    _one_line_error(capsys, code, f"{two_versions.root / 'HEAD'} holds 'garbage', not a version number",
                    "`captions rollback digits 2`")
    assert main(["captions", "list", "--project", str(project.root)]) == 0  # the list still lists
    assert main(["captions", "rollback", "digits", "2", "--project", str(project.root)]) == 0
    assert caption_store(project, "digits").head() == 2


def test_a_damaged_snapshot_is_skipped_not_fatal(project, two_versions, caplog):
    snapshot = two_versions.root / "snapshots" / "000002.jsonl"
    snapshot.write_text('{"id": "trunc')  # snapshots only speed loading up
    with caplog.at_level(logging.WARNING, logger="pipeline.captions.store"):
        records = caption_store(project, "digits").records()
    assert len(records) == 20 and "cannot be read" in caplog.text


# -- the registry --------------------------------------------------------------------------------------------
def test_one_malformed_registry_row_is_skipped_by_runs_list_with_a_warning(project, add_finished_run, fake_metrics,
                                                                           capsys, caplog):
    good, bad = add_finished_run(project, fake_metrics()), add_finished_run(project, fake_metrics())
    with sqlite3.connect(project.root / "registry.sqlite") as db:
        db.execute("UPDATE runs SET metrics='{bad' WHERE id=?", (bad,))
    with caplog.at_level(logging.WARNING, logger="pipeline.core.runs"):
        assert main(["runs", "list", "--project", str(project.root)]) == 0
    assert good in capsys.readouterr().out
    assert f"skipping run {bad}: its row in {project.root / 'registry.sqlite'} cannot be read" in caplog.text


# -- one caption limit ---------------------------------------------------------------------------------------
def test_one_caption_limit_for_edits_export_and_import(project, two_versions, tmp_path):
    store = two_versions
    first, second = sorted(store.records())[:2]
    with pytest.raises(ValueError, match=f"the caption of '{first}' is 50,000 characters; captions are limited to "
                                         f"{MAX_CAPTION_CHARS:,}"):
        store.edit({first: "x" * 50_000}, store.head())
    store.edit({first: "y" * MAX_CAPTION_CHARS}, store.head())  # at the limit: exported and imported back
    out = tmp_path / "captions.jsonl"
    export_captions(store, out, "jsonl")
    dataset = load_dataset(DatasetConfig(limit=20))
    out.write_text(out.read_text().replace("y" * MAX_CAPTION_CHARS, "z" * MAX_CAPTION_CHARS))
    assert import_captions(store, out, "jsonl", dataset).imported == 20
    assert store.get(first).caption == "z" * MAX_CAPTION_CHARS
    # a caption saved before the limit existed: export refuses it instead of writing what import refuses
    version = store.root / "versions" / f"{store.head() + 1:06d}.json"
    version.write_text(json.dumps({"version": store.head() + 1, "parent": store.head(), "created_at": "", "author": "",
                                   "message": "old", "records": [{**store.get(second).to_dict(),
                                                                  "caption": "w" * 50_000}]}))
    (store.root / "HEAD").write_text(f"{store.head() + 1}\n")
    with pytest.raises(ValueError, match=f"caption store 'digits' version {store.head()}: the caption of '{second}' "
                                         "is 50,000 characters"):
        export_captions(store, tmp_path / "again.jsonl", "jsonl")
