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
    with_models,
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


def test_resnet_teachers_train_twice_the_students_passes_and_small_sets_stay_at_the_floor():
    """A set past the floor gets 80 teacher passes (40 stopped 3-4 points short of converging on 2,250
    CIFAR-10 members); the student keeps 40; a small set still trains the floor of steps, no more."""
    large, _ = preset_config(DATA, profile(32, members=2250), "standard")
    assert large.teacher.planned_epochs(36) == 80 and large.distill.student.planned_epochs(36) == 40
    small, _ = preset_config(DATA, profile(28, 1, members=680), "standard")
    assert small.teacher.planned_epochs(10) * 10 == 1000  # the floor, as before
    quick, _ = preset_config(DATA, profile(32, members=2250), "quick")
    assert quick.teacher.planned_epochs(36) == 40 and quick.distill.student.planned_epochs(36) == 20


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
    """TCKR's published code (src/run_lora.ipynb, src/evaluate.py): SD 2 (768-v), LoRA rank 4 at 224 px for
    3 epochs at batch 1 x 4 accumulation steps, lr 1e-4, plain MSE; 20 sampling steps at guidance 2."""
    config, why = preset_config(DATA, profile(32, members=1000), "paper")
    options = dict(config.generator_options)
    assert config.generator == "sd-lora" and options["base"] == "stabilityai/stable-diffusion-2"
    assert options["rank"] == 4 and options["resolution"] == 224 and options["lr"] == 1e-4
    assert options["batch_size"] == 4 and options["steps"] == 750 and options["snr_gamma"] is None
    assert options["num_inference_steps"] == 20 and options["guidance_scale"] == 2.0
    assert "scheduler" not in options  # the base's own sampler, as TCKR's
    assert config.captioner.name == "blip2" and config.captioner.model == "Salesforce/blip2-opt-2.7b"
    assert config.cardinality == 20 and config.audit.n_shadows == 256
    assert config.distill.student.model.startswith("mobilenetv3") and config.teacher.pretrained
    assert any("SD 2 768-v" in line and "750 steps" in line for line in why)
    config.validate()  # every option is a field of the backend


def test_paper_points_at_local_model_folders(tmp_path: Path):
    base, captioner = tmp_path / "sd2", tmp_path / "blip2"
    config, _ = preset_config(DATA, profile(32), "paper")
    local, why = with_models(config, base=str(base), captioner_model=str(captioner), classifier="mobilenetv3_small_050")
    assert dict(local.generator_options)["base"] == str(base) and local.captioner.model == str(captioner)
    assert local.teacher.model == local.distill.student.model == "mobilenetv3_small_050"
    assert local.teacher.pretrained and len(why) == 3
    assert with_models(config) == (config, [])
    with pytest.raises(ValueError, match="unknown classifier 'resnet9000'.*any timm model"):
        with_models(config, classifier="resnet9000")
    standard, _ = preset_config(DATA, profile(32), "standard")
    with pytest.raises(ValueError, match="--base needs a generator that fine-tunes a base model \\(sd-lora"):
        with_models(standard, base=str(base))
    with pytest.raises(ValueError, match="--captioner-model needs a model captioner"):
        with_models(standard, captioner_model=str(captioner))
    assert with_models(standard, classifier="tiny-cnn")[0].teacher.model == "tiny-cnn"


def test_run_takes_the_model_flags_with_a_preset_only(tmp_path: Path, capsys):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=28)
    sd2 = str(tmp_path / "sd2")
    assert main(["run", "--dataset", f"imagefolder:{root}", "--preset", "paper", "--base", sd2,
                 "--captioner-model", str(tmp_path / "blip2"), "--classifier", "mobilenetv3_small_050",
                 "--print-config"]) == 0
    captured = capsys.readouterr()
    config = from_dict(ExperimentConfig, json.loads(captured.out))
    assert dict(config.generator_options)["base"] == sd2 and config.teacher.model == "mobilenetv3_small_050"
    assert "# generator base: " + sd2 in captured.err
    (tmp_path / "c.json").write_text(captured.out)
    assert main(["run", str(tmp_path / "c.json"), "--base", sd2]) == 2
    assert "--base: only with --dataset" in capsys.readouterr().err
    assert main(["run", "--dataset", f"imagefolder:{root}", "--base", sd2, "--print-config"]) == 2
    assert "--base needs a generator that fine-tunes" in capsys.readouterr().err


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


def test_a_dp_run_is_estimated_with_a_dp_step(monkeypatch):
    """The estimate times the step the run will take: a DP-SGD step for a DP run (per-example gradients of
    K draws each), a plain one otherwise (the timer's own figures replaced: timings are not asserted)."""
    from pipeline.generators.scratch import ScratchGenerator

    timed = []

    def time_steps(self, side, channels, num_classes):
        timed.append(self.config.dp_epsilon)
        return {"train_step_s": 1.0 if self.config.dp_epsilon is None else 10.0, "image_s": 0.01,
                "train_steps": self.config.train_steps}

    monkeypatch.setattr(ScratchGenerator, "time_steps", time_steps)
    small = profile(8, 1, 40)
    config, _ = preset_config(DatasetConfig(), small, "standard")
    config = replace(config, generator_options={"block_out_channels": [8, 16], "norm_groups": 4, "batch_size": 16,
                                                "dp_noise_multiplicity": 2})
    plain = estimate_stages(config, small)[0]
    private = estimate_stages(replace(config, privacy="dp", epsilon=10.0), small)[0]
    assert timed == [None, 10.0]  # one timing each, the DP run's with its budget
    assert private.seconds > 5 * plain.seconds


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
