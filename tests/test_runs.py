"""Run registry: lifecycle, lineage, cancellation and two concurrent writer processes."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from pipeline.core.runs import Link, RunCancelled, RunRegistry


def test_lifecycle_config_metrics_and_folder(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("caption", {"captioner": "blip", "batch": 4},
                          links=[Link("data", "dataset", "abc123")])
    assert run.status == "queued" and run.run_dir == tmp_path / "runs" / run.id
    assert json.loads((run.run_dir / "config.json").read_text())["config"]["captioner"] == "blip"
    with registry.track(run.id):
        assert registry.get(run.id).status == "running"
        registry.report(run.id, progress={"stage": "caption", "done": 2}, captioned=2)
    done = registry.get(run.id)
    assert done.status == "done" and done.metrics == {"captioned": 2}
    assert done.progress == {"stage": "caption", "done": 2}
    assert done.links == (Link("data", "dataset", "abc123"),)
    assert done.started_at and done.finished_at


def test_failure_is_recorded_with_the_error(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("train", {})
    with pytest.raises(ZeroDivisionError), registry.track(run.id):
        1 / 0  # noqa: B018
    failed = registry.get(run.id)
    assert failed.status == "failed" and "ZeroDivisionError" in failed.error


def test_cancel_is_noticed_at_the_next_report(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    run = registry.create("train", {})
    with pytest.raises(RunCancelled), registry.track(run.id):
        registry.cancel(run.id)
        registry.report(run.id, loss=1.0)
    assert registry.get(run.id).status == "cancelled"


def test_lineage_walks_parent_runs(tmp_path: Path):
    registry = RunRegistry(tmp_path)
    cap = registry.create("caption", {}, links=[Link("data", "dataset", "fp")])
    gen = registry.create("finetune", {}, links=[Link("captions", "captions", "digits@3"),
                                                 Link("parent", "run", cap.id)])
    syn = registry.create("generate", {}, links=[Link("generator", "run", gen.id)])
    lineage = [(depth, link.ref) for depth, _, link in registry.lineage(syn.id)]
    assert (0, gen.id) in lineage and (1, cap.id) in lineage and (2, "fp") in lineage
    assert [r.id for r in registry.list()] == [syn.id, gen.id, cap.id]
    assert [r.id for r in registry.list(kind="caption")] == [cap.id]


def test_unknown_status_filter_lists_valid_ones(tmp_path: Path):
    with pytest.raises(ValueError, match="queued, running, done"):
        RunRegistry(tmp_path).list(status="finished")


def _writer(root: str, worker: int, n: int) -> None:
    registry = RunRegistry(Path(root))
    for k in range(n):
        run = registry.create("bench", {"worker": worker, "k": k})
        registry.start(run.id)
        registry.report(run.id, step=k)
        registry.finish(run.id, worker=worker)


def test_two_processes_writing_at_once(tmp_path: Path):
    RunRegistry(tmp_path)  # create the schema first, as the CLI would
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = RunRegistry(tmp_path).list(limit=100)
    assert len(runs) == 30 and {r.status for r in runs} == {"done"}
    assert sorted(r.metrics["worker"] for r in runs) == [0] * 15 + [1] * 15
    assert len({r.id for r in runs}) == 30
