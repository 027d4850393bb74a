"""Issue 10.16: stopping `studio` with SIGTERM stops the server it started, so a restart can bind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CEILING_S = 600  # waits end on the event; the ceiling only keeps a wedge from hanging CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate, process: subprocess.Popen) -> bool:
    end = time.monotonic() + CEILING_S
    while time.monotonic() < end:
        if predicate():
            return True
        if process.poll() is not None:
            return predicate()
        time.sleep(0.2)  # poll interval
    return False


@pytest.mark.slow
def test_sigterm_to_studio_stops_the_streamlit_child(tmp_path: Path):
    port = free_port()
    cli = subprocess.Popen([sys.executable, "-m", "pipeline", "studio", "--project", str(tmp_path),
                            "--port", str(port)], cwd=Path(__file__).resolve().parents[2],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
            except OSError:
                return False

        assert wait_for(healthy, cli), "the studio never came up"
        cli.send_signal(signal.SIGTERM)  # to the CLI only, as a service manager would
        cli.wait(timeout=CEILING_S)
        assert not port_open(port), "the Streamlit child is still serving after the CLI stopped"
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
