"""Issue 23 items 1 and 2: a curator's work is never lost to a captioner. Hand edits and reviews made while a
killed caption run waited to resume (or while it ran) win over its pending machine captions; ``--overwrite``
keeps edited and reviewed captions, ``--overwrite-reviewed`` replaces them after saying how many; the
studio's re-caption asks (a tick with the count) before replacing them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.caption import CaptionConfig, caption
from pipeline.captions.captioners import Captioner, CaptionerConfig
from pipeline.captions.store import caption_store
from pipeline.cli.main import main
from pipeline.data.datasets import DatasetConfig
from studio.shared import CURATOR

APP = str(Path(__file__).resolve().parents[2] / "studio" / "app.py")
TIMEOUT = 180  # a ceiling per script run under load, not an expected duration


class ThirdCaptioner(Captioner):
    """Captions "third <label>", one image a batch; dies after ``die_after`` batches; calls ``during``
    before its second batch (a person working in the studio while the run goes on)."""

    name = "third"

    def __init__(self, die_after: int | None = None, during=None) -> None:
        super().__init__(CaptionerConfig(batch_size=1))
        self.die_after, self.during, self.batches = die_after, during, 0

    def source(self):
        return {"captioner": "third", "model": None, "params": {}}

    def caption(self, images, labels):
        if self.batches == self.die_after:
            raise RuntimeError("killed")
        if self.batches == 1 and self.during:
            self.during()
        self.batches += 1
        return [f"third {label}" for label in labels]


def _config(folder: Path, **kw) -> CaptionConfig:
    return CaptionConfig(dataset=DatasetConfig(source="imagefolder", path=str(folder)),
                         captioner=CaptionerConfig(batch_size=1), subset="all", store="pets", **kw)


@pytest.fixture
def store(project, image_folder):
    """Store 'pets': 12 machine captions "a photo of a <label>" (version 1)."""
    caption(_config(image_folder), project)
    return caption_store(project, "pets")


# -- item 1 ------------------------------------------------------------------------------------------------
def test_edits_and_reviews_made_while_a_killed_run_waited_win_over_its_pending_captions(project, image_folder,
                                                                                      store):
    with pytest.raises(RuntimeError, match="killed"):
        caption(_config(image_folder, overwrite=True), project, captioner=ThirdCaptioner(die_after=6))
    (pending,) = (store.root / "pending").glob("*.jsonl")
    assert len(pending.read_text().splitlines()) == 6  # cat/000..005 wait to be committed
    store.edit({"cat/000.png": "a grumpy cat", "cat/001.png": "a sleepy cat"}, store.head(), author="ann")
    store.review(["cat/002.png"], store.head(), reviewer="bob")

    result = caption(_config(image_folder, overwrite=True), project, captioner=ThirdCaptioner())
    records = store.records()
    assert [(records[i].caption, records[i].status, records[i].curator) for i in ("cat/000.png", "cat/001.png",
                                                                                   "cat/002.png")] == [
        ("a grumpy cat", "edited", "ann"), ("a sleepy cat", "edited", "ann"), ("a photo of a cat", "reviewed", "bob")]
    assert sum(r.caption.startswith("third") for r in records.values()) == 9
    assert (result.captioned, result.curated_kept, result.curated_replaced) == (9, 3, 0)


@pytest.mark.parametrize("flag", ["overwrite", "overwrite_reviewed"])
def test_an_edit_made_while_the_run_captions_wins(project, image_folder, store, flag):
    def curator_at_work():  # cat/000 is already in the pending file, not yet in the store
        store.edit({"cat/000.png": "a grumpy cat"}, store.head(), author="ann")

    result = caption(_config(image_folder, **{flag: True}), project, captioner=ThirdCaptioner(during=curator_at_work))
    assert store.get("cat/000.png").caption == "a grumpy cat" and store.get("cat/000.png").curator == "ann"
    assert result.captioned == 11 and result.curated_kept == 1


# -- item 2 ------------------------------------------------------------------------------------------------
def _cli(project, folder: Path, *flags: str) -> int:
    return main(["-q", "caption", "--project", str(project.root), "--dataset", f"imagefolder:{folder}",
                 "--subset", "all", "--store", "pets", "--class-template", "fourth {label}", *flags])


def test_overwrite_keeps_reviewed_captions_and_their_curator(project, image_folder, store, capsys):
    store.review(["cat/000.png", "dog/000.png"], store.head(), reviewer="carol")
    store.edit({"cat/001.png": "a cat on a mat"}, store.head(), author="ann")
    assert _cli(project, image_folder, "--overwrite") == 0
    assert "kept 3 edited or reviewed captions (--overwrite-reviewed replaces them)" in capsys.readouterr().out
    records = store.records()
    assert [(records[i].status, records[i].curator) for i in ("cat/000.png", "dog/000.png", "cat/001.png")] == [
        ("reviewed", "carol"), ("reviewed", "carol"), ("edited", "ann")]
    assert records["cat/001.png"].caption == "a cat on a mat"
    assert sum(r.caption.startswith("fourth") for r in records.values()) == 9


def test_overwrite_reviewed_says_how_many_it_replaces_before_it_does(project, image_folder, store, capsys, caplog):
    store.review(["cat/000.png", "dog/000.png"], store.head(), reviewer="carol")
    head = store.head()
    with caplog.at_level(logging.WARNING, logger="pipeline.caption"):
        assert _cli(project, image_folder, "--overwrite-reviewed") == 0
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "replacing 2 edited or reviewed caption(s) of store pets (curators: carol)" in warning.getMessage()
    assert "replaced 2 edited or reviewed captions" in capsys.readouterr().out
    assert store.head() == head + 1  # said before the one version that replaced them
    assert {r.status for r in store.records().values()} == {"machine"}


def test_studio_recaption_asks_before_replacing_reviewed_captions(project, monkeypatch):
    caption(CaptionConfig(dataset=DatasetConfig(limit=40), captioner=CaptionerConfig(
        class_template="a handwritten digit {label}")), project)
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    store = caption_store(project, "digits")
    ids = sorted(store.records())[:3]
    store.review(ids[:2], store.head(), reviewer="carol")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[CURATOR] = "ann"
    at.run()
    assert at.data_editor[0].value["id"].tolist()[:3] == ids
    select_first_three(at)
    at.segmented_control(key="cap_tool").set_value("Re-caption").run()
    at.radio(key="rc_which").set_value("selected").run()
    at.text_input(key="rc_template_digits").input("a scan of the digit {label}").run()
    tick = at.checkbox(key="rc_replace_curated")
    assert "2 edited or reviewed" in tick.label and not tick.value
    assert at.button(key="rc_run").label == "Re-caption 1 image(s)"
    at.button(key="rc_run").click().run()
    assert not at.error, [e.value for e in at.error]
    assert [store.get(i).status for i in ids] == ["reviewed", "reviewed", "machine"]
    assert store.get(ids[2]).caption.startswith("a scan of the digit")

    select_first_three(at)  # the new version is a new grid
    at.checkbox(key="rc_replace_curated").check().run()
    assert at.button(key="rc_run").label == "Re-caption 3 image(s)"
    at.button(key="rc_run").click().run()
    assert [store.get(i).status for i in ids] == ["machine"] * 3


def select_first_three(at: AppTest) -> None:
    """Tick the grid's first three rows (AppTest seeds a keyed editor's edit state) and rerun."""
    at.session_state[at.data_editor[0].key] = {"edited_rows": {n: {"select": True} for n in range(3)},
                                               "added_rows": [], "deleted_rows": []}
    at.run()
