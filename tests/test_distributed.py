"""Issue 13: the same commands on several processes with Accelerate. ``accelerate launch`` with two CPU
processes (gloo) makes the same synthetic set, image for image, and the same shadows, logit for logit,
as one process; a generation that lost a process mid-way is finished by a rerun.

Both sides run with one thread per process: on a CPU the thread count changes the order of float sums
(logits then differ in the 7th digit), which has nothing to do with how the work is shared out.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.cluster import SINGLE, Cluster
from pipeline.core.launch import child_env
from pipeline.generate import GenerationPlan, generate_set

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # a ceiling for a wedged launch; each command ends on its own in well under a minute


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """``python -m pipeline -q ARGS``, or the same under ``accelerate launch`` with ``processes`` CPU
    processes (on a machine without a GPU ``--multi_gpu`` starts them through torchrun; gloo joins them)."""
    env = {**child_env(), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pipeline", "-q", *args]
    if processes > 1:
        command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
                   "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
                   "--main_process_port", str(free_port()), "-m", "pipeline", "-q", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def finished(audited_run):
    """(project folder, experiment run id, caption ref, generator folder): a copy of the session's tiny
    audited run without its shadow cache."""
    project, run_id = audited_run
    record = project.registry().get(run_id)
    links = {link.role: link.ref for link in record.links}
    return project.root, run_id, links["captions"], project.runs_dir / links["generator"] / "generator"


def copy_project(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("shadows"))
    return target


def test_two_processes_generate_the_same_set_image_for_image(finished, tmp_path):
    root, _, captions, generator = finished
    project = copy_project(root, tmp_path / "project")
    common = ["generate", "--project", str(project), "--generator", str(generator), "--prompts", f"store:{captions}",
              "--num", "40", "--batch-size", "8", "--round", "1"]
    pipeline(*common, "--out", str(tmp_path / "one"))
    pipeline(*common, "--out", str(tmp_path / "two"), processes=2)
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "manifest.jsonl").read_text() == (two / "manifest.jsonl").read_text()
    assert (one / "plan.json").read_text() == (two / "plan.json").read_text()
    files = [json.loads(line)["file"] for line in (one / "manifest.jsonl").read_text().splitlines()]
    assert len(files) == 40
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert not list(two.glob("manifest.rank-*"))  # merged into the one manifest
    from pipeline.core.project import Project

    runs = Project.open(project).registry().list(kind="generate")
    outs = sorted(Path(r.metrics["out_dir"]).name for r in runs if r.metrics.get("out_dir", "").startswith(str(tmp_path)))
    assert outs == ["one", "two"]  # one registered run per command, whatever its number of processes
    assert next(r for r in runs if r.metrics.get("out_dir") == str(two)).metrics["processes"] == 2


def test_two_processes_train_the_same_shadows_in_both_modes(finished, tmp_path):
    root, run_id, _, _ = finished
    one = copy_project(root, tmp_path / "one")
    two = copy_project(root, tmp_path / "two")
    pipeline("audit", "--project", str(one), "--run", run_id)
    printed = pipeline("audit", "--project", str(two), "--run", run_id, processes=2).stdout
    assert "student  " in printed and "pipeline" in printed  # the main process printed the table, once
    caches = sorted(p.parent.name for p in (one / "shadows").glob("*/manifest.json"))
    kinds = sorted(json.loads((one / "shadows" / c / "manifest.json").read_text())["kind"] for c in caches)
    assert kinds == ["pipeline", "pipeline-method", "transfer"]  # GKD's pipeline, the AM method's, real data
    assert sorted(p.parent.name for p in (two / "shadows").glob("*/manifest.json")) == caches
    for cache in caches:
        files = sorted(p.name for p in (one / "shadows" / cache).glob("shadow-*.npz"))
        assert files and files == sorted(p.name for p in (two / "shadows" / cache).glob("shadow-*.npz"))
        for name in files:
            a, b = np.load(one / "shadows" / cache / name), np.load(two / "shadows" / cache / name)
            assert all(np.array_equal(a[k], b[k]) for k in a.files), f"{cache}/{name}"
    newest = [max((p / "runs").glob("audit-*"), key=lambda d: d.name) for p in (one, two)]
    metrics = [json.loads((d / "metrics.json").read_text()) for d in newest]
    for model in ("teacher", "student", "am"):
        assert metrics[0][model]["mia"] == metrics[1][model]["mia"]
    assert metrics[1]["processes"] == 2


# -- a process lost mid-way: the sharing and merging logic, in one test process -----------------------------
class _Alone:
    """Stands in for accelerate's state when one process of two runs by itself (its partner is dead):
    the same shares, and barriers that do not wait."""

    def __init__(self, rank: int):
        self.rank = rank

    @contextmanager
    def split_between_processes(self, items):
        half = (len(items) + 1) // 2  # accelerate's split: the first processes get one more
        yield items[:half] if self.rank == 0 else items[half:]

    def wait_for_everyone(self):
        pass


def test_a_generation_that_lost_a_process_is_finished_by_a_rerun(tmp_path: Path, prompt_pool, fake_generator):
    plan = GenerationPlan(total=24, batch_size=4)  # 6 batches: 3 per process
    reference = generate_set(fake_generator(), prompt_pool, plan, tmp_path / "reference")
    out = tmp_path / "out"
    # process 0 set the folder up and died at its first batch; process 1 made one batch and died
    with pytest.raises(KeyboardInterrupt):
        generate_set(fake_generator(die_after_calls=0), prompt_pool, plan, out, cluster=Cluster(0, 2, _Alone(0)))
    with pytest.raises(KeyboardInterrupt):
        generate_set(fake_generator(die_after_calls=1), prompt_pool, plan, out, cluster=Cluster(1, 2, _Alone(1)))
    assert len((out / "manifest.rank-1.jsonl").read_text().splitlines()) == 4
    assert not (out / "manifest.jsonl").exists() or not (out / "manifest.jsonl").read_text()
    # the rerun (here a single process) keeps those four images and makes the other twenty
    again = fake_generator()
    finished = generate_set(again, prompt_pool, plan, out, cluster=SINGLE)
    assert len(again.generated) == 20 and not list(out.glob("manifest.rank-*"))
    assert [i.__dict__ for i in finished.items] == [i.__dict__ for i in reference.items]
    assert all((out / i.file).read_bytes() == (reference.root / i.file).read_bytes() for i in finished.items)


def test_shares_cover_every_item_once_in_order():
    items = list(range(7))
    shares = [Cluster(r, 2, _Alone(r)).share(items) for r in range(2)]
    assert shares[0] + shares[1] == items and abs(len(shares[0]) - len(shares[1])) <= 1
    assert SINGLE.share(items) == items and not SINGLE.distributed and SINGLE.is_main


def test_a_plain_command_is_one_process(monkeypatch):
    from pipeline.core import cluster

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cluster.current.cache_clear()
    assert cluster.current() is SINGLE and not cluster.launched()
