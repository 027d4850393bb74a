"""A tiny end-to-end run of the whole loop, through the library and through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.core.common import to_jsonable
from pipeline.core.runs import Link
from pipeline.data.datasets import DatasetConfig
from pipeline.experiment import ExperimentConfig, quickstart_config, run_experiment
from pipeline.privacy.shadows import AuditConfig


def tiny_config() -> ExperimentConfig:
    base = quickstart_config()
    return replace(
        base,
        dataset=DatasetConfig(limit=240),
        rounds=2,
        cardinality=1.0,
        generator_options=(("train_steps", 6), ("block_out_channels", [16, 32]), ("checkpoint_every", 3)),
        teacher=replace(base.teacher, epochs=2),
        distill=replace(base.distill, student=replace(base.distill.student, epochs=2), regen_every=1),
        audit=AuditConfig(n_shadows=4, bootstrap=20),
    )


def test_tiny_end_to_end_run(project):
    result = run_experiment(tiny_config(), project)
    metrics = json.loads((project.runs_dir / result.run_id / "metrics.json").read_text())
    for role in ("teacher", "student"):
        m = metrics[role]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["mia"]["auc"] <= 1.0
        assert {"auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr"} <= set(m["mia"])
        assert m["aop"] == pytest.approx(m["accuracy"] / (2 * m["mia"]["auc"]) ** 2)
    assert metrics["synthetic"]["rounds"] == 2
    registry = project.registry()
    run = registry.get(result.run_id)
    assert run.status == "done" and run.metrics["student_auc"] == metrics["student"]["mia"]["auc"]
    kinds = {r.kind for r in registry.list()}
    assert kinds == {"caption", "finetune", "generate", "experiment"}
    lineage = {(link.role, link.ref_kind) for _, _, link in registry.lineage(run.id)}
    assert {("data", "dataset"), ("captions", "captions"), ("generator", "run"),
            ("synthetic round 0", "run")} <= lineage
    events = (project.runs_dir / result.run_id / "events.jsonl").read_text().splitlines()
    assert any(json.loads(e).get("epoch_end") for e in events)
    # a second run on a pinned (curated) caption version reuses it as is, and the cached shadows
    again = run_experiment(replace(tiny_config(), store="digits", store_version=1), project)
    assert again.metrics["shadows"]["cached"] is True
    assert len(registry.list(kind="caption")) == 1
    assert Link("captions", "captions", "digits@1") in registry.get(again.run_id).links
    with pytest.raises(ValueError, match="versions 0..1, not 7"):
        run_experiment(replace(tiny_config(), store="digits", store_version=7), project)


def test_cli_run_from_a_config_file(tmp_path: Path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(to_jsonable(tiny_config())))
    assert main(["-q", "run", "--project", str(tmp_path / "p"), str(config)]) == 0
    out = capsys.readouterr().out
    assert "teacher" in out and "student" in out and "MIA AUC" in out
    config.write_text(json.dumps({"teacher": {"epochs": 2, "optimizer": "sgd"}}))
    assert main(["-q", "run", "--project", str(tmp_path / "p"), str(config)]) == 2
    assert "unknown fields ['optimizer']" in capsys.readouterr().err


def test_the_example_config_in_assets_is_the_quickstart():
    from pipeline.core.common import from_dict

    path = Path(__file__).resolve().parents[1] / "assets" / "quickstart.json"
    assert from_dict(ExperimentConfig, json.loads(path.read_text())) == quickstart_config()
