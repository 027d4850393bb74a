"""The Captions page in Streamlit's AppTest: browse, edit + save, stale-save conflicts, find & replace,
re-caption, statistics, history and rollback, on a 40-image store of the built-in digits."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.caption import CaptionConfig, caption
from pipeline.captions.captioners import CaptionerConfig
from pipeline.data.datasets import DatasetConfig

APP = str(Path(__file__).resolve().parents[1] / "studio" / "app.py")
TIMEOUT = 180  # a ceiling per script run under load, not an expected duration


@pytest.fixture
def captioned(project, monkeypatch):
    """A project with store 'digits' (40 captions, version 1) made by a caption run."""
    caption(CaptionConfig(dataset=DatasetConfig(limit=40),
                          captioner=CaptionerConfig(class_template="a handwritten digit {label}")), project)
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    return project


def studio() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def edit(at: AppTest, rows: dict[int, dict]) -> AppTest:
    """Type into the page's data editor (AppTest seeds a keyed editor's edit state) and rerun."""
    key = at.data_editor[0].key
    at.session_state[key] = {"edited_rows": rows, "added_rows": [], "deleted_rows": []}
    return at.run()


def tables(at: AppTest) -> list:
    """Read-only tables (st.dataframe), not the editor."""
    return [d.value for d in at.dataframe if d.editing_mode == "read_only"]


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_first_page_shows_thumbnails_classes_and_captions(captioned):
    at = studio()
    table = at.data_editor[0].value
    assert len(table) == 24  # first page of 40
    assert table["image"].str.startswith("data:image/png;base64,").all()
    assert table["caption"].iloc[0].startswith("a handwritten digit")
    assert "40 of 40 captions match" in " ".join(texts(at.caption))


def test_edit_and_save_lands_in_the_store(captioned):
    at = edit(studio(), {0: {"caption": "a crooked seven"}})
    first_id = at.data_editor[0].value["id"].iloc[0]
    at.button(key="cap_save").click().run()
    assert "Saved 1 caption(s) as version 2." in texts(at.success)
    store = captioned.caption_store("digits")
    assert store.head() == 2
    assert store.get(first_id).caption == "a crooked seven"
    assert store.get(first_id).edited_by_hand
    assert at.data_editor[0].value["caption"].iloc[0] == "a crooked seven"  # the page shows the new version


def test_stale_save_of_the_same_caption_shows_the_conflict(captioned):
    tab_a, tab_b = studio(), studio()
    edit(tab_a, {0: {"caption": "saved first"}}).button(key="cap_save").click().run()
    edit(tab_b, {0: {"caption": "saved second"}}).button(key="cap_save").click().run()
    assert any("your edit is based on version 1, but version 2 already changed" in e for e in texts(tab_b.error))
    assert any("Version 2 was saved after version 1" in w for w in texts(tab_b.warning))
    store = captioned.caption_store("digits")
    assert store.head() == 2  # nothing overwritten
    first_id = tab_a.data_editor[0].value["id"].iloc[0]
    assert store.get(first_id).caption == "saved first"


def test_stale_save_of_another_caption_is_merged(captioned):
    tab_a, tab_b = studio(), studio()
    edit(tab_a, {0: {"caption": "edited in tab A"}}).button(key="cap_save").click().run()
    edit(tab_b, {1: {"caption": "edited in tab B"}}).button(key="cap_save").click().run()
    assert not tab_b.error
    store = captioned.caption_store("digits")
    ids = tab_a.data_editor[0].value["id"]
    assert store.get(ids.iloc[0]).caption == "edited in tab A"
    assert store.get(ids.iloc[1]).caption == "edited in tab B"


def test_find_replace_preview_then_apply(captioned):
    at = studio()
    at.segmented_control(key="cap_tool").set_value("Find & replace").run()
    at.text_input(key="fr_find").input("handwritten").run()
    at.text_input(key="fr_replace").input("hand-drawn").run()
    at.button(key="fr_preview").click().run()
    preview = tables(at)[0]
    assert len(preview) == 40 and preview["after"].iloc[0].startswith("a hand-drawn digit")
    assert captioned.caption_store("digits").head() == 1  # a preview writes nothing
    at.button(key="fr_apply").click().run()
    store = captioned.caption_store("digits")
    assert store.head() == 2
    assert all(r.caption.startswith("a hand-drawn digit") for r in store.records().values())
    assert "find 'handwritten'" in store.history()[-1].message


def test_status_filter_and_search(captioned):
    at = edit(studio(), {2: {"caption": "a seven"}})
    at.button(key="cap_save").click().run()
    at.radio(key="cap_status").set_value("edited").run()
    assert at.data_editor[0].value["caption"].tolist() == ["a seven"]
    at.radio(key="cap_status").set_value("all").run()
    at.text_input(key="cap_text").input("digit 3").run()
    assert set(at.data_editor[0].value["class"]) == {"3"}


def test_recaption_selected_rows(captioned):
    at = edit(studio(), {0: {"select": True}, 1: {"select": True}})
    ids = at.data_editor[0].value["id"].tolist()[:2]
    at.segmented_control(key="cap_tool").set_value("Re-caption").run()
    at.text_input(key="rc_template").input("a scan of the digit {label}").run()
    at.button(key="rc_run").click().run()
    assert not at.error, texts(at.error)
    store = captioned.caption_store("digits")
    assert store.head() == 2
    assert [store.get(i).caption.startswith("a scan of the digit") for i in ids] == [True, True]
    assert sum(r.caption.startswith("a scan") for r in store.records().values()) == 2


def test_statistics_and_history_with_rollback(captioned):
    at = edit(studio(), {0: {"caption": "a seven that looks like a one"}})
    at.button(key="cap_save").click().run()
    at.segmented_control(key="cap_tool").set_value("Statistics").run()
    stats = tables(at)[0]
    assert set(stats["class"]) == {str(d) for d in range(10)} and stats["captions"].sum() == 40
    at.segmented_control(key="cap_tool").set_value("History").run()
    assert tables(at)[0]["version"].tolist() == [2, 1]
    at.selectbox(key="hist_a").set_value(1).run()
    at.button(key="hist_diff").click().run()
    diff = tables(at)[1]
    assert diff["after"].tolist() == ["a seven that looks like a one"]
    at.selectbox(key="hist_target").set_value(1).run()
    at.checkbox(key="hist_sure").check().run()
    at.button(key="hist_rollback").click().run()
    store = captioned.caption_store("digits")
    assert store.head() == 3 and store.records(3) == store.records(1)
    assert "Version 3 restores the captions of version 1." in texts(at.success)


def test_no_store_yet(project, monkeypatch):
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    at = studio()
    assert "No caption stores" in at.info[0].value


def test_typed_paths_stay_inside_the_project(captioned, tmp_path):
    at = studio()
    at.selectbox(key="cap_src_digits").set_value("imagefolder")
    at.text_input(key="cap_path_digits").input("../../etc")
    at.button(key="cap_use_digits").click().run()
    assert any("outside the project folder" in e for e in texts(at.error))
    assert "cap_dataset_digits" not in at.session_state  # the store keeps its own dataset
    at.switch_page("views/runs.py").run()
    at.selectbox(key="run_dataset").set_value("another dataset (path inside the project)...").run()
    at.text_input(key="run_path").input(str(tmp_path)).run()  # absolute, but outside the project
    assert any("outside the project folder" in e for e in texts(at.error))
    assert at.button(key="run_start").disabled


def test_a_filter_that_matches_nothing_says_so(captioned):
    """Issue 10.15: an empty filter result used to raise StreamlitAPIException."""
    at = studio()
    at.text_input(key="cap_text").input("no caption says this").run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("No captions match" in i.value for i in at.info)
    at.text_input(key="cap_text").input("").run()
    at.radio(key="cap_status").set_value("needs review").run()  # nothing is flagged for review
    assert not at.exception and any("No captions match" in i.value for i in at.info)
