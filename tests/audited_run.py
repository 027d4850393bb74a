"""One finished, audited tiny experiment shared by the studio's leak-explorer and synthetic-set tests.

``run_experiment(tiny_config(), ...)`` takes about half a minute, so it runs once per test session:
the first caller builds it under the session's temp folder, later callers (another test file) reuse it.
The tests only read the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_experiment import tiny_config

from pipeline.core.project import Project
from pipeline.experiment import run_experiment

_RUNS: dict[str, tuple[Path, str]] = {}  # session temp folder -> (project root, experiment run id)


def audited_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, str]:
    """(project, experiment run id) of a finished tiny experiment with its audit."""
    session = str(tmp_path_factory.getbasetemp())
    if session not in _RUNS:
        project = Project.open(tmp_path_factory.mktemp("audited") / "project")
        _RUNS[session] = (project.root, run_experiment(tiny_config(), project).run_id)
    root, run_id = _RUNS[session]
    return Project.open(root), run_id
