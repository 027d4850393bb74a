"""Issue 10.5: diverged training stops at once with a message naming stage, epoch and cause."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from pipeline.classifiers.models import build_classifier
from pipeline.classifiers.objectives import HardLabels
from pipeline.classifiers.train import TensorData, TrainConfig, fit
from pipeline.cli.main import main
from pipeline.core.common import TrainingDiverged, check_loss


def data(n: int = 64) -> TensorData:
    gen = torch.Generator().manual_seed(0)
    return TensorData(torch.rand(n, 3, 8, 8, generator=gen), torch.arange(n) % 4)


@pytest.mark.parametrize("lr", [1e6, 1e30])
def test_an_exploding_learning_rate_stops_the_classifier(lr):
    recipe = TrainConfig(model="tiny-cnn", epochs=3, batch_size=16, lr=lr, augment=(), device="cpu")
    model = build_classifier(recipe, 4)
    with pytest.raises(TrainingDiverged, match=r"teacher diverged at epoch \d+, step \d+ .*learning rate"):
        fit(model, data(), HardLabels(), recipe, stage="teacher")


def test_a_sane_learning_rate_trains_through():
    recipe = TrainConfig(model="tiny-cnn", epochs=2, batch_size=16, lr=3e-3, augment=(), device="cpu")
    result = fit(build_classifier(recipe, 4), data(), HardLabels(), recipe)
    assert result.epochs_run == 2


def test_check_loss_rules():
    check_loss(2.3, None, "s", "step 1", 1e-3)
    check_loss(0.6, 0.01, "s", "step 9", 1e-3)  # a nearly trained start: a bumpy batch is not divergence
    with pytest.raises(TrainingDiverged, match="nan"):
        check_loss(float("nan"), 2.3, "s", "step 2", 1e-3)
    with pytest.raises(TrainingDiverged, match="52x the first"):
        check_loss(120.0, 2.3, "s", "step 2", 1e-3)


def test_the_generator_stops_on_a_non_finite_loss(tmp_path):
    from PIL import Image

    from pipeline.generators.scratch import ScratchConfig, ScratchGenerator

    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(8)]
    config = ScratchConfig(block_out_channels=(8, 16), norm_groups=4, train_steps=30, batch_size=8,
                           learning_rate=1e30, warmup_steps=1, checkpoint_every=0, threads=1)
    with pytest.raises(TrainingDiverged, match=r"generator diverged at step \d+"):
        ScratchGenerator(config).fit(images, [""] * 8, [i % 2 for i in range(8)], tmp_path)


def test_the_cli_reports_divergence_in_one_line(tmp_path, capsys):
    import json

    from pipeline.core.common import to_jsonable
    from pipeline.data.datasets import DatasetConfig
    from pipeline.presets import quickstart_config

    base = quickstart_config()
    config = dataclasses.replace(base, dataset=DatasetConfig(limit=120), teacher=dataclasses.replace(
        base.teacher, epochs=2, lr=1e30), generator_options=(("train_steps", 2),))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(to_jsonable(config)))
    assert main(["-q", "run", "--project", str(tmp_path / "p"), str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"teacher diverged at epoch \d+, step \d+", err) and err.count("\n") == 1
