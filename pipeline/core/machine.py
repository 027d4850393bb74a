"""What this machine can do, measured rather than assumed: how many cores this process may use, and
whether they really run in parallel (two vCPUs can share one physical core: two processes then run
at about 1.1x the speed of one, and a second worker only competes for the same core); whether the
Hugging Face Hub can be reached."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from functools import lru_cache
from urllib.parse import urlsplit

PARALLEL_THRESHOLD = 1.3  # below this speed-up of all cores over one, extra worker processes do not pay
# One connection attempt to the Hub (name lookup included): without a network, huggingface_hub retries
# every file for minutes before it gives up.
HUB_PROBE_TIMEOUT_S = 3.0


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@lru_cache(maxsize=1)
def parallel_speedup(reps: int = 12, n: int = 640) -> float:
    """Throughput of every core at once over one core, from single-threaded matrix products run in one
    thread and then in as many threads as cores (about 0.2 s; 1.0 on one core)."""
    import torch

    count = cores()
    if count < 2:
        return 1.0
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    a = torch.randn(n, n)

    def work() -> None:
        for _ in range(reps):
            torch.mm(a, a)

    try:
        work()  # warm-up
        start = time.perf_counter()
        work()
        one = time.perf_counter() - start
        threads = [threading.Thread(target=work) for _ in range(count)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return count * one / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


def worker_processes(requested: int | None, jobs: int, on_gpu: bool) -> int:
    """Processes for independent jobs (pipeline shadows): as asked; else one on a GPU (which one process
    keeps busy) or where the cores do not really run in parallel; else one per core, at most one per job."""
    if requested is not None:
        return max(1, requested)
    if on_gpu or cores() < 2 or parallel_speedup() < PARALLEL_THRESHOLD:
        return 1
    return max(1, min(jobs, cores()))


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub (``HF_ENDPOINT``, through the proxy the environment names) cannot be reached,
    from one connection attempt of at most ``timeout`` seconds; None when it answers."""
    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    host, port = parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 80
    answer: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(None)
        except OSError as err:
            answer.append(f"{host}:{port}: {err}")

    # in a thread: create_connection's timeout does not bound the name lookup
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return answer[0] if answer else f"{host}:{port}: no answer in {timeout:g} s"
