"""Issue 10.9: every config field is checked before any stage runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.core.common import to_jsonable
from pipeline.presets import quickstart_config


@pytest.mark.parametrize("path, value, message", [
    (("teacher", "epochs"), 0, "epochs must be at least 1, got 0"),
    (("distill", "student", "batch_size"), 0, "batch_size must be at least 1"),
    (("teacher", "lr"), -1.0, "lr must be positive"),
    (("cardinality",), 0, "cardinality must be positive"),
    (("rounds",), 0, "rounds must be at least 1"),
    (("distill", "regen_every"), 0, "regen_every must be at least 1"),
    (("distill", "alpha"), 1.5, r"alpha must be in \[0, 1\]"),
    (("generator_options",), [["train_steps", 0]], "train_steps must be at least 1"),
    (("generator_options",), [["sampler", "euler"]], "unknown sampler"),
])
def test_a_bad_field_fails_in_one_line_before_anything_runs(tmp_path: Path, capsys, path, value, message):
    config = to_jsonable(quickstart_config())
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    file = tmp_path / "config.json"
    file.write_text(json.dumps(config))
    project = tmp_path / "project"
    assert main(["-q", "run", "--project", str(project), str(file)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert not (project / "runs").exists() or not any((project / "runs").iterdir())  # nothing started
