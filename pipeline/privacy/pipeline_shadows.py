"""Pipeline-mode shadows: scheduling, caching and the worker-process protocol.

A pipeline shadow reruns a whole training pipeline on its half of the audited population; what it
runs is the caller's: each :class:`ShadowJob` names a module-level ``runner`` function (the
experiment's replay of its own stages, ``pipeline/replay.py``) and the picklable ``spec`` it takes.
This module only decides where and when jobs run: in this process, or in worker processes
(``python -m pipeline.privacy.pipeline_shadows JOB.pkl``: progress as JSON lines on stdout, the
result in ``result.npz``) so that on a multi-core CPU they train beside the main work; shadows
already cached are read, not retrained (:func:`~.shadows.load_or_train_shadows`).

A worker dies with the process that started it, however that one ends: the parent holds the only
write end of the worker's stdin, which the operating system closes when the parent exits, even by
``kill -9``; a thread in the worker waits for that end-of-file and exits. (``prctl(PR_SET_PDEATHSIG)``
is Linux-only and fires when the *thread* that started the worker ends; a process group needs the
parent alive to kill it; polling the parent's pid is late by its interval.) On SIGTERM or a failure
the parent also kills its workers itself (:meth:`PipelineShadows.stop`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cluster import SINGLE, Cluster
from ..core.common import Progress, ProgressFn, no_progress
from ..core.machine import cores, worker_processes
from ..core.runs import RecordedProgress
from .shadows import ShadowLogits, load_or_train_shadows

logger = logging.getLogger(__name__)

Logits = tuple[np.ndarray, np.ndarray]  # (a, n, k) on the population views, (a, nz, k) on z


@dataclass(frozen=True)
class ShadowJob:
    """One pipeline shadow (picklable: it may run in a worker process)."""

    index: int
    output: str  # the job's own files: job.pkl, worker.log, result.npz
    runner: Callable[..., Logits]  # a module-level function (spec, progress, **local): pickled by name
    spec: Any  # the runner's argument
    threads: int = 0  # torch CPU threads in a worker (0: torch's default)


class PipelineShadows:
    """The pipeline-mode shadows of one audited model: :meth:`result` trains the uncached ones (in this
    process, or in worker processes) and returns every shadow's cached logits. :meth:`start` launches
    them in workers ahead, for a caller with other work to do meanwhile."""

    def __init__(self, cache_root: Path, manifest: dict[str, Any], shadow_in: np.ndarray, jobs: dict[int, ShadowJob],
                 workers: int, local: dict[str, Any] | None = None) -> None:
        from ..core.common import config_hash

        self.cache_root, self.manifest, self.shadow_in, self.jobs = Path(cache_root), manifest, shadow_in, jobs
        self.local = local or {}  # extra runner arguments when a job runs in this process (e.g. loaded data)
        self.directory = self.cache_root / config_hash(manifest, 16)
        self.workers = max(1, workers)
        self._events: queue.Queue = queue.Queue()
        self._running: dict[int, subprocess.Popen] = {}
        self._waiting: list[int] = []
        self._started: float | None = None

    def start(self) -> PipelineShadows:
        """Start the shadows that are not cached yet in worker processes (no-op with one worker)."""
        if self.workers > 1:
            self._waiting = [i for i in self.jobs if not (self.directory / f"shadow-{i:04d}.npz").exists()]
            self._started = time.monotonic()
            self._fill()
        return self

    def result(self, progress: ProgressFn = no_progress, cluster: Cluster = SINGLE) -> ShadowLogits:
        """The shadows' logits: trained here (or waited for) where not cached. With a distributed
        ``cluster`` each process trains its share one shadow after another (no worker processes)."""
        if cluster.distributed:
            self.stop()
            self.workers = 1
        try:
            shadows = load_or_train_shadows(self.cache_root, self.manifest, self.shadow_in,
                                            lambda indices: self._train(indices, progress),
                                            group=1 if cluster.distributed else None, cluster=cluster)
        finally:
            self.stop()
        if self._started is not None and shadows.trained:  # trained in the background since start()
            shadows = replace(shadows, seconds=time.monotonic() - self._started)
        return shadows

    def stop(self) -> None:
        """Kill any worker still running (after a failure or a cancel)."""
        for proc in self._running.values():
            proc.kill()
            proc.wait()
        self._running.clear()
        self._waiting.clear()

    def _train(self, indices: list[int], progress: ProgressFn) -> dict[int, Logits]:
        if self.workers <= 1:
            return {i: self.jobs[i].runner(self.jobs[i].spec, progress, **self.local) for i in indices}
        if not self._running and not self._waiting:
            self._waiting = list(indices)
        self._fill()
        out: dict[int, Logits] = {}
        while len(out) < len(indices):
            kind, index, payload = self._events.get()
            if kind == "event":
                progress(Progress(payload["stage"], payload["done"], payload["total"], {}))
                continue
            out[index] = self._collect(index)
            self._fill()
        return out

    def _collect(self, index: int) -> Logits:
        proc, output = self._running.pop(index), Path(self.jobs[index].output)
        if proc.wait() != 0:
            log = output / "worker.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"pipeline shadow {index + 1} failed (exit {proc.returncode}):\n{tail}")
        with np.load(output / "result.npz") as result:
            return result["logits"], result["z_logits"]

    def _fill(self) -> None:
        from ..core.launch import child_env

        threads = max(1, cores() // self.workers)
        while self._waiting and len(self._running) < self.workers:
            index = self._waiting.pop(0)
            job = replace(self.jobs[index], threads=threads)
            self._running[index] = _start_worker(job, child_env(), self._events)


def default_workers(requested: int | None, n_shadows: int, on_gpu: bool) -> int:
    """Worker processes for pipeline shadows (see :func:`pipeline.core.machine.worker_processes`): with
    more than one, the shadows run in parallel, each process with its share of the cores' threads."""
    return worker_processes(requested, n_shadows, on_gpu)


def _start_worker(job: ShadowJob, env: dict[str, str], events: queue.Queue) -> subprocess.Popen:
    directory = Path(job.output)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "job.pkl").write_bytes(pickle.dumps(job))
    (directory / "result.npz").unlink(missing_ok=True)
    log = open(directory / "worker.log", "ab")  # noqa: SIM115 (closed by the reader thread)
    # stdin: the worker's lifeline (module docstring); nothing is ever written to it
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.privacy.pipeline_shadows", str(directory / "job.pkl")],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)

    def read() -> None:
        for line in proc.stdout:
            try:
                events.put(("event", job.index, json.loads(line)))
            except ValueError:
                pass
        proc.wait()
        proc.stdin.close()
        log.close()
        events.put(("done", job.index, None))

    threading.Thread(target=read, daemon=True).start()
    return proc


def worker_main(job_file: str) -> None:
    """A worker process: run one job, progress as JSON lines on stdout, logits to ``result.npz``."""
    threading.Thread(target=_exit_with_parent, daemon=True, name="lifeline").start()
    import torch

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    job: ShadowJob = pickle.loads(Path(job_file).read_bytes())
    if job.threads:
        torch.set_num_threads(job.threads)
    emit = RecordedProgress(lambda r: print(json.dumps({k: r[k] for k in ("stage", "done", "total")}), flush=True),
                            every_s=0.5)
    logits, z_logits = job.runner(job.spec, emit)
    output = Path(job.output)
    tmp = output / ".result.tmp.npz"
    np.savez(tmp, logits=logits, z_logits=z_logits)
    tmp.replace(output / "result.npz")


def _exit_with_parent() -> None:
    """Wait for end-of-file on stdin, which comes when the parent is gone (it never writes), then exit.
    The file descriptor itself, not ``sys.stdin``: a daemon thread blocked inside the buffered reader
    holds its lock, and the interpreter's shutdown after a finished job would abort on it."""
    while os.read(0, 4096):
        pass
    print("pipeline-shadow worker: the process that started it is gone; stopping", file=sys.stderr, flush=True)
    os._exit(1)  # at once, from this thread: the job's result is written by rename, never half


if __name__ == "__main__":
    worker_main(sys.argv[1])
