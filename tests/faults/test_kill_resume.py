"""Issue 10.4 and the fault suite: `kill -9` of a real `run` process in each stage, then `run --resume`,
until the experiment finishes. Nothing may be lost, duplicated or mixed, and the final figures must be
those of an uninterrupted run with the same config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.core.project import Project
from pipeline.experiment import config_json

ROOT = Path(__file__).resolve().parents[2]
CEILING_S = 600  # waits end on the event; the ceiling only keeps a wedge from hanging CI
FIGURES = ("teacher_accuracy", "student_accuracy", "teacher_auc", "student_auc", "class_fidelity", "cas")


def _probes(root: Path) -> dict[str, object]:
    """stage -> a measure of its progress on disk (it grows while the stage works)."""
    def count(pattern: str) -> int:
        return len(list(root.glob(pattern)))

    def lines(pattern: str) -> int:
        return sum(len(p.read_text().splitlines()) for p in root.glob(pattern))

    def stamp(pattern: str) -> tuple:
        return tuple(sorted(p.stat().st_mtime_ns for p in root.glob(pattern)))

    return {"generator": lambda: count("runs/finetune-*/checkpoints/step-*"),
            "generate": lambda: lines("runs/experiment-*/synthetic/round-*/manifest.jsonl"),
            "teacher": lambda: stamp("runs/experiment-*/teacher.ckpt"),
            "student": lambda: stamp("runs/experiment-*/student.ckpt"),
            "audit": lambda: count("runs/audit-*")}


def _kill_when(process: subprocess.Popen, probe) -> bool:
    """SIGKILL the process group once ``probe`` changes; False if the process ended first."""
    before, end = probe(), time.monotonic() + CEILING_S
    while time.monotonic() < end and process.poll() is None:
        if probe() != before:
            os.killpg(process.pid, signal.SIGKILL)  # the run and any worker it started, as in a crash
            process.wait()
            return True
        time.sleep(0.02)  # poll interval
    return False


@pytest.mark.slow
def test_kill_9_in_every_stage_then_resume_matches_an_uninterrupted_run(tmp_path: Path, audited_run, tiny_config):
    baseline, baseline_id = audited_run  # the same config, run once for the session
    expected = baseline.registry().get(baseline_id).metrics

    root = tmp_path / "killed"
    config_file = tmp_path / "config.json"
    config_file.write_text(config_json(tiny_config))  # its generation makes several manifest batches per round
    command = [sys.executable, "-m", "pipeline", "-q", "run", "--project", str(root)]
    killed = []
    for stage, probe in _probes(root).items():
        run_ids = [p.name for p in root.glob("runs/experiment-*")]
        args = ["--resume", run_ids[0]] if run_ids else [str(config_file)]
        process = subprocess.Popen(command + args, cwd=ROOT, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert _kill_when(process, probe), f"the run ended before {stage}: {process.stderr.read()[-2000:]}"
        killed.append(stage)
    (run_dir,) = root.glob("runs/experiment-*")
    finished = subprocess.run(command + ["--resume", run_dir.name], cwd=ROOT, capture_output=True, text=True,
                              timeout=CEILING_S)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert killed == ["generator", "generate", "teacher", "student", "audit"]

    registry = Project.open(root).registry()
    record = registry.get(run_dir.name)
    assert record.status == "done" and json.loads((run_dir / "metrics.json").read_text())["resumed"] is True
    # each stage has one run in the lineage, and every synthetic round is complete, once, from one generator
    roles = Counter(link.role for link in record.links)
    assert all(n == 1 for n in roles.values()), roles
    generator_id = None
    for k in range(tiny_config.rounds):
        folder = run_dir / "synthetic" / f"round-{k}"
        entries = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        assert len(entries) == len({e["index"] for e in entries}) == len(list(folder.rglob("*.png")))
        assert len(entries) == len(json.loads((folder / "plan.json").read_text())["items"])
        plan_generator = json.loads((folder / "plan.json").read_text())["generator_id"]
        assert generator_id in (None, plan_generator)
        generator_id = plan_generator
    # the generator and the classifiers continued their own runs (from their checkpoints); none is left
    # "running"; the figures are those of the uninterrupted run
    kinds = Counter(r.kind for r in registry.list())
    assert kinds["finetune"] == kinds["teacher"] == kinds["student"] == 1, kinds
    assert not registry.list(status="running")
    assert {k: record.metrics[k] for k in FIGURES} == pytest.approx({k: expected[k] for k in FIGURES})
