"""Start the studio (Streamlit) or the stakeholder demo (Gradio) as a child process, bound to
localhost unless told otherwise. The UIs live in ``studio/``; this module only builds their command
lines, so the library itself never imports streamlit or gradio."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the repository root (pipeline/core/launch.py)
STUDIO_APP = PACKAGE_ROOT / "studio" / "app.py"


def studio_command(project_root: Path | str, host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """``python -m streamlit run studio/app.py ...`` for a project: headless, no usage statistics, no
    developer menu (no "Deploy" button)."""
    return [sys.executable, "-m", "streamlit", "run", str(STUDIO_APP),
            "--server.headless", "true", "--server.address", host, "--server.port", str(port),
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
            "--global.disableWidgetStateDuplicationWarning", "true",  # see studio/views/runs.py
            "--", "--project", str(Path(project_root).resolve())]


def demo_command(project_root: Path | str, run_id: str, host: str = "127.0.0.1", port: int = 7860) -> list[str]:
    """``python -m studio.demo ...``: the Gradio page of one finished run."""
    return [sys.executable, "-m", "studio.demo", "--project", str(Path(project_root).resolve()), "--run", run_id,
            "--host", host, "--port", str(port)]


def child_env() -> dict[str, str]:
    """The environment of a UI process: this package importable, no telemetry."""
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "GRADIO_ANALYTICS_ENABLED": "False"}


def port_taken(host: str, port: int) -> str | None:
    """Why a server cannot listen on ``host``:``port`` (another one holds it, an unknown host), from one
    bind; None when it can."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        return f"unknown host ({err.strerror})"
    with socket.socket(family, kind, proto) as probe:
        # as uvicorn and tornado do: a port whose last connections are in TIME_WAIT is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            return err.strerror or str(err)
    return None


def check_port(what: str, host: str, port: int) -> None:
    """Refuse, in one line and before anything starts, a port another server holds: the demo otherwise
    fails with a Gradio traceback half a minute later."""
    reason = port_taken(host, port)
    if reason:
        raise OSError(f"cannot start the {what} on {host}:{port}: {reason} (another studio or demo?); pass a "
                      "free --port, or stop the server that holds it")


def _run(command: list[str], what: str, host: str, port: int, grace_s: float = 10.0) -> int:
    check_port(what, host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("the %s listens on %s: anyone who can reach this machine can open it", what, host)
    logger.info("starting the %s on http://%s:%d", what, host, port)
    child = subprocess.Popen(command, env=child_env())
    # SIGTERM / SIGHUP to this process (a service manager, `kill`, a closed terminal) go to the child
    # too, and we wait for it: otherwise it keeps serving and a restart finds the port taken. The
    # handler only forwards; waiting happens here (Popen.wait is not re-entrant from a handler).
    stop_asked: list[float] = []

    def forward(sig: int, _frame: object) -> None:
        stop_asked.append(time.monotonic())
        if child.poll() is None:
            child.send_signal(sig)

    forwarded = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        while True:
            try:
                return child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if stop_asked and time.monotonic() - stop_asked[0] > grace_s:
                    child.kill()
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group; the child stops on its own
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch_studio(project_root: Path | str, host: str = "127.0.0.1", port: int = 8501) -> int:
    """Run the studio on ``project_root`` until interrupted; returns the exit code."""
    return _run(studio_command(project_root, host, port), "studio", host, port)


def launch_demo(project_root: Path | str, run_id: str, host: str = "127.0.0.1", port: int = 7860) -> int:
    """Run the stakeholder demo of ``run_id`` until interrupted; returns the exit code."""
    return _run(demo_command(project_root, run_id, host, port), "demo", host, port)
