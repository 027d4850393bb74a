"""DP training of the generator (issue 24): Opacus' accountant calibrates the noise, ε spent stays within
the target, impossible budgets are refused, DP mode prompts with class names only and labels the student
with the generated classes, and a dataset's ledger adds up ε across runs with a warning past its budget."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import replace

import pytest
import torch
from test_scratch_generator import TINY, fit, grey_digits

from pipeline.core.project import Project
from pipeline.data.datasets import DatasetConfig
from pipeline.finetune import FinetuneConfig, finetune
from pipeline.generators.scratch import ScratchConfig, ScratchGenerator
from pipeline.privacy.accounting import (
    BudgetError,
    DPPart,
    calibrate,
    composed,
    ledger_summary,
    record_spend,
    set_budget,
    spent,
)

DP_TINY = replace(TINY, dp_epsilon=8.0, dp_noise_multiplicity=2, dp_physical_batch=5, checkpoint_every=0)
TINY_OPTIONS = (("train_steps", 3), ("batch_size", 8), ("block_out_channels", [8, 16]), ("norm_groups", 4),
                ("checkpoint_every", 0), ("dp_noise_multiplicity", 2))


# -- the accountant ------------------------------------------------------------------------------------------------
def test_calibrated_noise_spends_at_most_the_target():
    sigma = calibrate(4.0, 1e-3, 0.25, 20)
    assert 0.5 < sigma < 5
    assert 3.9 < spent([(sigma, 0.25, 20)], 1e-3) <= 4.0
    assert spent([(sigma * 2, 0.25, 20)], 1e-3) < 4.0  # more noise, less spent


def test_impossible_budget_is_refused_in_one_line():
    with pytest.raises(BudgetError, match="cannot be met with 10000 steps at sampling rate 0.5"):
        calibrate(0.01, 1e-5, 0.5, 10_000)


def test_parts_compose_through_the_accountant_below_the_sum():
    sigma = calibrate(2.0, 1e-4, 0.1, 50)
    parts = [DPPart(name, 2.0, 1e-4, "rdp", sigma, 0.1, 50, 1.0) for name in ("generator", "teacher")]
    total = composed(parts)
    assert total["parts"] == ["generator", "teacher"]
    assert 2.0 < total["epsilon"] < 4.0  # more than either part, less than adding the worst cases


# -- the DP scratch generator --------------------------------------------------------------------------------------
def test_dp_generator_trains_with_the_accountants_noise(tmp_path):
    images, labels = grey_digits()
    generator, metrics = fit(DP_TINY, tmp_path)
    record = metrics["privacy"]
    q = DP_TINY.batch_size / len(images)
    assert record["sample_rate"] == pytest.approx(q) and record["steps"] == DP_TINY.train_steps
    assert record["delta"] == pytest.approx(1 / (10 * len(images)))  # δ < 1/N by default
    assert record["noise_multiplier"] == pytest.approx(calibrate(8.0, record["delta"], q, DP_TINY.train_steps))
    assert record["epsilon"] <= record["target_epsilon"] == 8.0 and record["noise_multiplicity"] == 2
    assert metrics["final_loss"] is not None and len(generator.generate(["a"] * 3, [0, 1, 2], [0, 1, 2])) == 3


def test_dp_step_clips_each_example_and_adds_noise():
    """One DP step of a linear model: the update is the mean of clipped per-example gradients plus
    Opacus' noise; with the noise off (σ forced to 0) it is exactly the clipped mean."""
    from pipeline.generators.dp_sgd import DPSettings, DPStep

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    start = model.weight.detach().clone()
    step = DPStep(model, torch.optim.SGD(model.parameters(), lr=1.0), DPSettings(epsilon=8.0, max_grad_norm=0.5,
                  physical_batch=2), n=4, batch_size=4, planned_steps=1, seed=0)
    step.optimizer.noise_multiplier = 0.0
    x = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 0.01], [0, 0, 10.0]]).unsqueeze(1)  # (B, K=1, 3)

    def loss_fn(module, xs):
        return module(xs).sum()  # gradient = xs summed over K

    step.step(loss_fn, (x,))
    clipped = torch.stack([x[i, 0] * min(1.0, 0.5 / float(x[i, 0].norm())) for i in range(4)])
    assert torch.allclose(start - model.weight.detach(), clipped.sum(0, keepdim=True) / 4, atol=1e-6)


def test_impossible_generator_budget_refused_before_training(tmp_path):
    with pytest.raises(BudgetError, match="cannot be met"):
        fit(replace(DP_TINY, dp_epsilon=0.001, train_steps=500), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing trained, nothing saved


def test_dp_fields_are_checked_at_once():
    with pytest.raises(ValueError, match="unknown accountant"):
        ScratchConfig(dp_epsilon=1.0, dp_accountant="moments")
    assert ScratchGenerator.dp_fields == {"epsilon": "dp_epsilon", "delta": "dp_delta"}


# -- the stage: class prompts only, the ledger ----------------------------------------------------------------------
def _dp_finetune(project: Project, epsilon: float = 6.0, budget: float | None = None):
    config = FinetuneConfig(dataset=DatasetConfig(limit=40), options=TINY_OPTIONS, privacy="dp", epsilon=epsilon,
                            epsilon_budget=budget)
    return finetune(config, project)


def test_dp_mode_prompts_with_class_names_only(tmp_path):
    with pytest.raises(ValueError, match="class names only"):
        FinetuneConfig(store="digits", privacy="dp", epsilon=1.0)
    with pytest.raises(ValueError, match="only used with privacy=.dp."):
        FinetuneConfig(epsilon=1.0)
    project = Project.open(tmp_path / "project")
    result = _dp_finetune(project)
    prompts = json.loads((result.generator_dir.parent / "training_prompts.json").read_text())
    names = prompts["class_names"]
    assert {p for p in prompts["prompts"]} <= {f"a photo of a {n}" for n in names}
    assert result.metrics["privacy"]["epsilon"] <= 6.0


def test_ledger_adds_up_two_runs_and_warns_past_the_budget(tmp_path, caplog):
    project = Project.open(tmp_path / "project")
    first = _dp_finetune(project, epsilon=4.0, budget=6.0)
    fingerprint = next(link.ref for link in project.registry().get(first.run_id).links if link.role == "data")
    assert not ledger_summary(project.root, fingerprint)["over_budget"]
    with caplog.at_level(logging.WARNING, logger="pipeline.privacy.accounting"):
        second = _dp_finetune(project, epsilon=4.0)
    summary = ledger_summary(project.root, fingerprint)
    assert summary["runs"] == sorted([first.run_id, second.run_id])
    assert summary["total_epsilon"] == pytest.approx(first.metrics["privacy"]["epsilon"]
                                                     + second.metrics["privacy"]["epsilon"])
    assert summary["over_budget"] and "privacy budget exceeded" in caplog.text


def test_ledger_replaces_a_rerecorded_part_and_checks_the_budget(tmp_path):
    part = DPPart("generator", 1.5, 1e-5, "rdp", 1.0, 0.1, 10, 1.0)
    record_spend(tmp_path, "fp", "run-a", part, "digits")
    record_spend(tmp_path, "fp", "run-a", dataclasses.replace(part, epsilon=2.0), "digits")
    assert ledger_summary(tmp_path, "fp")["total_epsilon"] == 2.0
    with pytest.raises(ValueError, match="positive"):
        set_budget(tmp_path, "fp", 0.0)
    assert ledger_summary(tmp_path, "other") is None


def test_cli_refuses_an_impossible_budget_and_shows_the_ledger(tmp_path, capsys):
    from pipeline.cli.main import main

    base = ["-q", "finetune", "--project", str(tmp_path), "--limit", "40", "--batch-size", "8",
            "--option", "block_out_channels=[8, 16]", "--option", "norm_groups=4", "--option", "checkpoint_every=0",
            "--option", "dp_noise_multiplicity=2", "--privacy", "dp"]
    assert main([*base, "--steps", "400", "--epsilon", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: budget ε=0.01") and "cannot be met" in err[0]
    assert main([*base, "--steps", "2", "--epsilon", "3", "--epsilon-budget", "1"]) == 0
    run_id = capsys.readouterr().out.split("[run ")[1].split("]")[0]
    assert main(["runs", "show", "--project", str(tmp_path), run_id]) == 0
    captured = capsys.readouterr()
    assert "privacy ledger of dataset digits" in captured.out and "of budget 1" in captured.out
    assert "warning: privacy budget exceeded" in captured.err


# -- the student: labels from the generator's class conditioning ------------------------------------------------------
def test_student_learns_the_generated_classes_without_a_teacher(tmp_path, fake_generator):
    from pipeline.captions.prompts import PromptPool
    from pipeline.classifiers.train import TrainConfig
    from pipeline.distill import DistillConfig, train_student
    from pipeline.generate import GenerationPlan, generate_set

    with pytest.raises(ValueError, match="unknown student labels"):
        DistillConfig(labels="nope")
    pool = PromptPool(("zero", "one"), (("a photo of a zero",), ("a photo of a one",)), "classnames")
    synthetic = generate_set(fake_generator(), pool, GenerationPlan(total=12, seed=0, round=0, batch_size=6),
                             tmp_path / "round-0")
    recipe = TrainConfig(epochs=1, batch_size=4, image_size=8, min_steps=0, patience_share=None, device="cpu")
    result = train_student(None, [synthetic], DistillConfig(student=recipe, labels="class"), 2, tmp_path)
    assert result.metrics["labels"] == "class" and result.checkpoint.exists()


# -- the whole loop in DP mode -----------------------------------------------------------------------------------------
def _dp_experiment(tiny_config, **fields):
    options = dict(tiny_config.generator_options)
    options.update(block_out_channels=[8, 16], norm_groups=4, train_steps=3, batch_size=16, dp_noise_multiplicity=2)
    return replace(tiny_config, generator_options=tuple(options.items()), privacy="dp", epsilon=8.0,
                   methods=(), **fields)


@pytest.mark.slow  # the tiny experiment with DP generators in the run and its 2 pipeline shadows (~1-2 min alone)
def test_dp_experiment_records_the_guarantee_and_keeps_real_images_off_the_student_path(tmp_path, tiny_config):
    from pipeline.experiment import ExperimentConfig, run_experiment

    with pytest.raises(ValueError, match="copy gate"):
        replace(tiny_config, privacy="dp", epsilon=1.0, copy_gate=1)
    with pytest.raises(ValueError, match="class names only"):
        replace(tiny_config, privacy="dp", epsilon=1.0, store="digits")
    config = _dp_experiment(tiny_config)
    assert isinstance(config, ExperimentConfig) and config.student_distill().labels == "class"
    project = Project.open(tmp_path / "project")
    result = run_experiment(config, project)
    privacy = result.metrics["privacy"]
    generator = privacy["parts"]["generator"]
    assert generator["epsilon"] <= 8.0 and generator["steps"] == 3 and generator["accountant"] == "rdp"
    assert privacy["student"]["epsilon"] == generator["epsilon"] and privacy["student"]["labels"] == "class"
    assert result.metrics["student"]["train"]["labels"] == "class"
    assert privacy["ledger"]["total_epsilon"] == pytest.approx(generator["epsilon"])
    record = project.registry().get(result.run_id)
    assert not [link for link in record.links if link.role == "captions"]  # nothing was captioned
    manifest = (record.run_dir / "synthetic" / "round-0" / "manifest.jsonl").read_text().splitlines()
    assert {json.loads(line)["prompt"] for line in manifest} <= {f"a photo of a {k}" for k in range(10)}
    assert record.metrics["student_epsilon"] == generator["epsilon"]
    # the audit names the student's guarantee (formal ε beside its empirical ε on the plane and in `runs show`)
    student = result.metrics["student"]
    assert student["formal_epsilon"] == generator["epsilon"] and student["formal_delta"] == generator["delta"]
    assert record.metrics["student_formal_epsilon"] == generator["epsilon"]
    assert student["mia"]["empirical_epsilon_delta"] == generator["delta"]


def test_dp_teacher_records_its_part_and_composes_with_the_generator(tmp_path):
    """dp_labels="dp-teacher": the teacher's own DP-SGD record, and the student's total composed by the
    accountant over generator and teacher: more than either, less than their sum."""
    from pipeline.classifiers.train import TrainConfig
    from pipeline.data.tensors import TensorData
    from pipeline.distill import train_private_teacher
    from pipeline.methods.dp import DPConfig

    gen = torch.Generator().manual_seed(0)
    members = TensorData(torch.rand(64, 3, 8, 8, generator=gen), torch.arange(64) % 2)
    recipe = TrainConfig(epochs=2, batch_size=8, min_steps=0, patience_share=None, device="cpu")
    trained = train_private_teacher(members, None, recipe, 2, tmp_path, DPConfig(epsilon=3.0, accountant="rdp"))
    teacher = DPPart(**{k: v for k, v in trained.metrics["privacy"].items() if k in DPPart.__dataclass_fields__})
    assert teacher.part == "teacher" and teacher.epsilon <= 3.0 and teacher.delta == pytest.approx(1 / 640)
    assert teacher.sample_rate == pytest.approx(32 / 64) and teacher.steps >= 2  # 4x the recipe's batch
    sigma = calibrate(4.0, teacher.delta, 0.25, 10)
    generator = DPPart("generator", spent([(sigma, 0.25, 10)], teacher.delta), teacher.delta, "rdp", sigma, 0.25,
                       10, 1.0)
    total = composed([generator, teacher])
    assert max(generator.epsilon, teacher.epsilon) < total["epsilon"] < generator.epsilon + teacher.epsilon
