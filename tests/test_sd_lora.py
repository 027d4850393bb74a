"""The sd-lora backend on a tiny random Stable Diffusion built offline (diffusers' get_dummy_components).

One module-scoped fine-tune is shared by most tests; files go to tmp folders; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.generators import GENERATORS, create_generator, generator_class
from pipeline.generators.sd_lora import (
    LORA_FILE,
    SDLoraConfig,
    SDLoraGenerator,
    add_component_prefix,
    batch_indices,
    diffusion_loss,
    min_snr_weights,
    snr,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import StableDiffusionPipeline  # noqa: E402

RESOLUTION = 16  # pixels; the tiny VAE halves it, the tiny UNet halves it again
PROMPTS = ["a red square", "a blue circle", "a green cat", "a photo of a dog"]
SEEDS = [3, 1, 4, 1]


def training_images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def config(base: Path, **changes) -> SDLoraConfig:
    fields = dict(base=str(base), rank=4, alpha=8.0, lr=1e-2, steps=4, batch_size=2, resolution=RESOLUTION,
                  snr_gamma=5.0, checkpoint_every=2, device="cpu", dtype="fp32", num_inference_steps=3,
                  guidance_scale=2.0, sample_batch_size=4)
    return SDLoraConfig(**{**fields, **changes})


def plain_pipeline(base: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_images(pipe: StableDiffusionPipeline, cfg: SDLoraConfig, **kwargs) -> np.ndarray:
    """What a user of plain diffusers would run: same prompts, seeds, steps, guidance, size."""
    return pipe(PROMPTS, height=cfg.resolution, width=cfg.resolution, num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in SEEDS], **kwargs).images


def lora_weights(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(pipe.unet, adapter_name="tckr").items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread: thread hand-offs cost more than their maths (10x on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_sd_pipeline) -> Path:
    directory = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """A 4-step fine-tune (checkpoints at steps 2 and 4), its metrics, run folder and saved folder."""
    run_dir = tmp_path_factory.mktemp("run")
    generator = SDLoraGenerator(config(base_dir))
    events = []
    metrics = generator.fit(training_images(), PROMPTS, [0, 1, 2, 3], run_dir, progress=events.append)
    saved = tmp_path_factory.mktemp("saved")
    generator.save(saved)
    return generator, metrics, run_dir, saved, events


# ---------------------------------------------------------------------------------------------------
# pure maths


def test_snr_and_min_snr_weights_match_hand_values():
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.2])
    values = snr(alphas_cumprod, torch.tensor([0, 1, 2]))
    assert torch.allclose(values, torch.tensor([9.0, 1.0, 0.25]))
    # gamma 5: min(9, 5)/9, min(1, 5)/1, min(.25, 5)/.25 for epsilon; / (snr + 1) for v
    assert torch.allclose(min_snr_weights(values, 5.0, "epsilon"), torch.tensor([5 / 9, 1.0, 1.0]))
    assert torch.allclose(min_snr_weights(values, 5.0, "v_prediction"), torch.tensor([0.5, 0.5, 0.2]))
    with pytest.raises(ValueError, match="epsilon or v_prediction"):
        min_snr_weights(values, 5.0, "sample")


def test_diffusion_loss_weights_each_sample():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])  # per-sample MSE 1 and 4
    parts = diffusion_loss(pred, target)
    assert parts["loss"].item() == pytest.approx(2.5) and parts["mse"].item() == pytest.approx(2.5)
    weighted = diffusion_loss(pred, target, torch.tensor([1.0, 0.5]))
    assert weighted["loss"].item() == pytest.approx((1 + 2) / 2)
    assert weighted["mse"].item() == pytest.approx(2.5)


def test_batch_indices_cover_each_epoch_once():
    first_epoch = batch_indices(5, 2, 0, seed=1) + batch_indices(5, 2, 1, seed=1) + batch_indices(5, 2, 2, 1)[:1]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    assert batch_indices(5, 2, 7, seed=1) == batch_indices(5, 2, 7, seed=1)


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="valid names: ddim"):
        SDLoraConfig(scheduler="nope")
    with pytest.raises(ValueError, match="mixed_precision"):
        SDLoraConfig(mixed_precision="fp8")
    assert "sd-lora" in GENERATORS and generator_class("sd-lora") is SDLoraGenerator


# ---------------------------------------------------------------------------------------------------
# fine-tuning, saving, loading


def test_fit_reports_progress_checkpoints_and_saves(trained):
    generator, metrics, run_dir, saved, events = trained
    assert metrics["steps_run"] == 4 and metrics["resumed_from"] == 0
    assert np.isfinite(metrics["final_loss"])
    assert [e.done for e in events] == [1, 2, 3, 4] and events[-1].stage == "finetune"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert (saved / LORA_FILE).exists() and (saved / "sd_lora.json").exists()
    assert (run_dir / LORA_FILE).exists()


def test_plain_diffusers_reads_the_lora_and_it_changes_images(trained, base_dir):
    generator, _, _, saved, _ = trained
    ours = generator.sample(PROMPTS, SEEDS, output_type="np")
    pipe = plain_pipeline(base_dir)
    base = plain_images(pipe, generator.config)
    pipe.load_lora_weights(saved)  # plain diffusers, the folder written by save()
    theirs = plain_images(pipe, generator.config)
    assert ours.shape == (4, RESOLUTION, RESOLUTION, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.abs(ours - base).max() > 1e-2, "the fine-tuned LoRA should change the images"


def test_generate_gives_pil_and_the_same_image_per_seed_in_any_batch(trained):
    generator = trained[0]
    images = generator.generate(PROMPTS, [0, 1, 2, 3], SEEDS)
    assert len(images) == 4 and all(isinstance(im, Image.Image) for im in images)
    assert images[0].size == (RESOLUTION, RESOLUTION)
    alone = generator.sample(PROMPTS[2:3], SEEDS[2:3], output_type="np")[0]
    in_batch = generator.sample(PROMPTS, SEEDS, output_type="np")[2]
    np.testing.assert_allclose(alone, in_batch, atol=1e-4)
    other_seed = generator.sample(PROMPTS[2:3], [99], output_type="np")[0]
    assert np.abs(alone - other_seed).max() > 1e-3


def test_load_rebuilds_the_same_generator(trained):
    generator, _, _, saved, _ = trained
    loaded = create_generator("sd-lora", **dataclasses.asdict(generator.config))  # the registry path
    assert isinstance(loaded, SDLoraGenerator)
    reloaded = SDLoraGenerator.load(saved, sample_batch_size=2)
    assert reloaded.config.sample_batch_size == 2 and reloaded.config.rank == 4
    np.testing.assert_allclose(reloaded.sample(PROMPTS, SEEDS, output_type="np"),
                               generator.sample(PROMPTS, SEEDS, output_type="np"), atol=1e-4)


def old_format(state_dict: dict[str, torch.Tensor], scale: float, prefix: str) -> dict[str, torch.Tensor]:
    """A peft UNet LoRA in the attention-processor key format of early diffusers LoRA training scripts.

    ``<module>.to_q.lora_A.weight``     -> ``<prefix><module>.processor.to_q_lora.down.weight``
    ``<module>.to_q.lora_B.weight``     -> ``<prefix><module>.processor.to_q_lora.up.weight`` (times scale)
    likewise to_k, to_v; ``to_out.0`` -> ``to_out_lora``. That format stores no alpha (the update is
    up @ down), so alpha / rank is folded into the up matrices.
    """
    names = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
    converted = {}
    for key, value in state_dict.items():
        for new, old in names.items():
            if f".{new}.lora_" in key:
                module, rest = key.split(f".{new}.lora_")
                down = rest.startswith("A")
                converted[f"{prefix}{module}.processor.{old}.{'down' if down else 'up'}.weight"] = (
                    value if down else value * scale).contiguous()
    assert len(converted) == len(state_dict), "every LoRA key should map"
    return converted


@pytest.mark.parametrize(
    "prefix, file_name",
    [("unet.", "old.safetensors"), ("", "pytorch_lora_weights.bin")],
    ids=["unet-prefixed-safetensors", "save_attn_procs-unprefixed-bin"],
)
def test_old_format_lora_loads_like_the_new_format(trained, base_dir, tmp_path, prefix, file_name):
    from safetensors.torch import save_file

    generator = trained[0]
    cfg = generator.config
    old_file = tmp_path / file_name
    state = old_format(lora_weights(generator.pipe), cfg.alpha / cfg.rank, prefix)
    if file_name.endswith(".bin"):  # the early scripts pickled their LoRA with torch.save
        torch.save(state, old_file)
    else:
        save_file(state, old_file)
    old = SDLoraGenerator.from_pipeline(plain_pipeline(base_dir), config(base_dir, lora_path=str(old_file)))
    new = SDLoraGenerator.from_pipeline(plain_pipeline(base_dir), config(base_dir, lora_path=str(trained[3])))
    np.testing.assert_allclose(old.sample(PROMPTS, SEEDS, output_type="np"),
                               new.sample(PROMPTS, SEEDS, output_type="np"), atol=1e-4)


def test_unprefixed_state_dicts_get_the_unet_prefix():
    tensor = torch.zeros(1)
    assert add_component_prefix({"a.processor.to_q_lora.down.weight": tensor}) == {
        "unet.a.processor.to_q_lora.down.weight": tensor}
    prefixed = {"unet.a.to_q.lora.down.weight": tensor}
    assert add_component_prefix(prefixed) is prefixed


def test_fuse_matches_unfused_and_unfuse_restores_the_base(trained, base_dir):
    saved = trained[3]
    pipe = plain_pipeline(base_dir)
    base_weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base = plain_images(pipe, config(base_dir))
    generator = SDLoraGenerator.from_pipeline(pipe, config(base_dir, lora_path=str(saved), lora_scale=0.5))
    unfused = generator.sample(PROMPTS, SEEDS, output_type="np")
    generator.fuse()  # at config.lora_scale = 0.5
    fused = generator.sample(PROMPTS, SEEDS, output_type="np")
    np.testing.assert_allclose(fused, unfused, atol=1e-4)
    assert np.abs(fused - base).max() > 1e-3
    generator.unfuse()
    np.testing.assert_allclose(generator.sample(PROMPTS, SEEDS, output_type="np"), unfused, atol=1e-4)
    restored = {k: v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    for key, value in base_weights.items():  # peft renames wrapped weights to <module>.base_layer.weight
        peft_key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        torch.testing.assert_close(restored.get(key, restored.get(peft_key)), value, atol=1e-6, rtol=0)
    generator.unload_lora()
    np.testing.assert_allclose(generator.sample(PROMPTS, SEEDS, output_type="np"), base, atol=1e-5)


def test_nan_from_the_sampler_is_refused_at_its_step_not_saved_as_black_images(trained, monkeypatch):
    """NaN in the latents stops the sampler at that step; NaN that only the VAE's decoding makes (fp16
    overflow) is refused before PIL turns it into black images. Both name the fix."""
    from pipeline.generators import SamplerDiverged

    generator = trained[0]
    generator.sample(PROMPTS[:1], SEEDS[:1], output_type="np")  # the pipeline is built
    pipe = generator.pipe

    def nan_output(forward):
        def wrapped(*args, **kwargs):
            out = forward(*args, **kwargs)
            (out[0] if isinstance(out, tuple) else out.sample).fill_(float("nan"))
            return out
        return wrapped

    monkeypatch.setattr(pipe.vae, "decode", nan_output(pipe.vae.decode))
    with pytest.raises(SamplerDiverged, match="decoded images.*guidance_scale"):
        generator.generate(PROMPTS[:1], [0], SEEDS[:1])
    monkeypatch.undo()
    monkeypatch.setattr(pipe.unet, "forward", nan_output(pipe.unet.forward))
    with pytest.raises(SamplerDiverged, match="latents at step 1 of"):
        generator.sample(PROMPTS[:1], SEEDS[:1], output_type="np")
    monkeypatch.undo()
    assert np.isfinite(generator.sample(PROMPTS[:1], SEEDS[:1], output_type="np")).all()


def test_config_fuse_fuses_at_first_sample(trained, base_dir):
    cfg = config(base_dir, lora_path=str(trained[3]), fuse=True)
    fused = SDLoraGenerator.from_pipeline(plain_pipeline(base_dir), cfg)
    np.testing.assert_allclose(fused.sample(PROMPTS, SEEDS, output_type="np"),
                               trained[0].sample(PROMPTS, SEEDS, output_type="np"), atol=1e-4)
    assert fused._fused


def test_channels_last_gives_the_same_images(trained, base_dir):
    """The GPU sampling recipe's memory layout changes no maths (torch.compile, its other part, takes a
    minute to compile even this tiny UNet on a CPU: measured by hand, max |Δ| 4e-7, not in the suite)."""
    cfg = config(base_dir, lora_path=str(trained[3]), fuse=True, channels_last=True)
    fast = SDLoraGenerator.from_pipeline(plain_pipeline(base_dir), cfg)
    np.testing.assert_allclose(fast.sample(PROMPTS, SEEDS, output_type="np"),
                               trained[0].sample(PROMPTS, SEEDS, output_type="np"), atol=1e-4)
    assert fast.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_resume_continues_from_the_latest_checkpoint(trained, base_dir, tmp_path):
    _, _, run_dir, _, _ = trained
    # copy the 4-step run's checkpoints, then ask for 6 steps: only steps 5 and 6 should run
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    for checkpoint in (run_dir / "checkpoints").iterdir():
        target = resumed_dir / "checkpoints" / checkpoint.name
        target.mkdir()
        for file in checkpoint.iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    resumed = SDLoraGenerator(config(base_dir, steps=6))
    metrics = resumed.fit(training_images(), PROMPTS, [0, 1, 2, 3], resumed_dir)
    assert metrics["resumed_from"] == 4 and metrics["steps_run"] == 2
    assert sorted(p.name for p in (resumed_dir / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    # an uninterrupted 6-step run (with gradient checkpointing, which must not change the maths) agrees
    straight = SDLoraGenerator(config(base_dir, steps=6, checkpoint_every=0, gradient_checkpointing=True))
    straight.fit(training_images(), PROMPTS, [0, 1, 2, 3], tmp_path / "straight")
    got, want = lora_weights(resumed.pipe), lora_weights(straight.pipe)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4)
    # and both moved past the 4-step LoRA
    assert any((got[k] - v).abs().max() > 1e-4 for k, v in lora_weights(trained[0].pipe).items())


def test_fit_trains_v_prediction_models(base_dir, tmp_path):
    from diffusers import DDIMScheduler

    pipe = plain_pipeline(base_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    generator = SDLoraGenerator.from_pipeline(pipe, config(base_dir, steps=2, checkpoint_every=0))
    metrics = generator.fit(training_images(), PROMPTS, [0, 1, 2, 3], tmp_path)
    assert metrics["steps_run"] == 2 and np.isfinite(metrics["final_loss"])
    assert not (tmp_path / "checkpoints").exists()


@pytest.fixture(scope="module")
def v_base_dir(tmp_path_factory, tiny_sd_pipeline) -> Path:
    """A tiny pipeline in the layout of ``stabilityai/stable-diffusion-2`` (768-v): v-prediction."""
    directory = tmp_path_factory.mktemp("tiny-sd2-v")
    tiny_sd_pipeline(sd2=True).save_pretrained(directory)
    return directory


def test_a_v_prediction_base_is_trained_and_sampled_as_v(v_base_dir, tmp_path, monkeypatch):
    """TCKR's base, SD 2 (768-v), predicts v: fine-tuning learns the velocity and every sampler reads the
    UNet's output as v, both from the base folder's own scheduler config (nothing in our config says so)."""
    from diffusers import DPMSolverMultistepScheduler

    from pipeline.generators.sd_lora import _LoraTraining

    seen = []
    target = _LoraTraining.target

    def spy(self, latents, noise, timesteps):
        out = target(self, latents, noise, timesteps)
        seen.append((self.noise_scheduler.get_velocity(latents, noise, timesteps), noise, out[0]))
        return out

    monkeypatch.setattr(_LoraTraining, "target", spy)
    generator = SDLoraGenerator(config(v_base_dir, steps=2, checkpoint_every=0))
    metrics = generator.fit(training_images(), PROMPTS, [0, 1, 2, 3], tmp_path / "run")
    assert metrics["prediction_type"] == "v_prediction" and np.isfinite(metrics["final_loss"])
    for velocity, noise, learned in seen:
        torch.testing.assert_close(learned, velocity)
        assert (learned - noise).abs().max() > 1e-3
    generator.save(tmp_path / "saved")
    # sampling: the base's scheduler, or another one built from its config, as plain diffusers samples
    for scheduler in (None, "dpm++"):
        loaded = SDLoraGenerator.load(tmp_path / "saved", scheduler=scheduler)
        assert loaded.pipe.scheduler.config.prediction_type == "v_prediction"
        pipe = plain_pipeline(v_base_dir)
        if scheduler:
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.load_lora_weights(tmp_path / "saved")
        ours = loaded.sample(PROMPTS, SEEDS, output_type="np")
        np.testing.assert_allclose(ours, plain_images(pipe, loaded.config), atol=1e-4)
    # and reading the same UNet as an epsilon model gives other images: the prediction type matters
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")
    assert np.abs(plain_images(pipe, loaded.config) - ours).max() > 1e-2


def test_fit_fails_fast_on_bad_input(trained, base_dir, tmp_path):
    generator = SDLoraGenerator(config(base_dir))
    with pytest.raises(ValueError, match="one prompt per image"):
        generator.fit(training_images(2), PROMPTS, [0, 1], tmp_path)
    with pytest.raises(ValueError, match="one seed per prompt"):
        generator.sample(PROMPTS, [1])
    with pytest.raises(ValueError, match="already carries a LoRA"):
        trained[0].fit(training_images(), PROMPTS, [0, 1, 2, 3], tmp_path)


def test_dp_fine_tuning_trains_only_the_lora_with_the_accountants_noise(base_dir, tmp_path):
    """DP-SGD on the LoRA parameters only (per-example gradients through the diffusers UNet with torch.func):
    the base UNet is untouched, ε spent stays within the target, the noise is the accountant's."""
    from pipeline.privacy.accounting import calibrate

    pipe = plain_pipeline(base_dir)
    base = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    generator = SDLoraGenerator.from_pipeline(pipe, config(base_dir, steps=2, checkpoint_every=0, batch_size=2,
                                                           dp_epsilon=8.0, dp_noise_multiplicity=2))
    metrics = generator.fit(training_images(), PROMPTS, [0, 1, 2, 3], tmp_path)
    record = metrics["privacy"]
    assert record["epsilon"] <= 8.0 and record["steps"] == 2 and record["sample_rate"] == 0.5
    assert record["noise_multiplier"] == pytest.approx(calibrate(8.0, record["delta"], 0.5, 2))
    lora_b = [v for k, v in lora_weights(generator.pipe).items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: the noisy steps moved it
    frozen = {k: v for k, v in generator.pipe.unet.state_dict().items() if "lora" not in k}
    assert all(torch.equal(frozen[k], base[k.replace(".base_layer", "")]) for k in frozen if
               k.replace(".base_layer", "") in base)
