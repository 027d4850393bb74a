"""The Captions page in Streamlit's AppTest: browse, edit + save, stale-save conflicts, find & replace,
re-caption, statistics, history and rollback, the one-image viewer, the review workflow (curator, status
and curator filters, class approval, progress), on a 40-image store of the built-in digits."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from pipeline.caption import CaptionConfig, caption
from pipeline.captions.captioners import CaptionerConfig
from pipeline.captions.store import caption_store
from pipeline.data.datasets import DatasetConfig
from studio.shared import CURATOR

APP = str(Path(__file__).resolve().parents[1] / "studio" / "app.py")
TIMEOUT = 180  # a ceiling per script run under load, not an expected duration


@pytest.fixture
def captioned(project, monkeypatch):
    """A project with store 'digits' (40 captions, version 1) made by a caption run."""
    caption(CaptionConfig(dataset=DatasetConfig(limit=40),
                          captioner=CaptionerConfig(class_template="a handwritten digit {label}")), project)
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    return project


def studio(curator: str | None = "ann") -> AppTest:
    """The app in a new browser session whose curator has given their name (None: not yet)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if curator:
        at.session_state[CURATOR] = curator
    at.run()
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
    store = caption_store(captioned, "digits")
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
    store = caption_store(captioned, "digits")
    assert store.head() == 2  # nothing overwritten
    first_id = tab_a.data_editor[0].value["id"].iloc[0]
    assert store.get(first_id).caption == "saved first"


def test_stale_save_of_another_caption_is_merged(captioned):
    tab_a, tab_b = studio(), studio()
    edit(tab_a, {0: {"caption": "edited in tab A"}}).button(key="cap_save").click().run()
    edit(tab_b, {1: {"caption": "edited in tab B"}}).button(key="cap_save").click().run()
    assert not tab_b.error
    store = caption_store(captioned, "digits")
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
    assert caption_store(captioned, "digits").head() == 1  # a preview writes nothing
    at.button(key="fr_apply").click().run()
    store = caption_store(captioned, "digits")
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
    at.text_input(key="rc_template_digits").input("a scan of the digit {label}").run()
    at.button(key="rc_run").click().run()
    assert not at.error, texts(at.error)
    store = caption_store(captioned, "digits")
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
    store = caption_store(captioned, "digits")
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
    at.selectbox(key="run_dataset").set_value("another dataset (a folder or file of yours)...").run()
    at.text_input(key="run_path").input(str(tmp_path)).run()  # absolute, but outside the project
    assert any("is outside the project folder. Register it" in i.value for i in at.info)  # not opened: offered
    assert at.button(key="run_start").disabled and at.button(key="run_register").disabled


def test_a_filter_that_matches_nothing_says_so(captioned):
    """Issue 10.15: an empty filter result used to raise StreamlitAPIException."""
    at = studio()
    at.text_input(key="cap_text").input("no caption says this").run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("No captions match" in i.value for i in at.info)
    at.text_input(key="cap_text").input("").run()
    at.radio(key="cap_status").set_value("needs review").run()  # nothing is flagged for review
    assert not at.exception and any("No captions match" in i.value for i in at.info)


# -- the one-image viewer -----------------------------------------------------------------------------------
def viewer(at: AppTest) -> AppTest:
    return at.segmented_control(key="cap_mode").set_value("Viewer").run()


def shown(at: AppTest) -> str:
    """The id of the image in the viewer."""
    return at.selectbox(key="cap_pick").value


def caption_box(at: AppTest):
    (box,) = [t for t in at.text_area if t.key.startswith("cap_vtext_")]
    return box


def png_size(uri_or_bytes: str | bytes) -> tuple[int, int]:
    data = base64.b64decode(uri_or_bytes.split(",", 1)[1]) if isinstance(uri_or_bytes, str) else uri_or_bytes
    return Image.open(io.BytesIO(data)).size


def test_viewer_steps_through_the_filtered_captions_and_pages_follow(captioned):
    at = viewer(studio())
    ids = sorted(caption_store(captioned, "digits").records())
    assert shown(at) == ids[0] and caption_box(at).value.startswith("a handwritten digit")
    assert at.button(key="view_prev").disabled
    (image,) = at.get("image")
    assert image.proto.imgs[0].caption == f"{ids[0]} · 8×8 px"  # the original size
    assert image.proto.imgs[0].url.endswith(".png")  # lossless, not Streamlit's JPEG
    at.button(key="view_next").click().run()
    assert shown(at) == ids[1]
    at.button(key="view_prev").click().run()
    assert shown(at) == ids[0]
    at.selectbox(key="cap_pick").set_value(ids[23]).run()  # last image of page 1 (24 per page)
    at.button(key="view_next").click().run()
    assert shown(at) == ids[24]
    assert next(n for n in at.number_input if n.label.startswith("Page")).value == 2
    assert not at.exception


def test_viewer_buttons_have_keyboard_shortcuts(captioned):
    at = viewer(studio())
    shortcuts = {key: at.button(key=key).proto.shortcut for key in ("view_next", "view_prev", "view_save",
                                                                     "view_review")}
    assert {k: s.lower() for k, s in shortcuts.items()} == \
        {"view_next": "n", "view_prev": "p", "view_save": "ctrl+s", "view_review": "a"}
    assert any("tckrCaptionKeys" in h.proto.body for h in at.get("html"))  # Ctrl+S commits the text box


def test_choosing_the_viewer_scrolls_it_into_view_once(captioned):
    """Issue 25 item 3: the viewer sits under half a screen of filters. Choosing it scrolls it to the top of
    the window (a script sent on that run only: stepping through images keeps the scroll), and a style fits
    its image to its column and the window (tests/test_browser.py measures the layout)."""
    def scrolls(at: AppTest) -> list[str]:
        return [h.value for h in at.get("html") if "scrollIntoView" in h.value]

    at = viewer(studio())
    assert len(scrolls(at)) == 1 and runs_javascript(at, scrolls(at)[0])
    assert any(".st-key-cap_image" in h.value and "max-height" in h.value for h in at.get("html"))
    at.button(key="view_next").click().run()
    assert not scrolls(at)
    at.segmented_control(key="cap_mode").set_value("Grid").run()
    assert not scrolls(at)
    assert len(scrolls(viewer(at))) == 1  # chosen again


def test_viewer_save_records_the_curator_as_author(captioned):
    at = viewer(studio(curator="dr. ng"))
    image_id = shown(at)
    caption_box(at).input("a seven with a bar").run()
    at.button(key="view_save").click().run()
    assert f"Saved the caption of {image_id} as version 2." in texts(at.success)
    store = caption_store(captioned, "digits")
    record = store.get(image_id)
    assert (record.caption, record.status, record.curator) == ("a seven with a bar", "edited", "dr. ng")
    assert store.history()[-1].author == "dr. ng"
    assert caption_box(at).value == "a seven with a bar" and shown(at) == image_id  # stays on the image


def test_viewer_save_is_conflict_checked(captioned):
    tab_a, tab_b = viewer(studio()), viewer(studio())
    caption_box(tab_a).input("saved first").run()
    tab_a.button(key="view_save").click().run()
    caption_box(tab_b).input("saved second").run()
    tab_b.button(key="view_save").click().run()
    assert any("already changed" in e for e in texts(tab_b.error))
    assert caption_store(captioned, "digits").get(shown(tab_a)).caption == "saved first"


def test_mark_reviewed_keeps_the_text_and_moves_on(captioned):
    at = viewer(studio(curator="bob"))
    first = shown(at)
    at.button(key="view_review").click().run()
    store = caption_store(captioned, "digits")
    record = store.get(first)
    assert (record.status, record.curator, record.caption) == ("reviewed", "bob", "a handwritten digit "
                                                                                   f"{record.label}")
    assert (store.head(), store.history()[-1].author) == (2, "bob")
    assert shown(at) != first  # on to the next image
    # a change typed before marking reviewed is saved first, then approved
    second = shown(at)
    caption_box(at).input("a slanted one").run()
    at.button(key="view_review").click().run()
    assert (store.get(second).caption, store.get(second).status) == ("a slanted one", "reviewed")
    assert [v.message for v in store.history()[2:]] == ["edited by hand", "reviewed 1 caption(s)"]


def test_moving_on_with_an_unsaved_change_is_refused(captioned):
    at = viewer(studio())
    first = shown(at)
    caption_box(at).input("not saved yet").run()
    at.button(key="view_next").click().run()
    assert shown(at) == first and any("Unsaved change" in w for w in texts(at.warning))
    assert caption_store(captioned, "digits").head() == 1


def test_saving_asks_for_the_curator_first(captioned):
    at = edit(studio(curator=None), {0: {"caption": "who wrote this"}})
    assert any("Type your name under **Curator**" in i for i in texts(at.info))
    at.button(key="cap_save").click().run()
    assert any("Type your name under **Curator**" in e for e in texts(at.error))
    store = caption_store(captioned, "digits")
    assert store.head() == 1  # nothing saved without a name
    at.text_input(key="cap_curator").input("ann").run()
    edit(at, {0: {"caption": "who wrote this"}}).button(key="cap_save").click().run()
    assert store.head() == 2 and store.history()[-1].author == "ann"
    assert at.session_state[CURATOR] == "ann"  # kept for the rest of the browser session


# -- review workflow ---------------------------------------------------------------------------------------
def test_status_and_curator_filters(captioned):
    at = edit(studio(curator="ann"), {0: {"caption": "edited by ann"}})
    at.button(key="cap_save").click().run()
    viewer(at)
    at.selectbox(key="cap_pick").set_value(at.selectbox(key="cap_pick").options[5]).run()
    at.button(key="view_review").click().run()
    bob = studio(curator="bob")
    viewer(bob).selectbox(key="cap_pick").set_value(bob.selectbox(key="cap_pick").options[9]).run()
    bob.button(key="view_review").click().run()
    at = studio()  # a fresh tab sees every save
    at.radio(key="cap_status").set_value("reviewed").run()
    table = at.data_editor[0].value
    assert len(table) == 2 and set(table["status"]) == {"reviewed"} and set(table["curator"]) == {"ann", "bob"}
    at.selectbox(key="cap_who").set_value("bob").run()
    assert at.data_editor[0].value["curator"].tolist() == ["bob"]
    at.radio(key="cap_status").set_value("all").run()
    at.selectbox(key="cap_who").set_value("ann").run()
    assert sorted(at.data_editor[0].value["status"]) == ["edited", "reviewed"]
    at.selectbox(key="cap_who").set_value("").run()
    at.radio(key="cap_status").set_value("not reviewed").run()
    assert "38 of 40 captions match" in " ".join(texts(at.caption))
    at.radio(key="cap_status").set_value("machine").run()
    assert "37 of 40 captions match" in " ".join(texts(at.caption))


def test_approve_class_and_review_progress(captioned):
    at = studio(curator="ann")
    at.segmented_control(key="cap_tool").set_value("Review").run()
    progress = tables(at)[0].set_index("class")
    assert progress["reviewed"].sum() == 0 and progress["captions"].sum() == 40
    at.selectbox(key="rv_class").set_value("3").run()
    assert at.button(key="rv_approve").disabled  # not before "I checked this class"
    at.checkbox(key="rv_sure").check().run()
    n = int(progress.loc["3", "captions"])
    assert at.button(key="rv_approve").label == f"Approve {n} caption(s) of class 3"
    at.button(key="rv_approve").click().run()
    assert f"Approved {n} caption(s) of class 3 as reviewed by ann: version 2." in texts(at.success)
    store = caption_store(captioned, "digits")
    assert store.head() == 2 and store.history()[-1].changed == n
    assert {r.label for r in store.records().values() if r.reviewed} == {"3"}
    progress = tables(at)[0].set_index("class")
    assert progress.loc["3", "reviewed"] == 1.0 and progress["reviewed captions"].sum() == n
    assert at.get("progress")[0].proto.text == f"{n} of 40 captions reviewed"
    assert at.button(key="rv_approve").disabled  # nothing left in class 3


def test_thumbnail_size_is_configurable(captioned):
    at = studio()
    assert png_size(at.data_editor[0].value["image"].iloc[0]) == (128, 128)  # 8x8 digits, enlarged 16x
    at.selectbox(key="cap_thumb").set_value(256).run()
    assert png_size(at.data_editor[0].value["image"].iloc[0]) == (256, 256)
    at.selectbox(key="cap_thumb").set_value(64).run()
    assert png_size(at.data_editor[0].value["image"].iloc[0]) == (64, 64)


def test_recaption_template_defaults_to_the_store_template(captioned):
    at = studio()
    at.segmented_control(key="cap_tool").set_value("Re-caption").run()
    assert at.text_input(key="rc_template_digits").value == "a handwritten digit {label}"


def test_viewer_images_fit_the_panel_or_keep_every_pixel(captioned):
    from studio import shared

    key = shared.dataset_key(DatasetConfig(limit=40))
    image_id = sorted(caption_store(captioned, "digits").records())[0]
    fitted, full = shared.viewer_image(key, image_id, False), shared.viewer_image(key, image_id, True)
    assert (fitted.size, fitted.width, png_size(fitted.png)) == ((8, 8), 768, (768, 768))  # 96x, crisp
    assert (full.width, png_size(full.png)) == (8, (8, 8))
    assert shared.fit(Image.new("L", (3000, 2000)), 768).size == (768, 512)  # an X-ray, shrunk
    assert shared.fit(Image.new("L", (100, 50)), 768).size == (700, 350)  # enlarged by a whole factor


def test_the_browser_remembers_the_curator_across_a_reload(captioned, monkeypatch):
    """Issue 25 item 4: the name was lost on reload (F5). Typing it has the page write a cookie; a new
    session of that browser (which sends the cookie) starts with the name, and saves need no retyping."""
    import json
    from urllib.parse import quote

    from studio import shared

    at = studio(curator=None)
    at.text_input(key="cap_curator").input("Zoë </script>").run()
    scripts = [h.value for h in at.get("html") if shared.CURATOR_COOKIE in h.value]
    assert len(scripts) == 1 and runs_javascript(at, scripts[0])
    assert f"encodeURIComponent({json.dumps('Zoë </script>').replace('<', chr(92) + 'u003c')})" in scripts[0]
    assert "max-age=31536000" in scripts[0] and scripts[0].count("</script>") == 1
    at.run()  # a rerun with the same name does not write it again
    assert not [h for h in at.get("html") if shared.CURATOR_COOKIE in h.value]
    # the reload: a new session whose browser sends the cookie (what encodeURIComponent wrote)
    cookies = {shared.CURATOR_COOKIE: quote("Zoë </script>", safe="")}
    monkeypatch.setattr(shared, "browser_cookie", lambda name: shared.unquote(cookies.get(name, "")))
    again = studio(curator=None)
    assert again.text_input(key="cap_curator").value == "Zoë </script>"
    assert not any("Type your name under **Curator**" in i for i in texts(again.info))
    assert not [h for h in again.get("html") if shared.CURATOR_COOKIE in h.value]  # the browser has it already
    edit(again, {0: {"caption": "remembered"}}).button(key="cap_save").click().run()
    assert caption_store(captioned, "digits").history()[-1].author == "Zoë </script>"


def runs_javascript(at: AppTest, body: str) -> bool:
    return any(h.value == body and h.proto.unsafe_allow_javascript for h in at.get("html"))
