"""The processes of one command: one for a plain ``python -m pipeline ...``, several under
``accelerate launch`` (one per GPU, or ``--cpu --num_processes N``).

Work that splits into independent pieces (generation batches, shadow models) is shared out with
:meth:`Cluster.share`; every process writes its own files atomically, :meth:`Cluster.wait` is the
barrier, and the main process assembles the result from the files, so a distributed run leaves the
same folders as a single-process one. Built on Hugging Face Accelerate's :class:`PartialState`
(process group, device per process, ``split_between_processes``, ``wait_for_everyone``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

# a process may wait at a barrier while another trains a teacher or a generator for hours: the process
# group's timeout (torch's default is 10-30 minutes) must outlast any one stage
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Cluster:
    """This process's place among the command's processes (``rank`` of ``size``)."""

    rank: int = 0
    size: int = 1
    state: Any = None  # accelerate.PartialState when size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous share of ``items`` (all of them in a single process); shares
        differ in length by at most one and together cover ``items`` in order."""
        if not self.distributed:
            return list(items)
        with self.state.split_between_processes(list(items)) as mine:
            return list(mine)

    def wait(self) -> None:
        """Block until every process got here (a no-op in a single process)."""
        if self.distributed:
            self.state.wait_for_everyone()

    def broadcast(self, value: T) -> T:
        """The main process's ``value`` in every process (picklable objects)."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    # -- the main process leads, the others serve (see ``pipeline.cli.main``) -----------------------------
    def assign(self, task: str, **kwargs: Any) -> None:
        """From the main process: have every other process join ``task`` (a name the servers know)
        with these picklable arguments; the main process then does its own share. A no-op alone."""
        if self.distributed and self.is_main:
            self.broadcast((task, kwargs))

    def serve(self, handlers: dict[str, Callable[..., Any]]) -> None:
        """In the other processes: join each task the main process assigns, until it releases them."""
        while (task := self.broadcast(None)) is not None:
            name, kwargs = task
            handlers[name](cluster=self, **kwargs)
        self.wait()  # the last barrier: past it every process has finished its share and written its files

    def release(self) -> None:
        """From the main process, when its command ends: the serving processes return."""
        if self.distributed and self.is_main:
            self.broadcast(None)
            self.wait()  # the serving processes' last barrier; every process then ends with exit_process


SINGLE = Cluster()


def exit_process(code: int) -> NoReturn:
    """End a process of a launched command now, its output flushed, without tearing down the process group.

    A gloo (or NCCL) group torn down while the other processes exit too can abort a process
    ("terminate called without an active exception", SIGABRT) after all its work is done: it happened
    once in CI, after the final barrier, with ``destroy_process_group`` called first. The launcher then
    reports a failed command although every file is written. ``os._exit`` skips that teardown; the
    operating system closes the connections.
    """
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it
            pass
    os._exit(code)


def launched() -> bool:
    """Whether this process was started by ``accelerate launch`` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@lru_cache(maxsize=1)
def current() -> Cluster:
    """The cluster of this process: joins the process group on first use under ``accelerate launch``."""
    if not launched():
        return SINGLE
    import torch
    from accelerate import PartialState

    # gloo between CPU processes (``accelerate launch --multi_gpu`` on a machine without a GPU, or
    # ACCELERATE_USE_CPU=true); NCCL and one GPU per process otherwise
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    return Cluster(state.process_index, state.num_processes, state)
