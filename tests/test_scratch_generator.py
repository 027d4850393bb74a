"""The scratch diffusion backend with a tiny seeded config: fit, sample, save / load, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.common import Progress
from pipeline.generators.scratch import ScratchConfig, ScratchGenerator, latest_checkpoint

TINY = ScratchConfig(
    block_out_channels=(8, 16),
    norm_groups=4,
    train_steps=4,
    batch_size=8,
    sampling_steps=3,
    generate_batch_size=4,
    checkpoint_every=2,
    guidance_scale=2.0,
    threads=1,
)


def grey_digits(n: int = 24, size: int = 8, classes: int = 3) -> tuple[list[Image.Image], list[int]]:
    """Grey RGB images whose brightness pattern depends on the class."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        label = i % classes
        pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
        pixels[:, label * 2: label * 2 + 2] += 180
        images.append(Image.fromarray(pixels, "L").convert("RGB"))
        labels.append(label)
    return images, labels


def fit(config: ScratchConfig, out_dir: Path, data=None, progress=None) -> tuple[ScratchGenerator, dict]:
    images, labels = data or grey_digits()
    generator = ScratchGenerator(config)
    kwargs = {"progress": progress} if progress else {}
    metrics = generator.fit(images, [f"{y}: a digit" for y in labels], labels, out_dir, **kwargs)
    return generator, metrics


def pixels(images: list[Image.Image]) -> list[bytes]:
    return [im.tobytes() for im in images]


def weights(generator: ScratchGenerator) -> dict:
    return {k: v.clone() for k, v in generator.unet.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[ScratchGenerator, dict, Path]:
    out_dir = tmp_path_factory.mktemp("scratch-fit")
    generator, metrics = fit(TINY, out_dir)
    return generator, metrics, out_dir


def test_registered_under_scratch():
    from pipeline.generators import GENERATORS

    assert GENERATORS.get("scratch") is ScratchGenerator
    assert ScratchGenerator.config_class is ScratchConfig


def test_fit_reports_metrics_and_checkpoints(trained):
    _, metrics, out_dir = trained
    assert metrics["steps"] == 4 and metrics["resumed_from"] == 0
    assert np.isfinite(metrics["final_loss"]) and metrics["final_loss"] > 0
    assert metrics["seconds_per_step"] > 0
    # checkpoints at 2 and 4, each complete (weights + optimiser state + config)
    assert sorted(p.name for p in out_dir.glob("step-*")) == ["step-0000002", "step-0000004"]
    assert latest_checkpoint(out_dir).name == "step-0000004"
    assert (latest_checkpoint(out_dir) / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_samples_with_the_ema_weights(trained):
    import torch
    from safetensors.torch import load_file

    generator, _, out_dir = trained
    checkpoint = latest_checkpoint(out_dir)
    raw = load_file(checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
    shadow = torch.load(checkpoint / "training_state.pt", weights_only=True)["ema"]["shadow_params"]
    params = [p.detach() for p in generator.unet.parameters()]
    assert all(torch.equal(p, e) for p, e in zip(params, shadow))
    assert any(not torch.equal(v, generator.unet.state_dict()[k]) for k, v in raw.items())


def test_fit_reports_progress(tmp_path):
    events: list[Progress] = []
    fit(dataclasses.replace(TINY, train_steps=3, checkpoint_every=0), tmp_path, progress=events.append)
    assert [e.done for e in events] == [1, 2, 3]
    assert all(e.total == 3 and {"loss", "s/step"} <= set(e.info) for e in events)


def test_generates_rgb_images_at_dataset_size(trained):
    generator, _, _ = trained
    images = generator.generate(["0: a digit"] * 5, [0, 1, 2, 0, 1], [1, 2, 3, 4, 5])
    assert len(images) == 5
    assert all(im.mode == "RGB" and im.size == (8, 8) for im in images)
    # grey training images: the model has one channel, replicated to grey RGB
    assert generator.state["channels"] == 1
    assert all(len(set(im.getpixel((x, y)))) == 1 for im in images for x in range(8) for y in range(8))


def test_same_seed_same_image_whatever_the_batch(trained):
    generator, _, _ = trained
    # generate_batch_size=4: seeds 3, 4, 7, 8 share a sampler batch, 9 and 10 the next one
    mixed = generator.generate(["p"] * 6, [0, 2, 1, 1, 0, 2], [3, 4, 7, 8, 9, 10])
    assert pixels(generator.generate(["p"], [1], [7])) == pixels(mixed[2:3])
    assert pixels(generator.generate(["p", "p"], [0, 0], [5, 9])[1:]) == pixels(mixed[4:5])
    assert pixels(generator.generate(["p"] * 6, [0, 2, 1, 1, 0, 2], [3, 4, 7, 8, 9, 10])) == pixels(mixed)


def test_different_seeds_give_different_images(trained):
    generator, _, _ = trained
    images = generator.generate(["p"] * 4, [0, 0, 0, 0], [1, 2, 3, 4])
    assert len(set(pixels(images))) == 4


def test_guidance_scale_changes_output(trained, tmp_path):
    generator, _, _ = trained
    generator.save(tmp_path / "g")
    unguided = ScratchGenerator.load(tmp_path / "g", guidance_scale=1.0)
    strong = ScratchGenerator.load(tmp_path / "g", guidance_scale=5.0)
    labels, seeds = [0, 1, 2], [1, 2, 3]
    a = pixels(unguided.generate(["p"] * 3, labels, seeds))
    b = pixels(strong.generate(["p"] * 3, labels, seeds))
    assert a != b


def test_save_load_gives_identical_images(trained, tmp_path):
    generator, _, _ = trained
    generator.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tmp_path / "saved" / "scratch_config.json").read_text())["block_out_channels"] == [8, 16]
    loaded = ScratchGenerator.load(tmp_path / "saved")
    assert loaded.config == generator.config
    labels, seeds = [0, 1, 2, 2], [10, 20, 30, 40]
    assert pixels(loaded.generate(["p"] * 4, labels, seeds)) == pixels(generator.generate(["p"] * 4, labels, seeds))


def test_load_rejects_unknown_override(trained, tmp_path):
    generator, _, _ = trained
    generator.save(tmp_path / "saved")
    with pytest.raises(ValueError, match="guidance_scale"):
        ScratchGenerator.load(tmp_path / "saved", guidance=3.0)


def test_resume_continues_to_the_same_weights(tmp_path):
    straight, _ = fit(TINY, tmp_path / "straight")  # 4 steps in one go
    first, metrics = fit(dataclasses.replace(TINY, train_steps=2), tmp_path / "resumed")
    assert metrics["steps"] == 2 and metrics["resumed_from"] == 0
    more, metrics = fit(TINY, tmp_path / "resumed")  # a fresh instance asked for 4 steps
    assert metrics["resumed_from"] == 2 and metrics["steps"] == 4
    a, b = weights(straight), weights(more)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert not all(np.array_equal(a[k].numpy(), weights(first)[k].numpy()) for k in a)


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    class Killed(Exception):
        pass

    def kill_at_step_3(event: Progress) -> None:
        if event.done == 3:
            raise Killed

    with pytest.raises(Killed):
        fit(TINY, tmp_path, progress=kill_at_step_3)
    assert latest_checkpoint(tmp_path).name == "step-0000002"
    steps_run: list[int] = []
    _, metrics = fit(TINY, tmp_path, progress=lambda e: steps_run.append(e.done))
    assert metrics["resumed_from"] == 2 and steps_run == [3, 4]
    # a finished run asked again trains nothing
    _, metrics = fit(TINY, tmp_path, progress=lambda e: steps_run.append(e.done))
    assert metrics["resumed_from"] == 4 and steps_run == [3, 4]


def test_resume_refuses_a_different_model(tmp_path):
    fit(TINY, tmp_path)
    with pytest.raises(ValueError, match="block_out_channels"):
        fit(dataclasses.replace(TINY, block_out_channels=(8, 8)), tmp_path)
    with pytest.raises(ValueError, match="past train_steps"):
        fit(dataclasses.replace(TINY, train_steps=2), tmp_path)


def test_colour_images_at_another_training_resolution(tmp_path):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(6)]
    generator, _ = fit(dataclasses.replace(TINY, resolution=16, train_steps=1), tmp_path,
                       data=(images, [0, 1, 0, 1, 0, 1]))
    assert generator.state["channels"] == 3 and generator.state["resolution"] == 16
    out = generator.generate(["p", "p"], [0, 1], [1, 2])
    assert all(im.mode == "RGB" and im.size == (8, 8) for im in out)


def test_bad_inputs_fail_fast(trained):
    generator, _, _ = trained
    with pytest.raises(RuntimeError, match="fit"):
        ScratchGenerator(TINY).generate(["p"], [0], [0])
    with pytest.raises(ValueError, match="outside"):
        generator.generate(["p"], [3], [0])
    with pytest.raises(ValueError, match="as many"):
        generator.generate(["p", "q"], [0], [0])
    with pytest.raises(ValueError, match="ddim"):
        ScratchConfig(sampler="euler")


def test_patches_v_prediction_and_min_snr_train_and_sample_at_the_dataset_size(tmp_path):
    config = dataclasses.replace(TINY, patch=2, prediction="v_prediction", snr_gamma=5.0, sampler="dpm",
                                 train_steps=2)
    generator, metrics = fit(config, tmp_path)
    assert generator.state["patch"] == 2 and np.isfinite(metrics["final_loss"])
    assert generator.unet.config.in_channels == 4 and generator.unet.config.sample_size == 4  # 1 x 2^2, 8 / 2
    out = generator.generate(["p"] * 3, [0, 1, 2], [1, 2, 3])
    assert all(im.size == (8, 8) and im.mode == "RGB" for im in out)
    again = ScratchGenerator.load(_saved(generator, tmp_path / "saved"))
    assert pixels(again.generate(["p"], [1], [2])) == pixels(out[1:2])
    with pytest.raises(ValueError, match="not a multiple of patch 3"):
        fit(dataclasses.replace(TINY, patch=3), tmp_path / "bad")
    with pytest.raises(ValueError, match="epsilon or v_prediction"):
        ScratchConfig(prediction="sample")


def _saved(generator: ScratchGenerator, directory: Path) -> Path:
    generator.save(directory)
    return directory


def test_suggested_options_by_resolution_build_a_model_that_runs():
    assert ScratchGenerator.suggest_options(8, 1, 600, "cpu") == {}  # tiny images: the digits defaults
    options = ScratchGenerator.suggest_options(28, 1, 680, "cpu")
    assert options["patch"] == 2 and options["prediction"] == "v_prediction" and "resolution" not in options
    large = ScratchGenerator.suggest_options(224, 3, 5000, "cpu")
    assert large["resolution"] == 64 and large["patch"] == 4
    assert ScratchGenerator.suggest_options(28, 1, 680, "cuda")["train_steps"] > options["train_steps"]
    for side in (20, 28, 32, 48, 64, 100):
        opts = ScratchGenerator.suggest_options(side, 3, 1000, "cpu")
        config = ScratchConfig(**{**opts, "batch_size": 2, "generate_batch_size": 2, "sampling_steps": 1})
        timed = ScratchGenerator(config).time_steps(side, 3, 4)  # builds the UNet and runs it
        assert timed["train_step_s"] > 0 and timed["image_s"] > 0
