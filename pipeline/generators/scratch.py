"""The ``scratch`` backend: a small class-conditioned diffusion model trained from scratch.

Knowledge Recycling (Lomurno et al.) trains a conditional diffusion model on the private images
and samples the synthetic training set from it with classifier-free guidance (Ho & Salimans 2022).
Here the model is a diffusers ``UNet2DModel`` whose class embedding table has one extra "null"
row: during training a ``cfg_dropout`` share of labels is replaced by it, so one network learns
both the conditional and the unconditional noise prediction. Training uses the DDPM noise schedule;
sampling uses a deterministic solver (DDIM with eta=0 or DPM-Solver++), so an image depends only on
its seed, label and the weights.

Defaults were measured with ``benchmarks/scratch_generator.py`` on a 2-core CPU (digits, 644
members): a (16, 32) UNet (0.16M parameters) trained 800 steps of 128 in about a minute, sampled with
10 DDIM steps at several hundred images/s, and a classifier trained only on its samples reaches
~0.98x the accuracy of one trained on the real members. Bigger UNets were 3-10x slower for no
measurable gain, and guidance above 1 lowered that ratio (less diverse samples), so CFG is trained
but off by default. Prompts are accepted for the common interface but ignored: the label conditions.

Above 16 px that recipe fails (on Fashion-MNIST the teacher recognised 10-14 % of its samples, chance
level), so :meth:`ScratchGenerator.suggest_options` picks another by resolution: the image is folded
into ``patch x patch`` channel blocks (space-to-depth, as in Hoogeboom et al. 2023, "simple
diffusion"), the UNet predicts v (Salimans & Ho 2022) with Min-SNR-5 loss weights (Hang et al. 2023),
and sampling uses DPM-Solver++ with CFG 2; presets use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..core.common import (
    Progress,
    ProgressFn,
    check_loss,
    no_progress,
    read_json,
    resolve_device,
    seed_everything,
    to_jsonable,
    write_json,
)
from ..core.precision import autocast
from ..core.schema import parse, schema
from . import GENERATORS, Generator, SamplerDiverged
from .dp_sgd import DPSettings, DPStep

if TYPE_CHECKING:  # torch and diffusers load lazily: importing this module stays cheap
    import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = "scratch_config.json"
STATE_FILE = "generator.json"  # what the data decided: classes, channels, sizes, steps trained
_CHECKPOINT_RE = re.compile(r"^step-(\d+)$")

# Fields that may change between a run and its resumption; any other change means another model.
_RESUMABLE_FIELDS = frozenset({
    "train_steps", "checkpoint_every", "keep_checkpoints", "guidance_scale", "sampler",
    "sampling_steps", "generate_batch_size", "device", "threads", "precision",
})


@schema
@dataclass(frozen=True)
class ScratchConfig:
    """Size, training and sampling settings of the scratch diffusion generator."""

    resolution: int | None = None  # side the UNet works at (None: the training images' own side)
    channels: int | None = None  # image channels modelled (None: 1 when every image is grey, else 3)
    block_out_channels: tuple[int, ...] = (16, 32)  # UNet width per level; each extra level halves the side
    layers_per_block: int = 1  # ResNet blocks per UNet level
    attention: bool = False  # self-attention at the lowest-resolution level (slower on CPU)
    norm_groups: int = 8  # GroupNorm groups; must divide every entry of block_out_channels
    patch: int = 1  # space-to-depth factor: the UNet sees side/patch with channels*patch^2 (Hoogeboom 2023)
    prediction: str = "epsilon"  # what the UNet predicts: epsilon | v_prediction
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023); None: plain MSE
    num_train_timesteps: int = 1000  # DDPM diffusion steps
    beta_schedule: str = "squaredcos_cap_v2"  # DDPM noise schedule (cosine suits tiny images)
    train_steps: int = 800  # optimiser steps in all (a resumed run continues up to this)
    batch_size: int = 128  # images per optimiser step
    learning_rate: float = 2e-3  # AdamW learning rate after warm-up
    warmup_steps: int = 50  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.999  # cap of the EMA decay (warms up as 1 - (1 + step)^-2/3)
    cfg_dropout: float = 0.1  # share of training labels replaced by the null class (CFG)
    guidance_scale: float = 1.0  # CFG w in eps_u + w (eps_c - eps_u); 1 = plain conditional (best measured)
    sampler: str = "ddim"  # deterministic sampler: ddim (eta=0) | dpm (DPM-Solver++ 2M)
    sampling_steps: int = 10  # denoising steps per image
    generate_batch_size: int = 256  # images denoised together
    checkpoint_every: int = 200  # save a resumable checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # newest step-N checkpoint folders kept in out_dir
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # seeds weights, batches, noise and label dropout
    threads: int = 0  # torch CPU threads in fit / generate (0: torch's default, every core: nothing runs beside it)
    precision: str = "auto"  # the product's precision policy: auto (bf16 autocast on CUDA) | no | bf16 | fp16
    # DP-SGD (see generators/dp_sgd.py): batch_size is then the expected Poisson batch, grad_clip is
    # replaced by per-example clipping, training runs in float32
    dp_epsilon: float | None = None  # target ε of DP-SGD training (None: no DP)
    dp_delta: float | None = None  # target δ (None: 1 / (10 N))
    dp_max_grad_norm: float = 1.0  # per-example gradient clipping bound
    dp_noise_multiplicity: int = 4  # noise / timestep draws per example averaged before clipping (DPDM)
    dp_accountant: str = "rdp"  # Opacus accountant: rdp (as DPDM) | prv (tighter, slower to calibrate) | gdp
    dp_physical_batch: int = 64  # examples per forward / backward chunk under DP (memory only)

    def __post_init__(self) -> None:
        # JSON and CLI options give lists; keep the frozen config hashable and comparable
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        if self.sampler not in _SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid: {', '.join(_SAMPLER_NAMES)}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {self.channels}")
        if any(c % self.norm_groups for c in self.block_out_channels):
            raise ValueError(f"norm_groups={self.norm_groups} must divide block_out_channels={self.block_out_channels}")
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction must be epsilon or v_prediction, got {self.prediction!r}")
        if self.patch < 1:
            raise ValueError(f"patch must be at least 1, got {self.patch}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        for name in ("train_steps", "batch_size", "sampling_steps", "generate_batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.dp_settings(1)  # a bad DP field fails now

    def dp_settings(self, n: int) -> DPSettings | None:
        """The DP-SGD settings for ``n`` training images (None when not trained with DP)."""
        if self.dp_epsilon is None:
            return None
        return DPSettings(self.dp_epsilon, self.dp_delta, self.dp_max_grad_norm, self.dp_noise_multiplicity,
                          self.dp_accountant, self.dp_physical_batch)


_SAMPLER_NAMES = ("ddim", "dpm")


def config_from_dict(values: dict[str, Any]) -> ScratchConfig:
    """A :class:`ScratchConfig` from JSON values (a saved config and its overrides), checked against its
    schema: an unknown key, a wrong type or NaN is a one-line error naming the field."""
    return parse(ScratchConfig, values, path="options")


@GENERATORS.register("scratch", help="small class-conditioned diffusion UNet trained from scratch (CPU friendly)")
class ScratchGenerator(Generator):
    """Class-conditioned DDPM trained from scratch, sampled with classifier-free guidance."""

    name = "scratch"
    config_class = ScratchConfig
    option_aliases = {"steps": "train_steps", "lr": "learning_rate", "num_inference_steps": "sampling_steps"}
    sampling_fields = {"steps": "sampling_steps", "guidance": "guidance_scale"}
    config_file = CONFIG_FILE
    dp_fields = {"epsilon": "dp_epsilon", "delta": "dp_delta"}
    form_sizes = {"default": {}, "tiny (smoke test)": {"block_out_channels": [8, 16], "norm_groups": 4, "batch_size": 16}}

    def __init__(self, config: ScratchConfig | None = None) -> None:
        super().__init__(config or ScratchConfig())
        self.unet = None  # EMA weights, used for sampling; set by fit() or load()
        self.state: dict[str, Any] = {}  # num_classes, channels, resolution, output_size, steps

    # -- training --------------------------------------------------------------------------------
    def fit(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        labels: Sequence[int],
        out_dir: Path,
        progress: ProgressFn = no_progress,
    ) -> dict[str, Any]:
        """Train up to ``config.train_steps``, resuming from the newest checkpoint in ``out_dir``.

        Returns ``{final_loss, seconds_per_step, steps, resumed_from, params}``; ``seconds_per_step``
        is measured over the steps run by this call (the stored figure when none were left).
        """
        import torch

        cfg = self.config
        out_dir = Path(out_dir)
        # 1. check inputs and turn the images into one tensor in [-1, 1]
        if not (len(images) == len(prompts) == len(labels)) or not images:
            raise ValueError(
                f"need as many images, prompts and labels (got {len(images)}, {len(prompts)}, {len(labels)})"
            )
        pixels, state = _prepare_images(images, labels, cfg)
        state["data_sha256"] = _data_digest(pixels, labels)
        with _torch_threads(cfg.threads):
            # 2. model, EMA, optimiser, noise schedule and the seeded random stream, resumed from the
            # newest checkpoint if there is one
            run = _Training.start(cfg, state, out_dir, n=len(pixels))
            # 3. train: noise a batch at random timesteps, predict the noise / v (DDPM, eq. 14)
            data = (torch.from_numpy(pixels), torch.as_tensor(np.asarray(labels, dtype=np.int64)))
            sps = run.train(data, state, out_dir, progress)
            # 4. keep the EMA weights for sampling
            run.ema.copy_to(run.unet.parameters())
            run.unet.eval()
        self.unet = run.unet
        self.state = {**state, "steps": cfg.train_steps}
        metrics = {
            "final_loss": float(np.mean(run.recent_losses)) if run.recent_losses else None,
            "seconds_per_step": sps,
            "steps": self.state["steps"],
            "resumed_from": run.resumed_from,
            "params": sum(p.numel() for p in run.unet.parameters()),
        }
        if run.dp is not None:  # what the accountant says the whole training spent
            metrics["privacy"] = {**run.dp.record(cfg.train_steps).to_dict(),
                                  "noise_multiplicity": cfg.dp_noise_multiplicity}
        return metrics

    # -- presets and estimates -------------------------------------------------------------------
    @classmethod
    def suggest_options(cls, side: int, channels: int, images: int, device: str) -> dict[str, Any]:
        """The recipe by resolution, measured with ``benchmarks/scratch_generator.py`` (see the README).

        Up to 16 px the config's defaults (the digits quickstart). Above, the UNet sees
        ``side / patch`` ~ 14-16 px with ``channels * patch^2`` channels (a lossless space-to-depth,
        4x cheaper per step at patch 2), a (32, 64) UNet, v-prediction with Min-SNR-5 weighting,
        DPM-Solver++ with 10 steps and CFG 2: on Fashion-MNIST (680 members, 28 px) that took the
        teacher's class fidelity from 0.14 (epsilon, DDIM, no guidance) to 0.86 after 600 steps.
        Images larger than 64 px are modelled at 64 px. On CUDA the model is wider and trains longer.
        """
        if side <= 16:
            return {}
        resolution = min(side, 64)
        patch = 2 if resolution <= 32 else 4
        resolution -= resolution % (2 * patch)  # the UNet's side must halve once
        options: dict[str, Any] = {
            "patch": patch, "block_out_channels": (32, 64), "batch_size": 64, "learning_rate": 2e-3,
            "prediction": "v_prediction", "snr_gamma": 5.0, "sampler": "dpm", "sampling_steps": 10,
            "guidance_scale": 2.0, "train_steps": 700,
        }
        if resolution != side:
            options["resolution"] = resolution
        if device.startswith("cuda"):
            options.update({"block_out_channels": (64, 128, 256) if (resolution // patch) % 4 == 0
                            else (64, 128), "train_steps": 6000, "batch_size": 128, "threads": 0})
        return options

    def time_steps(self, side: int, channels: int, num_classes: int) -> dict[str, float]:
        """Median seconds of one training step and per generated image, timed on noise with the very code
        that trains and samples (3 training steps after one warm-up; one sampling pass of 32 images)."""
        import tempfile

        import torch

        cfg = replace(self.config, train_steps=1, checkpoint_every=0)
        if cfg.dp_epsilon is not None:  # a DP step costs the same whatever the noise: time it at a budget one step meets
            cfg = replace(cfg, dp_epsilon=max(cfg.dp_epsilon, 10.0), dp_delta=None)
        resolution = cfg.resolution or side
        resolution -= resolution % cfg.patch
        state = {"num_classes": num_classes, "channels": cfg.channels or channels, "resolution": resolution,
                 "output_size": (side, side), "patch": cfg.patch}
        # as many rows as a batch: a DP step Poisson-samples about batch_size of them
        shape = (max(16, cfg.batch_size), state["channels"] * cfg.patch ** 2, resolution // cfg.patch,
                 resolution // cfg.patch)
        data = (torch.randn(shape), torch.randint(0, num_classes, (shape[0],)))
        with _torch_threads(cfg.threads), tempfile.TemporaryDirectory() as out:
            run = _Training.start(cfg, state, Path(out), n=shape[0])
            times = []
            for step in range(1, 5):  # the first step warms up and is not counted
                start = time.perf_counter()
                run.step(data, num_classes, step)
                times.append(time.perf_counter() - start)
        sampler = ScratchGenerator(cfg)
        sampler.unet, sampler.state = run.unet.eval(), state
        batch = min(cfg.generate_batch_size, 32)
        start = time.perf_counter()
        sampler.generate([""] * batch, [k % num_classes for k in range(batch)], list(range(batch)))
        image_s = (time.perf_counter() - start) / batch
        return {"train_step_s": float(np.median(times[1:])), "image_s": image_s,
                "train_steps": self.config.train_steps}

    # -- sampling --------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        labels: Sequence[int],
        seeds: Sequence[int],
        progress: ProgressFn = no_progress,
    ) -> list[Image.Image]:
        """One RGB image per (label, seed) at the training images' size; prompts are ignored.

        Each image starts from noise drawn by its own ``torch.Generator`` seeded with its seed and
        is denoised deterministically, so it does not depend on which images share its batch.
        """
        import torch

        cfg = self.config
        # 1. check inputs
        if self.unet is None:
            raise RuntimeError("the scratch generator has no weights yet: call fit() or load() first")
        if not (len(prompts) == len(labels) == len(seeds)):
            raise ValueError(
                f"need as many prompts, labels and seeds (got {len(prompts)}, {len(labels)}, {len(seeds)})"
            )
        num_classes = self.state["num_classes"]
        bad = sorted({int(y) for y in labels if not 0 <= int(y) < num_classes})
        if bad:
            raise ValueError(f"labels {bad} outside the {num_classes} classes this generator was trained on")
        device = next(self.unet.parameters()).device
        patch = self.state.get("patch", 1)
        side = self.state["resolution"] // patch
        shape = (self.state["channels"] * patch * patch, side, side)

        images: list[Image.Image] = []
        started = time.perf_counter()
        with _torch_threads(cfg.threads), torch.inference_mode():
            for start in range(0, len(seeds), cfg.generate_batch_size):
                # 2. per-image initial noise, each from its own seeded generator
                chunk = slice(start, start + cfg.generate_batch_size)
                noise = torch.stack([
                    torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds[chunk]
                ]).to(device)
                y = torch.as_tensor([int(v) for v in labels[chunk]], device=device)
                # 3. denoise with classifier-free guidance
                x = self._denoise(noise, y)
                # 4. back to uint8 RGB at the dataset's size
                images += _to_pil(_from_patches(x, self.state.get("patch", 1)), self.state["output_size"])
                elapsed = time.perf_counter() - started
                progress(Progress("generate", len(images), len(seeds),
                                  {"images/s": len(images) / max(elapsed, 1e-9)}))
        return images

    def _denoise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch

        cfg = self.config
        scheduler = _build_sampler(cfg)
        scheduler.set_timesteps(cfg.sampling_steps, device=x.device)
        guided = cfg.guidance_scale != 1.0
        labels = torch.cat([y, torch.full_like(y, self.state["num_classes"])]) if guided else y
        for t in scheduler.timesteps:
            model_in = torch.cat([x, x]) if guided else x
            with autocast(str(x.device), cfg.precision):
                eps = self.unet(model_in, t, class_labels=labels).sample.float()
            if guided:
                eps_c, eps_u = eps.chunk(2)
                eps = eps_u + cfg.guidance_scale * (eps_c - eps_u)
            x = scheduler.step(eps, t, x).prev_sample
        # NaN would be written as black images (clamp keeps NaN, uint8 makes it 0): stop instead
        broken = int((~torch.isfinite(x.flatten(1)).all(1)).sum())
        if broken:
            raise SamplerDiverged(
                f"the scratch sampler produced NaN or infinity in {broken} of {len(x)} images ({cfg.sampler}, "
                f"{cfg.sampling_steps} steps, guidance_scale {cfg.guidance_scale:g}): lower guidance_scale, or "
                "retrain the generator if its loss diverged")
        return x

    # -- self-description ----------------------------------------------------------------------
    @classmethod
    def checkpoints(cls, generator_dir: Path) -> list[tuple[int, Path]]:
        """``step-N`` folders that :meth:`fit` kept in the run's ``checkpoints/`` beside the generator."""
        root = Path(generator_dir).parent / "checkpoints"
        if not root.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name)))

    @classmethod
    def load_variant(cls, variant: Any, **overrides: Any) -> ScratchGenerator:
        from . import resolve_options

        if variant.checkpoint is None:
            return cls.load(variant.generator_dir, **resolve_options(cls, overrides))
        return cls.load_checkpoint(variant.checkpoint, **resolve_options(cls, overrides))

    @classmethod
    def comparison_options(cls, train_steps: int) -> dict[str, Any]:
        return {"checkpoint_every": max(1, train_steps // 4), "keep_checkpoints": 4}

    # -- persistence -----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """``unet/`` (safetensors, EMA weights), ``scheduler/``, the config and the data-derived state."""
        if self.unet is None:
            raise RuntimeError("nothing to save: call fit() or load() first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet", safe_serialization=True)
        _build_noise_schedule(self.config).save_pretrained(directory / "scheduler")
        write_json(directory / CONFIG_FILE, self.config)
        write_json(directory / STATE_FILE, {"backend": self.name, **self.state})

    @classmethod
    def load(cls, directory: Path, **overrides: Any) -> ScratchGenerator:
        """Load what :meth:`save` wrote; ``overrides`` replace config fields (e.g. guidance_scale)."""
        from diffusers import UNet2DModel

        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / "unet").is_dir():
            raise FileNotFoundError(f"{directory} holds no saved scratch generator (no {CONFIG_FILE} / unet/)")
        config = config_from_dict({**read_json(directory / CONFIG_FILE), **overrides})
        generator = cls(config)
        state = read_json(directory / STATE_FILE)
        state.pop("backend", None)
        state["output_size"] = tuple(state["output_size"])
        generator.state = state
        unet = UNet2DModel.from_pretrained(directory / "unet", use_safetensors=True)
        generator.unet = unet.to(resolve_device(config.device)).eval()
        return generator

    @classmethod
    def load_checkpoint(cls, path: Path, **overrides: Any) -> ScratchGenerator:
        """A ``step-N`` checkpoint folder of :meth:`fit` as a generator, with its EMA weights (what the
        final generator samples with); ``overrides`` replace config fields."""
        import torch
        from diffusers.training_utils import EMAModel

        path = Path(path)
        generator = cls.load(path, **overrides)
        ema_state = torch.load(path / "training_state.pt", weights_only=True).get("ema")
        if ema_state:
            ema = EMAModel(generator.unet.parameters())
            ema.load_state_dict(ema_state)
            ema.copy_to(generator.unet.parameters())
        generator.state = {**generator.state, "steps": int(path.name.split("-")[1])}
        return generator


@dataclass
class _Training:
    """The scratch generator's training state: UNet, optimiser, EMA, noise schedule, random stream."""

    cfg: ScratchConfig
    unet: Any
    optimizer: Any
    ema: Any
    noise_schedule: Any
    rng: Any
    device: str
    recent_losses: list[float]
    resumed_from: int = 0
    stored_sps: float | None = None
    dp: DPStep | None = None  # DP-SGD's sampler, clipping, noise and accounting (None: plain training)

    @classmethod
    def start(cls, cfg: ScratchConfig, state: dict[str, Any], out_dir: Path, n: int | None = None) -> _Training:
        """Everything built from the config's seed, then resumed from the newest checkpoint in ``out_dir``;
        ``n``: the number of training images (DP-SGD's sampling rate and δ depend on it)."""
        import torch
        from diffusers.training_utils import EMAModel

        device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        unet = _build_unet(cfg, state).to(device)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
        run = cls(cfg, unet, optimizer, ema, _build_noise_schedule(cfg), torch.Generator().manual_seed(cfg.seed),
                  device, [])
        latest = latest_checkpoint(out_dir)
        if latest is not None:
            run.resumed_from, run.recent_losses, run.stored_sps = _load_checkpoint(
                latest, cfg, state, unet, optimizer, ema, run.rng)
            logger.info("resuming scratch generator from %s (step %d)", latest, run.resumed_from)
        if run.resumed_from > cfg.train_steps:
            raise ValueError(f"{out_dir} holds a checkpoint at step {run.resumed_from}, past train_steps="
                             f"{cfg.train_steps}; raise train_steps or use a new out_dir")
        settings = cfg.dp_settings(n or cfg.batch_size)
        if settings is not None:  # the noise is calibrated to every planned step, the resumed ones included
            run.dp = DPStep(unet, optimizer, settings, n or cfg.batch_size, cfg.batch_size, cfg.train_steps, cfg.seed)
            run.dp.steps_taken = run.resumed_from
        return run

    def train(self, data: tuple[torch.Tensor, torch.Tensor], state: dict[str, Any], out_dir: Path,
              progress: ProgressFn) -> float | None:
        """The remaining steps, a checkpoint every ``checkpoint_every`` and at the end; returns s/step."""
        cfg = self.cfg
        self.ema.to(self.device)
        self.unet.train()
        started, sps = time.perf_counter(), self.stored_sps
        for step in range(self.resumed_from + 1, cfg.train_steps + 1):
            self.step(data, state["num_classes"], step)
            sps = (time.perf_counter() - started) / (step - self.resumed_from)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.train_steps:
                self.save(out_dir, step, state, sps)
            progress(Progress("finetune", step, cfg.train_steps,
                              {"loss": float(np.mean(self.recent_losses)), "s/step": sps}))
        if cfg.train_steps > self.resumed_from:
            self.save(out_dir, cfg.train_steps, state, sps)
        return sps

    def step(self, data: tuple[torch.Tensor, torch.Tensor], null_class: int, step: int) -> float:
        """One optimiser step on a batch drawn from the seeded stream (classifier-free guidance: a
        ``cfg_dropout`` share of the labels replaced by the null class)."""
        import torch

        if self.dp is not None:
            return self.dp_step(data, null_class, step)
        cfg, (x_all, y_all) = self.cfg, data
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=self.rng)
        x0, y = x_all[idx], y_all[idx].clone()
        noise = torch.randn(x0.shape, generator=self.rng)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=self.rng)
        y[torch.rand(cfg.batch_size, generator=self.rng) < cfg.cfg_dropout] = null_class
        x0, y, noise, t = x0.to(self.device), y.to(self.device), noise.to(self.device), t.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.learning_rate * min(1.0, step / max(1, cfg.warmup_steps))
        noisy = self.noise_schedule.add_noise(x0, noise, t)
        with autocast(self.device, cfg.precision):
            pred = self.unet(noisy, t, class_labels=y).sample
        loss = _diffusion_loss(pred.float(), x0, noise, t, self.noise_schedule, cfg)
        value = loss.item()
        check_loss(value, self.recent_losses[0] if self.recent_losses else None, "generator", f"step {step}",
                   cfg.learning_rate)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.ema.step(self.unet.parameters())
        self.recent_losses = (self.recent_losses + [value])[-50:]
        return value

    def dp_step(self, data: tuple[torch.Tensor, torch.Tensor], null_class: int, step: int) -> float:
        """One DP-SGD step: a Poisson batch, K noise / timestep draws per image whose losses are averaged
        before that image's gradient is clipped (DPDM sec. 4), Opacus' noise on the sum; float32."""
        import torch

        cfg, (x_all, y_all), k = self.cfg, data, self.cfg.dp_noise_multiplicity
        # 1. the batch and every random draw, outside the per-example map (same seeded stream)
        idx = self.dp.sample(self.rng)
        b = len(idx)
        x0 = x_all[idx].unsqueeze(1).expand(b, k, *x_all.shape[1:])
        y = y_all[idx].unsqueeze(1).expand(b, k).clone()
        noise = torch.randn(x0.shape, generator=self.rng)
        t = torch.randint(0, cfg.num_train_timesteps, (b, k), generator=self.rng)
        y[torch.rand((b, k), generator=self.rng) < cfg.cfg_dropout] = null_class
        x0, y, noise, t = x0.to(self.device), y.to(self.device), noise.to(self.device), t.to(self.device)
        flat = (b * k, *x_all.shape[1:])
        noisy = self.noise_schedule.add_noise(x0.reshape(flat), noise.reshape(flat), t.reshape(-1)).reshape(x0.shape)
        target, weights = _loss_target(x0.reshape(flat), noise.reshape(flat), t.reshape(-1), self.noise_schedule, cfg)
        target = target.reshape(x0.shape)
        weights = torch.ones(b, k, device=self.device) if weights is None else weights.reshape(b, k)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.learning_rate * min(1.0, step / max(1, cfg.warmup_steps))

        # 2. one image's loss: its K draws averaged (weighted MSE), through the functional UNet
        def loss_fn(unet, noisy_k, t_k, y_k, target_k, weights_k):
            pred = unet(noisy_k, t_k, class_labels=y_k).sample
            return (((pred - target_k) ** 2).mean(dim=(1, 2, 3)) * weights_k).mean()

        # 3. per-example gradients, clipping, noise, the optimiser step; EMA of the noisy weights
        value = self.dp.step(loss_fn, (noisy, t, y, target, weights))
        if value == value:  # NaN for an empty Poisson batch
            check_loss(value, self.recent_losses[0] if self.recent_losses else None, "generator", f"step {step}",
                       cfg.learning_rate)
            self.recent_losses = (self.recent_losses + [value])[-50:]
        self.ema.step(self.unet.parameters())
        return value

    def save(self, out_dir: Path, step: int, state: dict[str, Any], sps: float | None) -> None:
        _save_checkpoint(out_dir, step, self.cfg, state, self.unet, self.optimizer, self.ema, self.rng,
                         self.recent_losses, sps)


# -- building blocks ----------------------------------------------------------------------------
def _build_unet(cfg: ScratchConfig, state: dict[str, Any]):
    from diffusers import UNet2DModel

    levels = len(cfg.block_out_channels)
    side = state["resolution"] // cfg.patch
    if state["resolution"] % cfg.patch or side % 2 ** (levels - 1):
        raise ValueError(
            f"resolution {state['resolution']} / patch {cfg.patch} cannot be halved {levels - 1} times; "
            "use fewer block_out_channels, another patch or set resolution"
        )
    channels = state["channels"] * cfg.patch ** 2
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=side,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_groups,
        attention_head_dim=8,
        num_class_embeds=state["num_classes"] + 1,  # the last row is the "null" class of CFG
    )


def _build_noise_schedule(cfg: ScratchConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction, clip_sample=True)


def _diffusion_loss(pred, x0, noise, t, noise_schedule, cfg: ScratchConfig):
    """MSE to the prediction target, Min-SNR-gamma weighted when ``cfg.snr_gamma`` is set.

    The weights follow diffusers' ``train_text_to_image.py`` (``compute_snr`` from
    ``diffusers.training_utils``): min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v.
    """
    import torch

    target, weights = _loss_target(x0, noise, t, noise_schedule, cfg)
    if weights is None:
        return torch.nn.functional.mse_loss(pred, target)
    per_image = torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    return (per_image * weights).mean()


def _loss_target(x0, noise, t, noise_schedule, cfg: ScratchConfig):
    """The prediction target (noise or v) and the per-image Min-SNR weights (None: plain MSE)."""
    import torch
    from diffusers.training_utils import compute_snr

    target = noise if cfg.prediction == "epsilon" else noise_schedule.get_velocity(x0, noise, t)
    if cfg.snr_gamma is None:
        return target, None
    snr = compute_snr(noise_schedule, t)
    clipped = torch.clamp(snr, max=cfg.snr_gamma)
    return target, clipped / snr if cfg.prediction == "epsilon" else clipped / (snr + 1)


def _build_sampler(cfg: ScratchConfig):
    """A deterministic sampler over the training noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    schedule = _build_noise_schedule(cfg).config
    # "trailing" spacing starts at the last training step, which matters with ~10 steps
    # (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.3)
    samplers = {
        "ddim": lambda: DDIMScheduler.from_config(schedule, timestep_spacing="trailing", clip_sample=True),
        "dpm": lambda: DPMSolverMultistepScheduler.from_config(
            schedule, timestep_spacing="trailing", algorithm_type="dpmsolver++", solver_order=2,
            thresholding=False, lower_order_final=True),
    }
    return samplers[cfg.sampler]()


def _prepare_images(
    images: Sequence[Image.Image], labels: Sequence[int], cfg: ScratchConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Images -> float32 array (N, C, R, R) in [-1, 1], plus the state the data decides."""
    sizes = {im.size for im in images}
    if len(sizes) > 1 and cfg.resolution is None:
        raise ValueError(f"training images have {len(sizes)} different sizes; set resolution to train at one")
    output_size = images[0].size
    resolution = cfg.resolution or max(output_size)
    if resolution % cfg.patch:
        raise ValueError(f"resolution {resolution} is not a multiple of patch {cfg.patch}; set resolution")
    if min(int(y) for y in labels) < 0:
        raise ValueError("labels must be non-negative class indices")
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.uint8))
    rgb = np.stack(arrays)  # N, R, R, 3
    grey = bool((rgb[..., :1] == rgb).all())
    channels = cfg.channels or (1 if grey else 3)
    data = rgb[..., :1] if channels == 1 else rgb
    pixels = _to_patches(data.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0, cfg.patch)
    state = {
        "num_classes": int(max(int(y) for y in labels)) + 1,
        "channels": channels,
        "resolution": resolution,
        "output_size": tuple(output_size),
        "grey": grey,
        "patch": cfg.patch,
    }
    return np.ascontiguousarray(pixels), state


def _to_patches(pixels: np.ndarray, patch: int) -> np.ndarray:
    """(N, C, R, R) -> (N, C*p*p, R/p, R/p), torch's ``pixel_unshuffle`` layout."""
    if patch == 1:
        return pixels
    import torch

    return torch.nn.functional.pixel_unshuffle(torch.from_numpy(pixels), patch).numpy()


def _from_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    import torch

    return x if patch == 1 else torch.nn.functional.pixel_shuffle(x, patch)


def _data_digest(pixels: np.ndarray, labels: Sequence[int]) -> str:
    digest = hashlib.sha256(pixels.tobytes())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _to_pil(x: torch.Tensor, output_size: tuple[int, int]) -> list[Image.Image]:
    arrays = ((x.clamp(-1, 1) + 1) * 127.5).round().to("cpu").numpy().astype(np.uint8)
    out = []
    for a in arrays:
        a = a.transpose(1, 2, 0)
        im = Image.fromarray(a[..., 0], "L").convert("RGB") if a.shape[2] == 1 else Image.fromarray(a, "RGB")
        if im.size != tuple(output_size):
            im = im.resize(tuple(output_size), Image.Resampling.BICUBIC)
        out.append(im)
    return out


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Use ``threads`` CPU threads inside the block (0: leave torch's setting), then restore it."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- checkpoints --------------------------------------------------------------------------------
def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete ``out_dir/step-N`` checkpoint folder, or None."""
    root = Path(out_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


def _save_checkpoint(out_dir: Path, step: int, cfg: ScratchConfig, state: dict[str, Any], unet, optimizer,
                     ema, rng, recent_losses: list[float], sps: float) -> None:
    """Write ``step-N`` via a temporary folder and a rename, so a killed run never leaves half of one."""
    import torch

    root = Path(out_dir)
    final, tmp = root / f"step-{step:07d}", root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    torch.save({
        "step": step,
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict(),
        "rng": rng.get_state(),
        "recent_losses": recent_losses,
        "seconds_per_step": sps,
    }, tmp / "training_state.pt")
    write_json(tmp / CONFIG_FILE, cfg)
    write_json(tmp / STATE_FILE, state)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    kept = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_RE.match(p.name)))
    for _, old in kept[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, cfg: ScratchConfig, state: dict[str, Any], unet, optimizer, ema,
                     rng) -> tuple[int, list[float], float | None]:
    """Restore weights, optimiser, EMA and random stream in place; returns (step, losses, s/step)."""
    import torch
    from safetensors.torch import load_file

    # a checkpoint of another model or other data cannot be continued: say so instead of mixing
    saved_cfg = read_json(path / CONFIG_FILE)
    now = to_jsonable(cfg)
    changed = sorted(k for k in now if k not in _RESUMABLE_FIELDS and saved_cfg.get(k) != now[k])
    saved_state = read_json(path / STATE_FILE)
    changed += sorted(k for k in state if saved_state.get(k) != to_jsonable(state[k]))
    if changed:
        raise ValueError(
            f"checkpoint {path} was trained with different {', '.join(changed)}; "
            "use a new out_dir or delete its step-* folders to start over"
        )
    unet.load_state_dict(load_file(path / "unet" / "diffusion_pytorch_model.safetensors"))
    training = torch.load(path / "training_state.pt", weights_only=True)
    optimizer.load_state_dict(training["optimizer"])
    ema.load_state_dict(training["ema"])
    rng.set_state(training["rng"])
    return training["step"], list(training["recent_losses"]), training["seconds_per_step"]

