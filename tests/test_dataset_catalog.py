"""Datasets registered with a project by name: `datasets add NAME SPEC` (after a confirmation naming the
folder), picked with `--dataset NAME` by every command, listed, removed; the studio registers a folder
outside the project the same way and its run form then fills the preset for it with a time estimate."""

from __future__ import annotations

import json

import pytest

from pipeline.cli.main import main
from pipeline.data import catalog
from pipeline.data.datasets import DatasetConfig
from tests.conftest import write_image_folder


@pytest.fixture
def outside(tmp_path):
    """An image folder beside the project, not inside it."""
    return write_image_folder(tmp_path / "elsewhere" / "scans", classes=("normal", "effusion"), per_class=10)


def test_add_then_pick_by_name_list_and_remove(tmp_path, outside, capsys, monkeypatch):
    project = ["--project", str(tmp_path / "project")]
    monkeypatch.chdir(tmp_path / "elsewhere")  # a relative spec is stored as an absolute path
    assert main(["datasets", "add", "scans", "imagefolder:scans", *project, "--yes"]) == 0
    said = capsys.readouterr().out
    assert f"read images from {outside}" in said and "20 images" in said and "2 classes" in said
    assert catalog.registered(tmp_path / "project") == {"scans": DatasetConfig(source="imagefolder", path=str(outside))}

    monkeypatch.chdir(tmp_path)
    assert main(["datasets", "inspect", "--dataset", "scans", *project, "--limit", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == ["effusion", "normal"] and summary["membership"]["members"] > 0
    assert main(["datasets", "list", *project]) == 0
    assert f"scans  imagefolder  {outside}" in capsys.readouterr().out

    assert main(["datasets", "remove", "scans", *project]) == 0
    assert catalog.registered(tmp_path / "project") == {}
    assert outside.is_dir()  # the data is not touched


@pytest.mark.parametrize("argv, message", [
    (["datasets", "add", "digits", "imagefolder:{outside}", "--yes"], "is a dataset source"),
    (["datasets", "add", "../up", "imagefolder:{outside}", "--yes"], "must be 1-64 letters"),
    (["datasets", "add", "x", "imagefolder:{outside}/missing", "--yes"], "does not exist"),
    (["datasets", "add", "x", "imagefolder:{outside}"], "confirm with --yes"),  # no terminal to ask on
    (["datasets", "inspect", "--dataset", "nope"], "not a source (digits, hf, imagefolder, parquet) nor a dataset "
                                                   "registered with this project (none yet"),
    (["datasets", "remove", "nope"], "no dataset called 'nope' is registered"),
])
def test_bad_registrations_are_one_line_with_exit_2(tmp_path, outside, capsys, monkeypatch, argv, message):
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    argv = [a.format(outside=outside) for a in argv]
    assert main([*argv, "--project", str(tmp_path / "project")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "project" / catalog.CATALOG_FILE).exists()


def test_a_second_registration_under_the_same_name_needs_replace(tmp_path, outside, capsys):
    project = ["--project", str(tmp_path / "project")]
    assert main(["datasets", "add", "scans", f"imagefolder:{outside}", *project, "--yes"]) == 0
    assert main(["datasets", "add", "scans", f"imagefolder:{outside}", *project, "--yes"]) == 2
    assert "already registered" in capsys.readouterr().err
    assert main(["datasets", "add", "scans", f"imagefolder:{outside}", *project, "--yes", "--replace"]) == 0


def test_a_damaged_catalog_is_named_not_overwritten(tmp_path, outside, capsys):
    root = tmp_path / "project"
    root.mkdir()
    (root / catalog.CATALOG_FILE).write_text("{not json")
    assert main(["datasets", "add", "scans", f"imagefolder:{outside}", "--project", str(root), "--yes"]) == 2
    assert "is not a dataset catalog" in capsys.readouterr().err
    assert (root / catalog.CATALOG_FILE).read_text() == "{not json"


def test_the_studio_registers_an_outside_folder_then_fills_its_preset_and_estimate(env, outside, open_page):
    at = open_page("runs")
    at.selectbox(key="run_dataset").set_value("another dataset (a folder or file of yours)...").run()
    at.selectbox(key="run_source").set_value("imagefolder")
    at.text_input(key="run_path").input(str(outside)).run()
    assert not at.exception
    assert any(f"`{outside}` is outside the project folder" in i.value for i in at.info)
    assert at.text_input(key="run_register_name").value == "scans"
    assert at.button(key="run_register").disabled  # not before the confirmation naming the folder
    at.checkbox(key="run_register_sure").check().run()
    at.button(key="run_register").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Registered 'scans'" in s.value for s in at.success)
    assert catalog.registered(env.root)["scans"].path == str(outside)
    # picked, and the form holds the standard preset for it, with the reasons and the time per stage
    assert at.selectbox(key="run_dataset").value == "scans"
    [note] = [i.value for i in at.info if "the standard preset for" in i.value]
    assert "imagefolder:scans" in note
    assert any("Estimated time" in m.value for m in at.markdown)
    stages = next(d.value for d in at.dataframe if "stage" in d.value.columns)
    assert {"generator", "teacher", "student", "audit"} <= set(stages["stage"])
    # another dataset picked brings its own preset
    at.selectbox(key="run_dataset").set_value("digits (built-in)").run()
    assert any("the standard preset for digits" in i.value for i in at.info)
    assert at.text_input(key="run_class_template").value == "a photo of a {label}"  # a dataset-neutral preset


def test_the_form_opens_with_the_preset_of_the_dataset_it_shows(env, outside, open_page):
    catalog.register(env.root, "scans", DatasetConfig(source="imagefolder", path=str(outside)))
    at = open_page("runs")
    assert at.selectbox(key="run_dataset").value == "scans"  # the project's own data first
    assert any("the standard preset for imagefolder:scans" in i.value for i in at.info)
    assert at.text_input(key="run_class_template").value == "a photo of a {label}"  # not the digits recipe
