"""Caption store: versions, diffs, rollback, conflicts, atomic saves, pending work."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

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
