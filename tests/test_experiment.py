"""A tiny end-to-end run of the whole loop, through the library and through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.core.common import to_jsonable
from pipeline.core.runs import Link
from pipeline.experiment import ExperimentConfig, run_experiment
from pipeline.presets import quickstart_config


def test_tiny_end_to_end_run(project, tiny_config):
    run_id = run_experiment(tiny_config, project).run_id  # its own project: it adds a second run below
    metrics = json.loads((project.runs_dir / run_id / "metrics.json").read_text())
    n_test = metrics["dataset"]["test"]  # 240 real test images
    for role in ("teacher", "student"):
        m = metrics[role]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["mia"]["auc"] <= 1.0
        assert {"auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr"} <= set(m["mia"])
        assert m["aop"] == pytest.approx(m["accuracy"] / (2 * m["mia"]["auc"]) ** 2)
        # training lowered the loss (teacher 2.42 -> 2.33, student KD 0.068 -> 0.019); the accuracy counts real
        # test images; the AUC's interval is a bootstrap around it. Two epochs leave the tiny models at chance
        # (both call every digit a 1: 22/240), so nothing leaks and the audit must say so (AUC 0.503, 0.507)
        assert m["history"][-1]["loss"] < m["history"][0]["loss"]
        assert _counts(m["accuracy"], n_test)
        low, high = m["mia"]["auc_ci95"]
        assert low < m["mia"]["auc"] < high and abs(m["mia"]["auc"] - 0.5) < 0.1
        # nothing leaks: the attack proves little privacy lost (empirical ε, at the default δ); no guarantee
        assert 0.0 <= m["mia"]["empirical_epsilon"] < 1.0 and m["mia"]["empirical_epsilon_delta"] == 1e-5
        assert m["formal_epsilon"] is None and "empirical_epsilon" in m["mia_modes"]["transfer"]["rmia"]
    # the recorded accuracy is the saved teacher's on the test split; the student agrees with the teacher
    # on its held-out synthetic images (1.0)
    assert _test_accuracy(project.runs_dir / run_id / "teacher.pt", tiny_config) == pytest.approx(
        metrics["teacher"]["accuracy"], abs=1e-6)
    assert metrics["student"]["history"][-1]["val_accuracy"] >= 0.9
    assert metrics["synthetic"]["rounds"] == 2
    fidelity = metrics["fidelity"]
    assert len(fidelity["rounds"]) == 2 and 0.0 <= fidelity["class_fidelity"] <= 1.0
    assert {"frechet_distance", "precision", "recall", "density", "coverage"} <= set(fidelity)
    assert 0.0 <= fidelity["cas"] <= 1.0 and "hard labels" in fidelity["cas_recipe"]  # CAS on round 0
    assert _counts(fidelity["cas"], n_test)  # measured on the real test images (17/240)
    round_dir = project.runs_dir / run_id / "synthetic" / "round-1"
    assert json.loads((round_dir / "fidelity.json").read_text()) == fidelity["rounds"][1]
    # the memorisation audit of every round: per-image nearest member / non-member, copies, C_T
    memorisation = metrics["memorisation"]
    assert json.loads((round_dir / "memorisation.json").read_text()) == memorisation["rounds"][1]
    neighbours = [json.loads(line) for line in (round_dir / "neighbours.jsonl").read_text().splitlines()]
    assert len(neighbours) == metrics["synthetic"]["images_per_round"]
    members = set(json.loads((project.runs_dir / run_id / "membership.json").read_text())["members"])
    assert all(n["features"]["member"] in members and n["pixels"]["nonmember"] not in members for n in neighbours)
    assert memorisation["copies"] == sum(r["features"]["copies"] for r in memorisation["rounds"])
    assert memorisation["ct"] is not None and 0.0 <= memorisation["nonmember_flag_rate"] <= 1.0
    # the data-free activation-maximisation student, on the same plane with the same audit: transfer mode
    # (the teacher's shadows) and its own pipeline (the GKD shadows' generators, rounds and teachers reused)
    am = metrics["methods"]["am"]
    assert am["method"] == "am" and am["reads_real_training_images"] is False and am["epsilon"] is None
    assert set(am["mia_modes"]) == {"transfer", "pipeline"} and am["mia_modes"]["pipeline"]["n_shadows"] == 2
    assert 0.0 <= am["accuracy"] <= 1.0 and am["mia"]["mia_mode"] == "pipeline" and "auc_ci95" in am["mia"]
    assert _counts(am["accuracy"], n_test) and am["mia"]["auc_ci95"][0] < am["mia"]["auc"] < am["mia"]["auc_ci95"][1]
    assert am["mia"]["shadow_recipe"] == "am pipeline"
    audit_run = project.registry().list(kind="audit")[0]
    assert json.loads((audit_run.run_dir / "metrics.json").read_text())["shadows"]["pipeline am"]["n"] == 2
    work = list((project.root / "shadows" / "pipeline-work").glob("*/shadow-*"))
    assert len(work) == 2 and all(len(list(w.glob("generator/backend.json"))) == 1 for w in work)
    assert all((w / "methods").is_dir() and not list(w.glob("methods/*/train/generator")) for w in work)
    assert am["aop"] == pytest.approx(am["accuracy"] / (2 * am["mia"]["auc"]) ** 2)
    registry = project.registry()
    run = registry.get(run_id)
    assert run.status == "done" and run.metrics["student_auc"] == metrics["student"]["mia"]["auc"]
    assert run.metrics["student_formal_epsilon"] == "none"  # as ``runs show`` lists it
    assert run.metrics["teacher_empirical_epsilon"] == metrics["teacher"]["mia"]["empirical_epsilon"]
    kinds = {r.kind for r in registry.list()}
    assert kinds == {"caption", "finetune", "generate", "teacher", "student", "method", "audit", "experiment"}
    lineage = {(link.role, link.ref_kind) for _, _, link in registry.lineage(run.id)}
    assert {("data", "dataset"), ("captions", "captions"), ("generator", "run"),
            ("synthetic round 0", "run"), ("teacher", "run"), ("student", "run")} <= lineage
    assert Link("audited", "run", run.id) in registry.list(kind="audit")[0].links
    # both audit modes for the student, each labelled, with every attack; the headline (RMIA) leads
    student = metrics["student"]
    assert student["mia"]["mia_mode"] == "pipeline" and student["mia"]["attack"] == "rmia"
    assert set(student["mia_modes"]) == {"transfer", "pipeline"}
    assert student["mia_modes"]["transfer"]["shadow_recipe"] == "teacher"
    assert metrics["teacher"]["mia"]["mia_mode"] == "transfer"
    for entry in student["mia_modes"].values():
        assert {"lira", "rmia", "loss"} <= set(entry) and entry["fpr_floor"] == pytest.approx(1 / 109)
        assert entry["tpr_at_0.1pct_fpr"] is None  # 109 non-members: 0.1 % FPR is below the floor
    assert student["mia"]["auc"] == student["mia"]["rmia"]["auc"]
    assert "skipped" in student["mia_modes"]["pipeline"]["lira"]  # 2 pipeline shadows are too few for LiRA
    vulnerable = json.loads(Path(metrics["audit"]["vulnerable"]).read_text())
    assert len(vulnerable["student"]["pipeline"]["members"]) == 50
    events = (project.runs_dir / run_id / "events.jsonl").read_text().splitlines()
    assert any(json.loads(e).get("epoch_end") for e in events)
    # a second run on a pinned (curated) caption version reuses it as is, and the cached shadows
    again = run_experiment(replace(tiny_config, store="digits", store_version=1), project)
    assert again.metrics["audit"]["shadows"]["transfer"]["trained"] == 0
    assert again.metrics["audit"]["shadows"]["pipeline"]["trained"] == 0
    assert len(registry.list(kind="caption")) == 1
    assert Link("captions", "captions", "digits@1") in registry.get(again.run_id).links
    with pytest.raises(ValueError, match="versions 0..1, not 7"):
        run_experiment(replace(tiny_config, store="digits", store_version=7), project)


def _counts(accuracy: float, n: int) -> bool:
    """Whether ``accuracy`` is a count of ``n`` images (k / n), as an accuracy measured on them is."""
    return abs(accuracy * n - round(accuracy * n)) < 1e-3


def _test_accuracy(weights: Path, config) -> float:
    """Accuracy on the real test split of the teacher saved at ``weights``, measured here."""
    from pipeline.classifiers.models import build_classifier
    from pipeline.classifiers.train import evaluate
    from pipeline.core import checkpoints
    from pipeline.data.context import DataContext

    data = DataContext.open(config.dataset)
    model = build_classifier(config.teacher, data.num_classes)
    model.load_state_dict(checkpoints.load(weights))
    return evaluate(model, data.tensors("test", config.teacher.image_size), data.num_classes)["accuracy"]


def test_cli_run_from_a_config_file(tmp_path: Path, capsys, tiny_config):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(to_jsonable(tiny_config)))
    assert main(["-q", "run", "--project", str(tmp_path / "p"), str(config)]) == 0
    out = capsys.readouterr().out
    assert "teacher" in out and "student" in out and "MIA AUC" in out and "pipeline" in out and "rmia *" in out
    config.write_text(json.dumps({"teacher": {"epochs": 2, "optimizer": "sgd"}}))
    assert main(["-q", "run", "--project", str(tmp_path / "p"), str(config)]) == 2
    assert "teacher.optimizer is not a field of TrainConfig; valid: " in capsys.readouterr().err


def test_the_example_config_in_assets_is_the_quickstart():
    from pipeline.core.common import from_dict

    path = Path(__file__).resolve().parents[1] / "assets" / "quickstart.json"
    assert from_dict(ExperimentConfig, json.loads(path.read_text())) == quickstart_config()


def test_pipeline_shadows_rerun_the_pipeline_and_their_students_read_no_real_image(project, monkeypatch, tiny_config):
    import pipeline.replay as replay
    from pipeline.data.context import DataContext
    from pipeline.data.datasets import ImageDataset

    original_student, original_iter = replay.train_student, ImageDataset.iter_images
    original_tensors = DataContext.tensors
    calls = {"student": 0}
    in_student = [False]

    def guarded_iter(self, *args, **kwargs):
        assert not in_student[0], "a shadow student touched a real image"
        return original_iter(self, *args, **kwargs)

    def guarded_tensors(self, *args, **kwargs):
        assert not in_student[0], "a shadow student read real images"
        return original_tensors(self, *args, **kwargs)

    def spy_student(*args, **kwargs):
        calls["student"] += 1
        in_student[0] = True
        try:
            return original_student(*args, **kwargs)
        finally:
            in_student[0] = False

    monkeypatch.setattr(ImageDataset, "iter_images", guarded_iter)
    monkeypatch.setattr(DataContext, "tensors", guarded_tensors)
    monkeypatch.setattr(replay, "train_student", spy_student)
    result = run_experiment(tiny_config, project)
    assert calls["student"] == 2  # one shadow student per pipeline shadow
    shadows = result.metrics["audit"]["shadows"]["pipeline"]
    files = sorted(Path(shadows["directory"]).glob("shadow-*.npz"))
    shadow_in = np.stack([np.load(f)["shadow_in"] for f in files])
    # each population example is in about half of the pipeline shadows; each shadow has the member-set size
    assert shadow_in.shape[0] == 2 and (shadow_in.sum(1) == result.metrics["dataset"]["members"]).all()
    assert set(np.unique(shadow_in.sum(0))) <= {1, 2} and abs(shadow_in.mean() - 0.5) < 0.01
    # every pipeline shadow trained its own generator and synthetic rounds on its half
    work = project.root / "shadows" / "pipeline-work"
    assert len(list(work.glob("*/shadow-*/generator/backend.json"))) == 2
    assert len(list(work.glob("*/shadow-*/synthetic/round-*/manifest.jsonl"))) == 4


def test_audit_cli_reaudits_a_finished_run_from_cached_shadows(project, capsys, tiny_config):
    result = run_experiment(tiny_config, project)
    root = str(project.root)
    assert main(["-q", "audit", "--project", root, "--run", result.run_id, "--attack", "rmia,loss",
                 "--mode", "transfer"]) == 0
    out = capsys.readouterr().out
    assert "transfer" in out and "rmia *" in out and "pipeline" not in out.split("student / teacher")[0]
    audits = project.registry().list(kind="audit")
    assert len(audits) == 2 and Link("audited", "run", result.run_id) in audits[0].links
    assert audits[0].metrics["student_mode"] == "transfer"
    again = json.loads((audits[0].run_dir / "metrics.json").read_text())
    assert again["shadows"]["transfer"]["trained"] == 0  # re-scored from the cache
    assert main(["-q", "audit", "--project", root, "--run", result.run_id, "--attack", "nope"]) == 2
    assert "valid: lira, loss, rmia" in capsys.readouterr().err
    caption_run = project.registry().list(kind="caption")[0].id
    assert main(["-q", "audit", "--project", root, "--run", caption_run]) == 2


def test_pipeline_shadows_in_worker_processes_match_one_process(tmp_path: Path, tiny_config):
    """Two worker processes give the pipeline shadows one process gives (in float32: bfloat16 rounds a
    one-thread and a two-thread run differently, by about 1e-2 in the logits)."""
    from pipeline.core.project import Project

    fp32 = replace(tiny_config, teacher=replace(tiny_config.teacher, amp=False),
                   distill=replace(tiny_config.distill, student=replace(tiny_config.distill.student, amp=False)),
                   generator_options={**tiny_config.generator_options, "precision": "no"})
    logits = {}
    for workers in (1, 2):
        config = replace(fp32, audit=replace(fp32.audit, workers=workers))
        metrics = run_experiment(config, Project.open(tmp_path / f"workers-{workers}")).metrics
        folder = Path(metrics["audit"]["shadows"]["pipeline"]["directory"])
        logits[workers] = np.stack([np.load(f)["logits"] for f in sorted(folder.glob("shadow-*.npz"))])
    assert logits[1].shape == logits[2].shape == (2, 2, 219, 10)
    np.testing.assert_allclose(logits[1], logits[2], rtol=1e-3, atol=1e-3)  # thread counts may differ
    assert np.abs(logits[1][0] - logits[1][1]).max() > 1e-2  # the two shadows differ: the check can fail
