"""Issue 23, item 4: a generated round that is no training set (every image one flat colour, the images
one picture repeated, NaN in the sampler) stops the run naming the stage and the cause; no student is
trained on it."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli.main import main
from pipeline.core.common import to_jsonable
from pipeline.generate import DegenerateRound, GenerationPlan, generate_set
from pipeline.generators import Generator, SamplerDiverged


class _Painter(Generator):
    """Paints what ``paint(label, seed)`` returns; counts its calls."""

    name, config_class = "painter", dict

    def __init__(self, paint) -> None:
        super().__init__({})
        self.paint, self.calls = paint, 0

    def fit(self, images, prompts, labels, out_dir, progress=None):
        return {}

    def generate(self, prompts, labels, seeds, progress=None):
        self.calls += 1
        return [Image.fromarray(self.paint(label, seed).astype(np.uint8)) for label, seed in zip(labels, seeds)]

    def save(self, directory):
        pass

    @classmethod
    def load(cls, directory, **overrides):
        raise NotImplementedError


RAMP = np.add.outer(np.arange(8), np.arange(8)) * 16  # one picture: a diagonal grey ramp


def black(label, seed):  # what a sampler that produced NaN writes
    return np.zeros((8, 8, 3))


def same_picture(label, seed):  # a collapsed generator: one picture whatever the label and seed
    return np.dstack([RAMP] * 3)


def nearly_the_same(label, seed):  # ... give or take a grey level
    return np.dstack([RAMP] * 3) + (seed % 2)


def varied(label, seed):
    return np.dstack([RAMP, np.full((8, 8), 20 * label), np.full((8, 8), seed % 251)])


@pytest.mark.parametrize("paint, cause", [
    (black, r"one flat colour .*NaN in the sampler"),
    (lambda label, seed: np.full((8, 8, 3), 255), r"one flat colour"),
    (same_picture, r"nearly one picture repeated"),
    (nearly_the_same, r"nearly one picture repeated"),
])
def test_a_degenerate_round_is_refused_naming_round_and_cause(tmp_path, prompt_pool, paint, cause):
    generator = _Painter(paint)
    with pytest.raises(DegenerateRound, match=rf"generate stage, round 1 \({re.escape(str(tmp_path))}, .*\): .*{cause}"):
        generate_set(generator, prompt_pool, GenerationPlan(total=40, batch_size=4, round=1), tmp_path, "gen")
    if paint is black:  # flat images stop the generation as soon as they condemn the round
        assert generator.calls < 10


def test_a_varied_round_passes(tmp_path, prompt_pool):
    assert len(generate_set(_Painter(varied), prompt_pool, GenerationPlan(total=40, batch_size=4), tmp_path)) == 40


def test_nan_in_the_scratch_sampler_stops_before_any_black_image(tmp_path, prompt_pool):
    from pipeline.generators.scratch import ScratchConfig, ScratchGenerator

    images = [Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)) for i in range(8)]
    generator = ScratchGenerator(ScratchConfig(block_out_channels=(8, 16), norm_groups=4, train_steps=1, batch_size=8,
                                               warmup_steps=1, checkpoint_every=0, threads=1, sampling_steps=2))
    generator.fit(images, [""] * 8, [i % 2 for i in range(8)], tmp_path / "checkpoints")
    with torch.no_grad():
        next(generator.unet.parameters()).fill_(float("nan"))  # weights of a generator whose training diverged
    with pytest.raises(SamplerDiverged, match=r"scratch sampler produced NaN or infinity in 2 of 2 images"):
        generator.generate(["", ""], [0, 1], [0, 1])
    pool = replace(prompt_pool, class_names=prompt_pool.class_names[:2], prompts=prompt_pool.prompts[:2])
    with pytest.raises(DegenerateRound, match=r"generate stage, round 0 \(.*\): the scratch sampler produced NaN"):
        generate_set(generator, pool, GenerationPlan(total=4, batch_size=2), tmp_path / "round")
    assert not list((tmp_path / "round").glob("*.png"))  # no black image was written


def test_nan_in_the_sd_lora_sampler_stops_at_the_step(tmp_path, tiny_sd_pipeline):
    from pipeline.generators.sd_lora import SDLoraConfig, SDLoraGenerator

    tiny_sd_pipeline().save_pretrained(tmp_path / "base")
    generator = SDLoraGenerator(SDLoraConfig(base=str(tmp_path / "base"), resolution=16, device="cpu", dtype="fp32",
                                             num_inference_steps=2, guidance_scale=2.0, sample_batch_size=2))
    generator._ensure_inference()
    with torch.no_grad():
        next(generator.pipe.unet.parameters()).fill_(float("nan"))
    with pytest.raises(SamplerDiverged, match=r"sd-lora sampler produced NaN or infinity in latents at step 1 of 2"):
        generator.generate(["a", "b"], [0, 1], [0, 1])


def test_a_run_whose_round_is_degenerate_stops_before_the_student(tmp_path, capsys, monkeypatch, tiny_config):
    from pipeline.generators.scratch import ScratchGenerator

    monkeypatch.setattr(ScratchGenerator, "generate", lambda self, prompts, labels, seeds, progress=None:
                        [Image.fromarray(black(0, 0).astype(np.uint8)) for _ in seeds])
    config = replace(tiny_config, audit=replace(tiny_config.audit, pipeline_shadows=1), methods=())
    file = tmp_path / "config.json"
    file.write_text(json.dumps(to_jsonable(config)))
    project = tmp_path / "project"
    assert main(["-q", "run", "--project", str(project), str(file)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"generate stage, round 0 \(.*\): .*one flat colour", err) and err.count("\n") == 1, err
    from pipeline.core.project import Project

    [run] = Project.open(project).registry().list(kind="experiment")
    assert run.status == "failed" and not (run.run_dir / "student.pt").exists()
