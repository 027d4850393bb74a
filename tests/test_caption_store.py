"""Caption store: versions, diffs, rollback, conflicts, atomic saves, pending work, review statuses."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from pipeline.captions import curation
from pipeline.captions.store import CaptionConflictError, CaptionRecord, CaptionStore

SOURCE = {"captioner": "blip", "model": "tiny", "params": {}}


def _records(n: int, text: str = "a photo") -> list[CaptionRecord]:
    return [CaptionRecord(f"img-{i}", "cat", f"{text} {i}", SOURCE, "2026-01-01T00:00:00+00:00")
            for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> CaptionStore:
    store = CaptionStore.open(tmp_path / "store")
    store.save(_records(5))
    return store


def test_every_save_is_a_new_version_and_old_versions_stay_readable(store: CaptionStore):
    assert store.head() == 1
    v2 = store.edit({"img-1": "a fluffy cat"}, base_version=1)
    assert v2 == 2
    assert store.get("img-1").caption == "a fluffy cat"
    assert store.get("img-1").edited_by_hand
    assert store.get("img-1", version=1).caption == "a photo 1"
    assert [v.version for v in store.history()] == [1, 2]
    assert store.history()[1].changed == 1


def test_diff_lists_changed_captions(store: CaptionStore):
    store.edit({"img-0": "zero", "img-4": "four"}, base_version=1)
    changes = store.diff(1, 2)
    assert [(c.id, c.before, c.after) for c in changes] == [
        ("img-0", "a photo 0", "zero"), ("img-4", "a photo 4", "four")]


def test_rollback_restores_an_old_state_as_a_new_version(store: CaptionStore):
    store.edit({"img-2": "edited"}, base_version=1)
    store.save([CaptionRecord("img-9", "dog", "new image", SOURCE, "t")])
    version = store.rollback(1)
    assert version == 4
    assert {i: r.caption for i, r in store.records().items()} == \
        {i: r.caption for i, r in store.records(1).items()}
    assert "img-9" not in store.records()
    assert store.get("img-2", version=2).caption == "edited"  # history kept


def test_stale_save_touching_the_same_caption_is_refused(store: CaptionStore):
    # two tabs both start from version 1
    store.edit({"img-3": "tab A"}, base_version=1)
    with pytest.raises(CaptionConflictError, match="based on version 1.*version 2 already changed img-3"):
        store.edit({"img-3": "tab B"}, base_version=1)
    assert store.get("img-3").caption == "tab A"  # nothing overwritten
    assert store.head() == 2


def test_stale_save_of_other_captions_merges_without_loss(store: CaptionStore):
    store.edit({"img-3": "tab A"}, base_version=1)
    store.edit({"img-4": "tab B"}, base_version=1)
    assert store.get("img-3").caption == "tab A" and store.get("img-4").caption == "tab B"


def test_unchanged_edit_writes_no_version(store: CaptionStore):
    assert store.edit({"img-0": "a photo 0"}, base_version=1) == 1


def test_edit_of_unknown_image_is_an_error(store: CaptionStore):
    with pytest.raises(KeyError, match="img-77"):
        store.edit({"img-77": "x"}, base_version=1)


def test_snapshots_keep_state_identical(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("pipeline.captions.store.SNAPSHOT_EVERY", 3)
    store = CaptionStore.open(tmp_path / "s")
    store.save(_records(4))
    for v in range(2, 8):
        store.edit({"img-0": f"edit {v}"}, base_version=v - 1)
    assert sorted(p.name for p in (store.root / "snapshots").iterdir()) == ["000003.jsonl", "000006.jsonl"]
    fresh = CaptionStore.open(store.root)
    assert fresh.get("img-0").caption == "edit 7"
    assert fresh.get("img-0", version=4).caption == "edit 4"


def test_saves_leave_no_temporary_files(store: CaptionStore):
    store.edit({"img-0": "x"}, base_version=1)
    leftovers = [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_pending_file_survives_a_torn_last_line(store: CaptionStore):
    store.append_pending("job", _records(2, "pending"))
    with open(store.pending_path("job"), "a") as f:
        f.write('{"id": "img-9", "cap')  # crash in the middle of a write
    assert sorted(store.read_pending("job")) == ["img-0", "img-1"]
    store.clear_pending("job")
    assert store.read_pending("job") == {}


def _edit_many(root: str, worker: int, n: int) -> None:
    store = CaptionStore.open(Path(root))
    for k in range(n):
        while True:
            try:
                store.edit({f"img-{worker}": f"worker {worker} edit {k}"}, base_version=store.head())
                break
            except CaptionConflictError:  # only possible if another worker touched our image
                raise


def test_two_processes_editing_at_once_lose_nothing(store: CaptionStore):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_edit_many, args=(str(store.root), w, 10)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert store.head() == 21
    assert store.get("img-0").caption == "worker 0 edit 9"
    assert store.get("img-1").caption == "worker 1 edit 9"
    assert sorted(store.root.glob("versions/*.json"))[-1].name == "000021.json"


# -- review workflow: machine -> edited -> reviewed -------------------------------------------------------
def test_status_goes_machine_edited_reviewed_and_an_edit_reopens_review(store: CaptionStore):
    assert store.get("img-0").status == "machine" and store.get("img-0").curator == ""
    v2 = store.edit({"img-0": "a tabby cat"}, base_version=1, author="ann")
    assert (store.get("img-0").status, store.get("img-0").curator) == ("edited", "ann")
    assert store.history()[-1].author == "ann"
    v3 = store.review(["img-0", "img-1"], base_version=v2, reviewer="bob")
    reviewed = store.get("img-0")
    assert (reviewed.status, reviewed.curator, reviewed.caption) == ("reviewed", "bob", "a tabby cat")
    assert reviewed.edited_by_hand and store.get("img-1").source == SOURCE  # text and provenance kept
    assert (store.history()[-1].author, store.history()[-1].changed) == ("bob", 2)
    store.edit({"img-1": "a grey cat"}, base_version=v3, author="cy")
    assert (store.get("img-1").status, store.get("img-1").curator) == ("edited", "cy")
    assert store.get("img-0", version=3).status == "reviewed"  # old versions keep their statuses


def test_review_skips_reviewed_captions_and_refuses_stale_ones(store: CaptionStore):
    v2 = store.review(["img-0"], base_version=1, reviewer="bob")
    assert store.review(["img-0"], base_version=v2, reviewer="ann") == v2  # nothing left: no version
    assert store.get("img-0").curator == "bob"
    store.edit({"img-1": "changed in another tab"}, base_version=v2, author="ann")
    with pytest.raises(CaptionConflictError, match="img-1"):
        store.review(["img-1"], base_version=v2, reviewer="bob")  # bob approved a text he did not see
    with pytest.raises(ValueError, match="name the reviewer"):
        store.review(["img-2"], base_version=3, reviewer=" ")
    with pytest.raises(KeyError, match="img-77"):
        store.review(["img-77"], base_version=3, reviewer="bob")


def test_version_files_without_statuses_are_still_read(tmp_path: Path):
    """Stores written before the review workflow: status from the source, curator from the version."""
    store = CaptionStore.open(tmp_path / "old")
    old = [{"id": "a", "label": "cat", "caption": "a cat", "source": SOURCE, "timestamp": "t"},
           {"id": "b", "label": "cat", "caption": "a cat", "source": SOURCE, "timestamp": "t"}]
    hand = [{"id": "b", "label": "cat", "caption": "a fat cat", "timestamp": "t",
             "source": {"captioner": "hand", "model": None, "params": {}}}]
    for version, records, author in ((1, old, "run x"), (2, hand, "studio")):
        (store.root / "versions" / f"{version:06d}.json").write_text(json.dumps(
            {"version": version, "parent": version - 1, "created_at": "t", "author": author, "message": "",
             "records": records}))
    (store.root / "HEAD").write_text("2\n")
    records = CaptionStore.open(store.root).records()
    assert (records["a"].status, records["a"].curator) == ("machine", "")
    assert (records["b"].status, records["b"].curator) == ("edited", "studio")
    store.review(["a"], base_version=2, reviewer="ann")
    assert CaptionStore.open(store.root).get("a").status == "reviewed"


def test_statuses_survive_snapshots(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("pipeline.captions.store.SNAPSHOT_EVERY", 2)
    store = CaptionStore.open(tmp_path / "s")
    store.save(_records(3))
    store.review(["img-2"], base_version=1, reviewer="bob")  # version 2: a snapshot
    assert (store.root / "snapshots" / "000002.jsonl").exists()
    fresh = CaptionStore.open(store.root)
    assert (fresh.get("img-2").status, fresh.get("img-2").curator) == ("reviewed", "bob")


def test_unknown_status_is_an_error():
    with pytest.raises(ValueError, match="unknown caption status 'approved'"):
        CaptionRecord("x", "cat", "a cat", SOURCE, "t", status="approved")


# -- curation over statuses ------------------------------------------------------------------------------
def test_filters_by_status_and_curator_and_per_class_progress(store: CaptionStore):
    store.save([CaptionRecord("img-9", "dog", "a dog", SOURCE, "t")])
    store.edit({"img-0": "a cat on a mat"}, base_version=2, author="ann")
    store.review(["img-1", "img-9"], base_version=3, reviewer="bob")
    records = store.records()

    def ids(**kwargs):
        return [r.id for r in curation.filter_records(records, **kwargs)]

    assert ids(status="edited") == ["img-0"]
    assert ids(status="reviewed") == ["img-1", "img-9"]
    assert ids(status="machine") == ["img-2", "img-3", "img-4"]
    assert ids(status="not reviewed") == ["img-0", "img-2", "img-3", "img-4"]
    assert ids(curator="bob") == ["img-1", "img-9"] and ids(curator="ann", status="reviewed") == []
    assert ids(status="needs review") == ["img-2", "img-3", "img-4"]  # "a photo n" lacks "cat"
    assert curation.curators(records) == ["ann", "bob"]
    progress = {p.label: (p.total, p.reviewed, p.edited) for p in curation.review_progress(records, ["cat", "dog"])}
    assert progress == {"cat": (5, 1, 1), "dog": (1, 1, 0)}


def test_approve_class_reviews_the_rest_of_the_class_in_one_version(store: CaptionStore):
    store.save([CaptionRecord("img-9", "dog", "a dog", SOURCE, "t")])
    store.review(["img-1"], base_version=2, reviewer="bob")
    version = curation.approve_class(store, "cat", base_version=3, reviewer="ann")
    assert version == 4 and store.history()[-1].changed == 4  # img-1 was reviewed already
    assert store.history()[-1].message == "approve class cat"
    assert {i: r.curator for i, r in store.records().items() if r.reviewed} == \
        {"img-0": "ann", "img-1": "bob", "img-2": "ann", "img-3": "ann", "img-4": "ann"}
    assert store.get("img-9").status == "machine"  # other classes untouched
    with pytest.raises(ValueError, match="already reviewed"):
        curation.approve_class(store, "cat", base_version=4, reviewer="ann")


def test_store_template_is_the_one_its_captions_were_made_with():
    made = {"captioner": "classname", "model": None, "params": {"class_template": "an x-ray of {label}"}}
    records = {"a": CaptionRecord("a", "lung", "an x-ray of lung", made, "t"),
               "b": CaptionRecord("b", "lung", "edited", {"captioner": "hand"}, "t")}
    assert curation.store_template({}, records) == "an x-ray of {label}"
    assert curation.store_template({"class_template": "a scan of {label}"}, records) == "a scan of {label}"
    assert curation.store_template({}, {"b": records["b"]}) is None
