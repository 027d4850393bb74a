"""``benchmarks/gpu.sh``, the one prepared GPU command, without a GPU: its plan fits seven minutes, it stops
at once where CUDA is not visible, and its CPU rehearsal's cheapest part (``setup``: the library and
device versions, here without carried wheels) writes the results file, table and versions. The full
rehearsal (``bash benchmarks/gpu.sh --cpu-rehearsal DIR``, every part at tiny sizes) takes minutes and
is run by hand before GPU time is spent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None
                                or shutil.which("bc") is None, reason="needs bash, timeout and bc")


def gpu_sh(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_WHEELS": str(tmp_path / "no-wheels"), "TMPDIR": str(tmp_path)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def plan_seconds(stdout: str) -> int:
    [total] = re.findall(r"^\s+sum\s+(\d+) s", stdout, flags=re.M)
    return int(total)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_without_cuda_it_stops_at_once_after_printing_the_plan(tmp_path):
    done = gpu_sh(str(tmp_path / "results"), tmp_path=tmp_path)
    assert done.returncode == 2
    assert "CUDA is not visible" in done.stderr and "--cpu-rehearsal" in done.stderr
    assert plan_seconds(done.stdout) <= 7 * 60
    assert not (tmp_path / "results" / "results.md").exists()  # nothing ran


def test_the_rehearsals_setup_part_writes_the_table_and_versions(tmp_path):
    out = tmp_path / "results"
    done = gpu_sh("--cpu-rehearsal", "--only", "setup", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note: CPU rehearsal" in done.stdout
    assert plan_seconds(done.stdout) <= 7 * 60
    results = (out / "results.md").read_text()
    assert "| part | row | value | unit | peak GiB | note |" in results
    assert re.search(r"^\| gpu.sh \| setup \| [\d.]+ \| s wall \| - \| limit \d+ s \|$", results, flags=re.M)
    versions = re.search(r"^Versions: (.*)$", results, flags=re.M).group(1)
    for name in ("torch", "diffusers", "transformers", "peft", "timm", "accelerate", "opacus", "prdc"):
        assert f"; {name} " in versions, name
    assert "device cpu" in versions
    assert (out / "gpu.log").exists()


def test_an_unknown_part_is_refused_with_the_valid_names(tmp_path):
    done = gpu_sh("--cpu-rehearsal", "--only", "sampling,nope", str(tmp_path / "results"), tmp_path=tmp_path)
    assert done.returncode == 2
    assert "unknown part nope" in done.stderr and "sampling-compiled" in done.stderr
