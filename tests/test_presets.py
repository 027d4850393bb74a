"""Presets chosen from the data and the device, the time estimate, and `run --dataset`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import write_image_folder

from pipeline.cli.main import main
from pipeline.cli.stages import PRESET_NAMES
from pipeline.core.common import from_dict
from pipeline.data.datasets import DatasetConfig, load_dataset, parse_dataset_spec
from pipeline.experiment import ExperimentConfig
from pipeline.presets import (
    PRESETS,
    DataProfile,
    estimate_stages,
    estimated_wall,
    preset_config,
    quickstart_config,
)

DATA = DatasetConfig(source="imagefolder", path="/data/x")


def profile(side: int, channels: int = 3, members: int = 700, device: str = "cpu") -> DataProfile:
    return DataProfile(side=side, channels=channels, members=members, classes=10, device=device)


def test_cli_lists_the_same_presets_as_the_library():
    assert PRESET_NAMES == PRESETS


def test_tiny_images_get_the_digits_recipe_and_the_quickstart_is_that_preset():
    config, why = preset_config(DatasetConfig(), profile(8, 1, 644), "standard")
    assert config.teacher.model == "tiny-cnn" and config.teacher.augment == ()
    assert dict(config.generator_options) == {}
    assert replace(config, captioner=quickstart_config().captioner, methods=quickstart_config().methods,
                   audit=quickstart_config().audit) == quickstart_config()
    assert quickstart_config().audit == replace(config.audit, method_modes=("transfer",))
    assert config.captioner.class_template == "a photo of a {label}"  # dataset-neutral unless it knows better
    assert any("tiny-cnn" in line for line in why)


def test_small_images_get_a_resnet_and_the_generator_recipe_for_their_side():
    config, why = preset_config(DATA, profile(28, 1), "standard")
    assert config.teacher.model == "small-resnet" and config.teacher.image_size is None
    assert config.distill.student.model == "small-resnet" and config.distill.student.seed != config.teacher.seed
    options = dict(config.generator_options)
    assert options["patch"] == 2 and options["sampler"] == "dpm" and options["guidance_scale"] > 1
    assert set(config.audit.modes) == {"transfer", "pipeline"} and config.audit.pipeline_shadows == 2
    assert config.dataset == DATA and len(why) >= 5


def test_large_images_are_modelled_at_64_px():
    config, _ = preset_config(DATA, profile(224), "standard")
    assert config.teacher.image_size == 64 and dict(config.generator_options)["resolution"] == 64


def test_a_gpu_gets_more_shadows_rounds_and_generator_steps():
    cpu, _ = preset_config(DATA, profile(32), "standard")
    gpu, _ = preset_config(DATA, profile(32, device="cuda"), "standard")
    assert gpu.audit.n_shadows > cpu.audit.n_shadows and gpu.rounds > cpu.rounds
    assert dict(gpu.generator_options)["train_steps"] > dict(cpu.generator_options)["train_steps"]


def test_quick_halves_training_and_audits_the_student_with_transfer_shadows_only():
    standard, _ = preset_config(DATA, profile(32), "standard")
    quick, why = preset_config(DATA, profile(32), "quick")
    assert quick.teacher.epochs < standard.teacher.epochs
    assert dict(quick.generator_options)["train_steps"] < dict(standard.generator_options)["train_steps"]
    assert quick.audit.modes == ("transfer",) and any("transfer mode only" in line for line in why)
    assert quick.cas_epochs == 0 and standard.cas_epochs > 0


def test_paper_is_tckrs_recipe():
    config, _ = preset_config(DATA, profile(32), "paper")
    options = dict(config.generator_options)
    assert config.generator == "sd-lora" and options["rank"] == 4 and options["resolution"] == 224
    assert options["num_inference_steps"] == 20 and options["guidance_scale"] == 2.0
    assert config.cardinality == 20 and config.audit.n_shadows == 256
    assert config.distill.student.model.startswith("mobilenetv3")


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="valid: quick, standard, paper"):
        preset_config(DATA, profile(32), "huge")


def test_profile_reads_side_channels_and_counts_from_the_data(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10, size=20)
    dataset = load_dataset(parse_dataset_spec(f"imagefolder:{root}"))
    found = DataProfile.of(dataset, device="cpu")
    assert (found.side, found.channels, found.classes, found.device) == (20, 3, 3, "cpu")
    assert found.members == len(dataset.membership().members)
    grey = DataProfile.of(load_dataset(DatasetConfig(limit=100)), device="cpu")
    assert (grey.side, grey.channels) == (8, 1)


def test_estimate_times_every_stage_from_a_few_steps():
    small = profile(8, 1, 40)
    config, _ = preset_config(DatasetConfig(), small, "standard")
    config = replace(config, teacher=replace(config.teacher, batch_size=8),
                     distill=replace(config.distill, student=replace(config.distill.student, batch_size=8)))
    stages = estimate_stages(config, small)
    names = [s.stage for s in stages]
    assert names == ["generator", "generate", "teacher", "student", "fidelity", "audit", "pipeline shadows"]
    assert all(s.seconds > 0 for s in stages)
    assert estimated_wall(stages) == pytest.approx(sum(s.seconds for s in stages))
    # the audit trains as many teachers as there are shadows, and scores every query with each
    teacher, audit = stages[2].seconds, stages[5].seconds
    assert config.audit.n_shadows * teacher < audit < 2 * config.audit.n_shadows * teacher
    # classifiers are counted at their planned steps: the floor of 1,000 steps, not 60 epochs of 5 batches
    assert "1,000 steps" in stages[2].what and "the floor of steps" in stages[2].what
    shorter = replace(config, teacher=replace(config.teacher, min_steps=0))
    assert estimate_stages(shorter, small)[2].seconds == pytest.approx(teacher * 60 * 5 / 1000, rel=0.01)
    # pipeline shadows in two worker processes take less wall time than one after another
    one, two = (estimate_stages(replace(config, audit=replace(config.audit, workers=w)), small)[-1].seconds
                for w in (1, 2))
    assert two < one


def test_run_print_config_gives_an_editable_config(tmp_path: Path, capsys):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=28)
    assert main(["run", "--dataset", f"imagefolder:{root}", "--print-config"]) == 0
    captured = capsys.readouterr()
    config = from_dict(ExperimentConfig, json.loads(captured.out))
    assert config.teacher.model == "small-resnet" and config.dataset.path == str(root)
    assert "# data: " in captured.err and "chosen by resolution" in captured.err
    assert main(["run", "--dataset", f"imagefolder:{root}", "--preset", "quick", "--print-config"]) == 0
    assert from_dict(ExperimentConfig, json.loads(capsys.readouterr().out)).audit.modes == ("transfer",)


@pytest.mark.parametrize("argv, message", [
    (["run"], "give --dataset SPEC"),
    (["run", "x.json", "--dataset", "digits"], "not both"),
    (["run", "--dataset", "nosuch:thing"], "unknown dataset source"),
])
def test_run_refuses_unclear_input_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
