"""Issue 10.12: clear, truthful one-line messages for commands pointed at the wrong thing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.cli.main import main
from pipeline.core.project import Project


def one_line_error(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_demo_needs_a_finished_experiment(tmp_path: Path, capsys):
    registry = Project.open(tmp_path).registry()
    caption = registry.create("caption", {})
    registry.start(caption.id)
    registry.finish(caption.id)
    running = registry.create("experiment", {})
    registry.start(running.id)
    for run in (caption, running):
        one_line_error(capsys, ["demo", "--project", str(tmp_path), "--run", run.id], "needs a finished experiment")


def test_cancelling_a_finished_run_says_so(tmp_path: Path, capsys):
    registry = Project.open(tmp_path).registry()
    run = registry.create("experiment", {})
    registry.start(run.id)
    registry.finish(run.id)
    one_line_error(capsys, ["runs", "cancel", "--project", str(tmp_path), run.id], "already done; there is nothing")
    assert registry.get(run.id).status == "done"
    queued = registry.create("experiment", {})
    assert main(["runs", "cancel", "--project", str(tmp_path), queued.id]) == 0
    assert registry.get(queued.id).status == "cancelled"


def test_generate_from_a_missing_generator_folder(tmp_path: Path, capsys):
    one_line_error(capsys, ["generate", "--project", str(tmp_path), "--generator", str(tmp_path / "runs/nope/generator")],
                   "no such folder")


def test_a_closed_pipe_is_not_a_traceback(tmp_path: Path):
    registry = Project.open(tmp_path).registry()
    run = registry.create("experiment", {"notes": ["y" * 1000] * 400})  # far more than a pipe buffer
    shell = f"{sys.executable} -m pipeline runs show --project {tmp_path} {run.id} | head -c 10"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.stdout and done.returncode == 0 and "broken pipe" not in done.stderr.lower(), done.stderr


def test_a_run_that_notices_its_cancel_ends_quietly(tmp_path: Path, capsys, monkeypatch):
    """A cancel seen at a progress report (before the SIGINT arrives, as under load) is not a traceback."""
    from pipeline.core.runs import RunCancelled

    def cancelled(_args):
        raise RunCancelled("run x was cancelled")

    import importlib

    cli = importlib.import_module("pipeline.cli.main")
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, "quickstart", cancelled))
    assert cli.main(["quickstart", "--project", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "cancelled: run x was cancelled"


def _with_func(parser, command: str, func):
    for action in parser._subparsers._group_actions:
        action.choices[command].set_defaults(func=func)
    return parser
