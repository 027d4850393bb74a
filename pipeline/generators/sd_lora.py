"""The ``sd-lora`` backend: Stable Diffusion 1.x / 2.x fine-tuned with a peft LoRA on the UNet attention.

The recipe is that of diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` (frozen VAE and
text encoder, LoRA on ``to_q/to_k/to_v/to_out.0``, DDPM noise, epsilon or v target, optional Min-SNR
weighting), written as a small loop over library calls rather than a fork of the script. The LoRA is
saved in diffusers' format, so a plain ``StableDiffusionPipeline.load_lora_weights(folder)`` reads it.

Every training step draws its randomness (batch, flips, noise, timesteps) from a generator seeded by
``(seed, step)``: a run resumed from a checkpoint takes exactly the steps an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..core.common import (
    Progress,
    ProgressFn,
    no_progress,
    read_json,
    resolve_device,
    resolve_dtype,
    write_json,
)
from ..core.precision import PRECISIONS, autocast, compute_dtype
from ..core.schema import parse, schema
from . import GENERATORS, Generator, SamplerDiverged, Variant
from .dp_sgd import DPSettings, DPStep

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

logger = logging.getLogger(__name__)

ADAPTER = "tckr"  # peft adapter name of the one LoRA this backend carries
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # UNet attention projections (as the diffusers example)
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA weight name
CONFIG_FILE = "sd_lora.json"
CHECKPOINTS_KEPT = 2

# sampling schedulers by short name -> diffusers class name (built from the pipeline's scheduler config)
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


@schema
@dataclass(frozen=True)
class SDLoraConfig:
    """Fine-tuning and sampling settings of the ``sd-lora`` backend."""

    base: str = "stabilityai/stable-diffusion-2-1-base"  # hub id or local save_pretrained folder of SD 1.x/2.x
    rank: int = 16  # LoRA rank r
    alpha: float = 16.0  # LoRA alpha; the update is scaled by alpha / rank
    lr: float = 1e-4  # AdamW learning rate of the LoRA parameters
    steps: int = 1000  # optimizer steps in all (a resumed run counts the steps already done)
    batch_size: int = 8  # images per training step
    resolution: int = 224  # side in pixels of the training crops and of the generated images
    mixed_precision: str = "auto"  # the precision policy: auto (bf16 on CUDA) | no | fp16 | bf16; only on CUDA
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (5.0 in Hang et al. 2023; TCKR leaves it off); None = plain MSE
    gradient_checkpointing: bool = False  # trade UNet activation memory for recompute
    checkpoint_every: int = 500  # save LoRA + optimizer every N steps to out_dir/checkpoints; 0 = never
    max_grad_norm: float = 1.0  # gradient clipping of the LoRA parameters
    random_flip: bool = True  # horizontal flip of half the training crops
    seed: int = 0  # seeds the LoRA init and every step's batch, flips, noise and timesteps
    device: str = "auto"  # "auto" (cuda when visible), "cuda", "cuda:1", "cpu", ...
    dtype: str = "auto"  # inference dtype: "auto" (the precision policy: bf16 on CUDA, fp32 elsewhere), "fp32", "fp16", "bf16"
    num_inference_steps: int = 20  # denoising steps per image
    guidance_scale: float = 2.0  # classifier-free guidance weight
    scheduler: str | None = None  # sampling scheduler (a key of SCHEDULERS); None = the pipeline's own
    sample_batch_size: int = 32  # images per pipeline call in generate()
    lora_path: str | None = None  # an existing diffusers/kohya LoRA (file or folder) to load over the base
    fuse: bool = False  # fuse the LoRA into the base weights before sampling (faster, same images)
    lora_scale: float = 1.0  # strength of the LoRA when sampling (fused or not)
    channels_last: bool = False  # UNet and VAE in channels-last memory layout (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the UNet and the VAE decoder (fuses the LoRA first; minutes to warm up)
    # DP-SGD on the LoRA parameters only (Lyu et al., DP-LDM; see generators/dp_sgd.py): batch_size is then
    # the expected Poisson batch, max_grad_norm is replaced by per-example clipping, training runs in float32
    dp_epsilon: float | None = None  # target ε of DP-SGD fine-tuning (None: no DP)
    dp_delta: float | None = None  # target δ (None: 1 / (10 N))
    dp_max_grad_norm: float = 1.0  # per-example gradient clipping bound
    dp_noise_multiplicity: int = 4  # noise / timestep draws per example averaged before clipping (DPDM)
    dp_accountant: str = "rdp"  # Opacus accountant: rdp | prv | gdp
    dp_physical_batch: int = 8  # examples per forward / backward chunk under DP (memory only)

    def __post_init__(self) -> None:
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, "
                             f"not {self.mixed_precision!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; valid names: {', '.join(SCHEDULERS)}")
        for name in ("rank", "batch_size", "resolution", "sample_batch_size", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.steps < 0 or self.checkpoint_every < 0:
            raise ValueError("steps and checkpoint_every must not be negative")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive or None, not {self.snr_gamma}")
        self.dp_settings()  # a bad DP field fails now

    def dp_settings(self) -> DPSettings | None:
        """The DP-SGD settings (None when not fine-tuned with DP)."""
        if self.dp_epsilon is None:
            return None
        return DPSettings(self.dp_epsilon, self.dp_delta, self.dp_max_grad_norm, self.dp_noise_multiplicity,
                          self.dp_accountant, self.dp_physical_batch)


# ----------------------------------------------------------------------------------------------------
# pure maths


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) of DDPM timesteps. alphas_cumprod: (T,), timesteps: (B,) -> (B,)."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weights(snr_values: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023, eq. 8 and its v-prediction form).

    min(SNR, γ) / SNR for epsilon targets, min(SNR, γ) / (SNR + 1) for v targets. (B,) -> (B,).
    """
    clipped = torch.clamp(snr_values, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr_values
    if prediction_type == "v_prediction":
        return clipped / (snr_values + 1.0)
    raise ValueError(f"Min-SNR weighting needs an epsilon or v_prediction model, not {prediction_type!r}")


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor,
                   weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Weighted MSE of a denoiser. pred, target: (B, C, H, W); weights: (B,) or None.

    Returns ``loss`` (what to back-propagate) and ``mse`` (the unweighted mean, detached).
    """
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, pred.ndim)))
    loss = per_sample.mean() if weights is None else (per_sample * weights).mean()
    return {"loss": loss, "mse": per_sample.mean().detach()}


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Dataset indices of training step ``step``: epochs of seeded permutations, read in order."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [int(_epoch_order(n, seed, p // n)[p % n]) for p in positions]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator that all of one training step's randomness is drawn from."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def image_to_tensor(image: Image.Image, resolution: int, flip: bool = False) -> torch.Tensor:
    """Resize the short side to ``resolution``, center-crop a square, optionally mirror; (3, R, R) in [-1, 1]."""
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------------
# LoRA files


def add_component_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Prefix ``unet.`` to the keys of a UNet-only LoRA saved without component names.

    Early diffusers LoRA training scripts saved with ``UNet2DConditionLoadersMixin.save_attn_procs``, which
    wrote ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight`` (often
    pickled as ``pytorch_lora_weights.bin``). diffusers 0.42 still converts the ``processor.to_q_lora.down`` part itself, but its
    ``load_lora_weights`` keeps only keys starting with ``unet.`` / ``text_encoder.``, so such a file would
    load nothing (with only a warning). State dicts that already carry a prefix are returned unchanged.
    """
    if any(k.startswith(("unet.", "text_encoder.", "lora_unet_", "lora_te")) for k in state_dict):
        return state_dict
    return {f"unet.{k}": v for k, v in state_dict.items()}


def _lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def save_lora(pipe: StableDiffusionPipeline, directory: Path) -> Path:
    """Write the pipeline's LoRA (UNet and, when present, text encoder) as diffusers-format safetensors.

    The peft config goes into the file's metadata, so diffusers restores ``alpha`` (not just the rank).
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers: dict[str, Any] = {}
    for component in ("unet", "text_encoder"):
        model = getattr(pipe, component)
        if ADAPTER in (getattr(model, "peft_config", None) or {}):
            state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
            layers[f"{component}_lora_layers"] = convert_state_dict_to_diffusers(state)
            layers[f"{component}_lora_adapter_metadata"] = model.peft_config[ADAPTER].to_dict()
    if not layers:
        raise ValueError("this generator has no LoRA to save; call fit() or set lora_path first")
    StableDiffusionPipeline.save_lora_weights(directory, weight_name=LORA_FILE, **layers)
    return Path(directory) / LORA_FILE


def load_lora(pipe: StableDiffusionPipeline, path: str | Path) -> None:
    """Load a LoRA file or folder (diffusers new or old key format, kohya) into ``pipe`` as adapter ``tckr``."""
    # a file goes in as (folder, weight_name): diffusers then reads .safetensors and pickled .bin alike
    file = Path(path).is_file()
    source = str(Path(path).parent) if file else str(path)
    kwargs = {"weight_name": Path(path).name} if file else {}
    state_dict = pipe.lora_state_dict(source, **kwargs)[0]
    prefixed = add_component_prefix(state_dict)
    if prefixed is state_dict:  # by path, so diffusers also reads the alpha stored in the file's metadata
        pipe.load_lora_weights(source, adapter_name=ADAPTER, **kwargs)
    else:
        pipe.load_lora_weights(prefixed, adapter_name=ADAPTER)
    if not _lora_layers(pipe.unet) and not _lora_layers(pipe.text_encoder):
        raise ValueError(f"no LoRA weights for this pipeline found in {path}")


# ----------------------------------------------------------------------------------------------------
# the backend


@GENERATORS.register("sd-lora", help="Stable Diffusion 1.x/2.x + LoRA fine-tuned on the UNet attention")
class SDLoraGenerator(Generator):
    """Stable Diffusion with a peft LoRA: fine-tunes on image + caption pairs, samples from prompts."""

    name = "sd-lora"
    config_class = SDLoraConfig
    dp_fields = {"epsilon": "dp_epsilon", "delta": "dp_delta"}
    sampling_fields = {"steps": "num_inference_steps", "guidance": "guidance_scale"}
    config_file = CONFIG_FILE
    base_field = "base"
    path_fields = frozenset({"base", "lora_path"})

    def __init__(self, config: SDLoraConfig) -> None:
        super().__init__(config)
        self._pipe: StableDiffusionPipeline | None = None
        self._fused = False
        self._fused_scale = 1.0
        self._inference_ready = False

    @classmethod
    def from_pipeline(cls, pipe: StableDiffusionPipeline, config: SDLoraConfig) -> SDLoraGenerator:
        """Wrap an already built pipeline (``config.base`` is then only recorded); ``pipe`` is modified."""
        generator = cls(config)
        generator._pipe = generator._setup(pipe)
        return generator

    @property
    def pipe(self) -> StableDiffusionPipeline:
        """The pipeline, loaded from ``config.base`` on first use."""
        if self._pipe is None:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(
                self.config.base, safety_checker=None, requires_safety_checker=False
            )
            self._pipe = self._setup(pipe)
        return self._pipe

    @property
    def device(self) -> str:
        return resolve_device(self.config.device)

    @property
    def has_lora(self) -> bool:
        return bool(_lora_layers(self.pipe.unet) or _lora_layers(self.pipe.text_encoder))

    def _setup(self, pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
        import diffusers

        pipe.set_progress_bar_config(disable=True)  # progress goes through the progress callback
        if self.config.scheduler is not None:  # built from the base's config: its prediction type carries over
            scheduler_class = getattr(diffusers, SCHEDULERS[self.config.scheduler])
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
        if self.config.lora_path is not None:
            load_lora(pipe, self.config.lora_path)
        return pipe

    # -- training ---------------------------------------------------------------------------------

    def fit(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        labels: Sequence[int],
        out_dir: Path,
        progress: ProgressFn = no_progress,
    ) -> dict[str, Any]:
        """LoRA-fine-tune the UNet on (image, prompt) pairs; labels are unused (the prompt conditions).

        Checkpoints go to ``out_dir/checkpoints/step-XXXXXX`` and the final LoRA + config to ``out_dir``.
        """
        cfg = self.config
        # 1. check inputs
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt per image")
        if not images:
            raise ValueError("fit() needs at least one image")
        if self.has_lora:
            raise ValueError("this generator already carries a LoRA (lora_path or an earlier fit); "
                             "fine-tune from a fresh generator on the base model")
        out_dir = Path(out_dir)
        # 2. frozen base in the policy's weight dtype, a fresh seeded LoRA kept in float32, its optimiser
        training = self._start_training(len(images))
        # 3. resume from the latest checkpoint in out_dir, if any
        start = self._resume(out_dir / "checkpoints", training.optimizer, training.scaler)
        # 4. the training loop
        losses: list[float] = []
        started = time.perf_counter()
        if training.dp is not None:
            training.dp.steps_taken = start
        for step in range(start, cfg.steps):
            parts = training.step(images, prompts, step)
            if parts["loss"] == parts["loss"]:  # NaN: an empty Poisson batch under DP
                losses.append(float(parts["loss"].detach()))
            done = step + 1
            if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                self._save_checkpoint(out_dir / "checkpoints", done, training.optimizer, training.scaler)
            progress(Progress("finetune", done, cfg.steps, {"loss": losses[-1] if losses else None,
                                                            "mse": float(parts["mse"])}))
        # 5. back to inference; the final LoRA and config go to out_dir
        if cfg.gradient_checkpointing:
            self.pipe.unet.disable_gradient_checkpointing()
        self.pipe.unet.eval()
        seconds = time.perf_counter() - started
        lora_file = self.save(out_dir)
        privacy = {} if training.dp is None else {"privacy": {**training.dp.record(cfg.steps).to_dict(),
                                                              "noise_multiplicity": cfg.dp_noise_multiplicity}}
        return {**privacy,
            "final_loss": losses[-1] if losses else None,
            "mean_loss": float(np.mean(losses)) if losses else None,
            "steps": cfg.steps,
            "steps_run": len(losses),
            "resumed_from": start,
            "seconds_per_step": seconds / len(losses) if losses else None,
            "lora_path": str(lora_file),
            "prediction_type": training.noise_scheduler.config.prediction_type,  # the base model's
        }

    def _start_training(self, n: int) -> _LoraTraining:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        cfg, device = self.config, self.device
        # per-example gradients under DP in float32 (as Opacus); otherwise the precision policy on CUDA
        precision = cfg.mixed_precision if device.startswith("cuda") and cfg.dp_epsilon is None else "no"
        if precision != cfg.mixed_precision and cfg.mixed_precision != "auto":
            logger.info("mixed_precision=%s ignored on %s; training in float32", cfg.mixed_precision, device)
        dtype = compute_dtype(device, precision)
        pipe, unet = self.pipe, self.pipe.unet
        self._inference_ready = False
        for model in (unet, pipe.vae, pipe.text_encoder):
            model.requires_grad_(False)
        pipe.vae.eval()
        pipe.text_encoder.eval()
        pipe.to(device, dtype or torch.float32)
        lora_config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                 target_modules=list(LORA_TARGETS))
        with torch.random.fork_rng():  # seed the LoRA init without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            unet.add_adapter(lora_config, adapter_name=ADAPTER)
        cast_training_params(unet, dtype=torch.float32)
        params = [p for p in unet.parameters() if p.requires_grad]
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        # the base model's own noise schedule and target: SD 2 (768-v) and 2.1 predict v, SD 1.x and the
        # 2.x "-base" models epsilon (the `prediction_type` of the base's scheduler config, as the
        # diffusers example reads it); the sampler is built from the same config (see _setup)
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        if noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"cannot train a {noise_scheduler.config.prediction_type!r} model; need epsilon or "
                             "v_prediction")
        logger.info("sd-lora: %s base, training target %s", cfg.base, noise_scheduler.config.prediction_type)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr)
        settings = cfg.dp_settings()  # DP-SGD on the LoRA parameters only: the base stays frozen
        dp = None if settings is None else DPStep(unet, optimizer, settings, n, cfg.batch_size, cfg.steps, cfg.seed)
        return _LoraTraining(cfg, pipe, params, optimizer, torch.amp.GradScaler("cuda", enabled=dtype is torch.float16),
                             noise_scheduler, precision, dp)

    def _save_checkpoint(self, root: Path, step: int, optimizer: torch.optim.Optimizer,
                         scaler: torch.amp.GradScaler) -> None:
        final = root / f"step-{step:06d}"
        partial = root / f".step-{step:06d}.partial"  # renamed when complete: a crash leaves no half checkpoint
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_lora(self.pipe, partial)
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        if scaler.is_enabled():
            torch.save(scaler.state_dict(), partial / "scaler.pt")
        write_json(partial / "state.json", {"step": step, "config": self.config})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in _checkpoints(root)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old)

    def _resume(self, root: Path, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> int:
        """Load the latest checkpoint under ``root`` into the LoRA and optimizer; returns its step (or 0)."""
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict

        found = _checkpoints(root)
        if not found:
            return 0
        latest = found[-1]
        state_dict = self.pipe.lora_state_dict(str(latest))[0]
        # the diffusers example's load_model_hook: strip the prefix, back to peft key names
        unet_state = convert_unet_state_dict_to_peft(
            {k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")})
        result = set_peft_model_state_dict(self.pipe.unet, unet_state, adapter_name=ADAPTER)
        unexpected = [k for k in getattr(result, "unexpected_keys", None) or [] if "lora_" in k]
        missing = [k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k and ADAPTER in k]
        if unexpected or missing:
            raise ValueError(f"checkpoint {latest} does not fit this LoRA (its targets differ): "
                             f"{(unexpected + missing)[:3]}; use another out_dir or the same config")
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location=self.device))
        if scaler.is_enabled() and (latest / "scaler.pt").exists():
            scaler.load_state_dict(torch.load(latest / "scaler.pt"))
        step = int(read_json(latest / "state.json")["step"])
        logger.info("resuming sd-lora fine-tuning from %s (step %d)", latest, step)
        return step

    # -- sampling ---------------------------------------------------------------------------------

    def fuse(self, lora_scale: float | None = None) -> None:
        """Merge the LoRA (times ``lora_scale``, default config.lora_scale) into the base weights."""
        if self._fused:
            raise ValueError("the LoRA is already fused; unfuse() first")
        if not self.has_lora:
            raise ValueError("there is no LoRA to fuse; call fit() or set lora_path")
        scale = self.config.lora_scale if lora_scale is None else lora_scale
        self.pipe.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER])
        self._fused = True
        self._fused_scale = scale

    def unfuse(self) -> None:
        """Undo :meth:`fuse`: the base weights are restored and the LoRA runs as separate layers again."""
        if not self._fused:
            raise ValueError("the LoRA is not fused")
        self.pipe.unfuse_lora()
        self._fused = False
        if self._fused_scale != 1.0:
            # diffusers 0.42's fuse_lora(lora_scale=s) multiplies every LoRA layer's scaling by s before
            # merging and unfuse_lora() never divides it back (loaders/peft.py, _fuse_lora_apply), so
            # the unfused LoRA would run at s times its strength; reset each layer to alpha / r
            for layer in _lora_layers(self.pipe.unet) + _lora_layers(self.pipe.text_encoder):
                if hasattr(layer, "unscale_layer"):
                    layer.unscale_layer(None)

    def unload_lora(self) -> None:
        """Remove the LoRA altogether (unfusing first): the pipeline is the base model again."""
        if self._fused:
            self.unfuse()
        self.pipe.unload_lora_weights()

    def _ensure_inference(self) -> None:
        if self._inference_ready:
            return
        device = self.device
        self.pipe.to(device, resolve_dtype(self.config.dtype, device))
        self.pipe.unet.eval()
        cfg = self.config
        if (cfg.fuse or cfg.compile) and self.has_lora and not self._fused:
            self.fuse()  # a compiled UNet with separate LoRA layers breaks its graph at each of them
        if cfg.channels_last:
            self.pipe.unet.to(memory_format=torch.channels_last)
            self.pipe.vae.to(memory_format=torch.channels_last)
        if cfg.compile:
            # the recipe of diffusers' "accelerate inference" guide: the UNet whole, the VAE's decoder
            self.pipe.unet = torch.compile(self.pipe.unet, fullgraph=True)
            self.pipe.vae.decode = torch.compile(self.pipe.vae.decode, fullgraph=True)
        self._inference_ready = True

    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        output_type: str = "pil",
        progress: ProgressFn = no_progress,
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Generate one image per (prompt, seed) in batches; output_type as the pipeline's ("pil", "np", "pt").

        Each image has its own CPU ``torch.Generator``, so its starting noise depends on its seed only.
        """
        # 1. check inputs
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        cfg = self.config
        self._ensure_inference()
        lora_kwargs = {"scale": cfg.lora_scale} if self.has_lora and not self._fused else None
        batch = cfg.sample_batch_size
        n_batches = math.ceil(len(prompts) / batch)
        outputs: list[Any] = []
        started = time.perf_counter()
        # 2. one pipeline call per batch
        for b in range(n_batches):
            chunk = slice(b * batch, (b + 1) * batch)
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[chunk]]
            done = b * batch

            def on_step_end(pipe, step, timestep, callback_kwargs, done=done, b=b):
                info = {"batch": b + 1, "batches": n_batches, "step": step + 1, "steps": pipe.num_timesteps}
                if not torch.isfinite(callback_kwargs["latents"]).all():  # stop at the step, not after decoding
                    raise SamplerDiverged(self._diverged(f"latents at step {step + 1} of {pipe.num_timesteps}"))
                progress(Progress("generate", done, len(prompts), info))
                return callback_kwargs

            # PIL images are made by _checked from the decoded arrays
            result = self.pipe(
                prompt=list(prompts[chunk]),
                height=cfg.resolution,
                width=cfg.resolution,
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                generator=generators,
                output_type="np" if output_type == "pil" else output_type,
                cross_attention_kwargs=lora_kwargs,
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            )
            outputs.append(self._checked(result.images, output_type))
            finished = min(len(prompts), (b + 1) * batch)
            rate = finished / (time.perf_counter() - started)
            progress(Progress("generate", finished, len(prompts), {"images_per_s": rate}))
        # 3. join the batches
        if output_type == "np":
            return np.concatenate(outputs) if outputs else np.zeros((0, cfg.resolution, cfg.resolution, 3))
        if output_type == "pt":
            return torch.cat(outputs) if outputs else torch.zeros(0, 3, cfg.resolution, cfg.resolution)
        return [image for images in outputs for image in images]

    def _checked(self, images: np.ndarray | torch.Tensor, output_type: str) -> Any:
        """A batch's decoded images, refused when not finite (the VAE's decoding overflowed in fp16, or NaN
        came through), as PIL images when asked for (made here from the arrays, so that NaN, black in PIL,
        is seen first)."""
        finite = np.isfinite(images).all() if output_type != "pt" else bool(torch.isfinite(images).all())
        if not finite:
            raise SamplerDiverged(self._diverged("the decoded images"))
        return self.pipe.numpy_to_pil(images) if output_type == "pil" else images

    def _diverged(self, where: str) -> str:
        cfg = self.config
        return (f"the sd-lora sampler produced NaN or infinity in {where} ({cfg.scheduler or 'its scheduler'}, "
                f"{cfg.num_inference_steps} steps, guidance_scale {cfg.guidance_scale:g}, dtype {cfg.dtype}): lower "
                "guidance_scale, or sample in float32 (dtype fp32) if the VAE overflows in float16")

    def generate(
        self,
        prompts: Sequence[str],
        labels: Sequence[int],
        seeds: Sequence[int],
        progress: ProgressFn = no_progress,
    ) -> list[Image.Image]:
        """PIL images, one per (prompt, seed); labels are unused (the prompt conditions)."""
        if len(labels) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(labels)} labels")
        return self.sample(prompts, seeds, output_type="pil", progress=progress)

    # -- self-description ---------------------------------------------------------------------------

    @classmethod
    def saved_config(cls, directory: Path) -> dict[str, Any]:
        return read_json(Path(directory) / CONFIG_FILE)["config"]

    @classmethod
    def checkpoints(cls, generator_dir: Path) -> list[tuple[int, Path]]:
        """``step-N`` folders :meth:`fit` kept under the run's ``checkpoints/checkpoints``."""
        return [(int(p.name.split("-")[1]), p) for p in _checkpoints(Path(generator_dir).parent / "checkpoints" / "checkpoints")]

    @classmethod
    def variants(cls, generator_dir: Path) -> list[Variant]:
        """The base model alone, the LoRA of each earlier checkpoint, and the fine-tuned model (the last
        checkpoint is the fine-tuned LoRA itself: shown once)."""
        return [Variant("base", cls.name, Path(generator_dir), base_only=True),
                *(Variant(f"step {step}", cls.name, Path(generator_dir), path, step=step)
                  for step, path in cls.earlier_checkpoints(generator_dir)),
                Variant("fine-tuned", cls.name, Path(generator_dir), step=cls.trained_steps(generator_dir))]

    @classmethod
    def load_variant(cls, variant: Variant, **overrides: Any) -> SDLoraGenerator:
        from . import resolve_options

        overrides = resolve_options(cls, overrides)
        if variant.base_only:
            overrides["lora_path"] = None
        elif variant.checkpoint is not None:
            overrides["lora_path"] = str(variant.checkpoint / LORA_FILE)
        return cls.load(variant.generator_dir, **overrides)

    # -- files ------------------------------------------------------------------------------------

    def save(self, directory: Path) -> Path | None:
        """Write ``pytorch_lora_weights.safetensors`` (when there is a LoRA) and ``sd_lora.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lora_file = save_lora(self.pipe, directory) if self.has_lora else None
        config = dataclasses.replace(self.config, lora_path=None)  # load() points it at the saved file
        write_json(directory / CONFIG_FILE, {"generator": self.name, "config": config})
        return lora_file

    @classmethod
    def load(cls, directory: Path, **overrides: Any) -> SDLoraGenerator:
        """Rebuild from :meth:`save`'s folder: the base pipeline (``config.base``) + the saved LoRA.

        ``overrides`` replace config fields, e.g. ``base=`` when the base model moved.
        """
        directory = Path(directory)
        if not (directory / CONFIG_FILE).exists():
            raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}; is it a folder written by save()?")
        fields = read_json(directory / CONFIG_FILE)["config"]
        if (directory / LORA_FILE).exists():
            fields["lora_path"] = str(directory / LORA_FILE)
        return cls(parse(SDLoraConfig, {**fields, **overrides}, path="options"))


@dataclass
class _LoraTraining:
    """One LoRA fine-tuning: the pipeline, the trained parameters, optimiser, loss scaler and noise."""

    cfg: SDLoraConfig
    pipe: Any
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    noise_scheduler: Any
    precision: str  # the precision policy's name for the UNet's forward pass ("no": float32)
    dp: DPStep | None = None  # DP-SGD's sampler, clipping, noise and accounting (None: plain fine-tuning)

    def step(self, images: Sequence[Image.Image], prompts: Sequence[str], step: int) -> dict[str, torch.Tensor]:
        """Training step ``step``: its batch, flips, noise and timesteps all drawn from ``(seed, step)``."""
        if self.dp is not None:
            return self.dp_step(images, prompts, step)
        cfg, pipe, device = self.cfg, self.pipe, self.pipe.unet.device
        rng = step_generator(cfg.seed, step)
        index = batch_indices(len(images), cfg.batch_size, step, cfg.seed)
        flips = (torch.rand(len(index), generator=rng) < 0.5).tolist()
        pixels = torch.stack([image_to_tensor(images[i], cfg.resolution, cfg.random_flip and f)
                              for i, f in zip(index, flips, strict=True)])
        with torch.no_grad():
            latents = pipe.vae.encode(pixels.to(device, pipe.vae.dtype)).latent_dist.sample(rng)
            latents = latents * pipe.vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=rng).to(device, latents.dtype)
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(index),),
                                      generator=rng).to(device)
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            cond = pipe.encode_prompt([prompts[i] for i in index], device, 1, False)[0]
            target, weights = self.target(latents, noise, timesteps)
        with autocast(str(device), self.precision):
            pred = pipe.unet(noisy, timesteps, cond, return_dict=False)[0]
        parts = diffusion_loss(pred, target, weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return parts

    def dp_step(self, images: Sequence[Image.Image], prompts: Sequence[str], step: int) -> dict[str, torch.Tensor]:
        """One DP-SGD step on the LoRA parameters: a Poisson batch, K flip / latent / noise / timestep draws per
        image averaged before its gradient is clipped (DPDM sec. 4), Opacus' noise on the sum."""
        cfg, pipe, device, k = self.cfg, self.pipe, self.pipe.unet.device, self.cfg.dp_noise_multiplicity
        # 1. the batch and every draw, from (seed, step); the frozen VAE and text encoder outside the map
        rng = step_generator(cfg.seed, step)
        index = self.dp.sample(rng).tolist()
        rows = [i for i in index for _ in range(k)]
        flips = (torch.rand(len(rows), generator=rng) < 0.5).tolist()
        with torch.no_grad():
            if rows:
                pixels = torch.stack([image_to_tensor(images[i], cfg.resolution, cfg.random_flip and f)
                                      for i, f in zip(rows, flips, strict=True)])
                latents = pipe.vae.encode(pixels.to(device, pipe.vae.dtype)).latent_dist.sample(rng)
                latents = latents.float() * pipe.vae.config.scaling_factor
                noise = torch.randn(latents.shape, generator=rng).to(device)
                timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(rows),),
                                          generator=rng).to(device)
                noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
                cond = pipe.encode_prompt([prompts[i] for i in rows], device, 1, False)[0].float()
                target, weights = self.target(latents, noise, timesteps)
            else:  # an empty Poisson batch: still a noisy step
                latents = noise = noisy = target = cond = torch.zeros(0, device=device)
                timesteps = torch.zeros(0, dtype=torch.long, device=device)
                weights = None
        weights = torch.ones(len(rows), device=device) if weights is None else weights

        def per_example(x: torch.Tensor) -> torch.Tensor:  # (B*K, ...) -> (B, K, ...)
            return x.reshape(len(index), k, *x.shape[1:])

        # 2. one image's loss: its K draws averaged, through the functional UNet (LoRA weights trainable)
        def loss_fn(unet, noisy_k, t_k, cond_k, target_k, weights_k):
            return diffusion_loss(unet(noisy_k, t_k, cond_k, return_dict=False)[0], target_k, weights_k)["loss"]

        data = (noisy, timesteps, cond, target, weights)
        value = self.dp.step(loss_fn, tuple(per_example(x) for x in data) if rows else tuple(x[:0] for x in data))
        loss = torch.tensor(value)
        return {"loss": loss, "mse": loss}

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the UNet learns to predict (the noise, or v: the base model's own prediction type) and the
        Min-SNR weights (None: plain MSE)."""
        prediction_type = self.noise_scheduler.config.prediction_type
        target = noise if prediction_type == "epsilon" else \
            self.noise_scheduler.get_velocity(latents, noise, timesteps)
        if self.cfg.snr_gamma is None:
            return target, None
        snr_t = snr(self.noise_scheduler.alphas_cumprod, timesteps)
        return target, min_snr_weights(snr_t, self.cfg.snr_gamma, prediction_type)


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
