"""Images/s of Stable Diffusion 2 + LoRA sampling: the TCKR reference recipe against a faster one.

The pipeline has the SD 2.x architecture (OpenCLIP-H text encoder, 1024-wide cross-attention) with random
weights built from config, so nothing is downloaded; a random rank-16 LoRA is saved and loaded back with
diffusers' ``load_lora_weights``, as a trained one would be. Speed does not depend on the weight values.

Every row samples the same prompts and seeds at the same size, steps, guidance and scheduler; rows are
cumulative changes to the reference, and ``max|Δ|`` says how far a row's images are from the reference's
(fp16 / bf16 rounding only: none of the changes alters the maths).

    python benchmarks/sd_generation.py                 # on a GPU: SD2 size, 224 px, 20 steps, guidance 2
    python benchmarks/sd_generation.py --compile       # add a torch.compile row
    python benchmarks/sd_generation.py --tiny          # CPU smoke test on a tiny model
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

# SD 2.x UNet (stabilityai/stable-diffusion-2-1-base unet/config.json)
SD2_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
# OpenCLIP ViT-H/14 text tower as SD 2.x ships it (23 of its 24 layers: SD 2 uses the penultimate one)
SD2_TEXT = dict(hidden_size=1024, num_hidden_layers=23, num_attention_heads=16, intermediate_size=4096,
                projection_dim=1024, hidden_act="gelu", max_position_embeddings=77, vocab_size=49408)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
# the tests' get_dummy_components sizes
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(4, 8),
                 cross_attention_dim=32, norm_num_groups=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=77, vocab_size=1000)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2, block_out_channels=(4, 8),
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def offline_clip_tokenizer():
    """CLIP BPE with one token per byte and no merges (the real vocab would need a download)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def base_pipeline(tiny: bool, device: str, dtype: torch.dtype):
    """A random-weight SD 2 (or tiny) pipeline in ``dtype`` on ``device``, no LoRA; the same weights on
    every call with the same ``device`` (seeded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = offline_clip_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):  # initialise in place: a CPU init of the 865M-parameter UNet takes a while
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD2_UNET))
        vae = AutoencoderKL(**(TINY_VAE if tiny else SD_VAE))
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **(TINY_TEXT if tiny else SD2_TEXT), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    # stabilityai/stable-diffusion-2-1's scheduler (its default sampler)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction", timestep_spacing="leading")
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(tiny: bool, device: str, dtype: torch.dtype, lora_rank: int):
    """A random-weight SD 2 (or tiny) pipeline in ``dtype`` on ``device``, with a random LoRA loaded."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = base_pipeline(tiny, device, dtype)
    unet = pipe.unet
    # a LoRA as the sd-lora backend trains it (attention projections), random, written and loaded back
    unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with tempfile.TemporaryDirectory() as folder:
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state,
                                                  unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
        unet.delete_adapters("default")
        pipe.load_lora_weights(folder, adapter_name="tckr")
    pipe.to(device, dtype)
    return pipe


@dataclass
class Row:
    recipe: str
    batch: int
    output: str
    images_per_s: float
    seconds_per_batch: float
    peak_gib: float
    max_diff: float


def as_array(images, output_type: str) -> np.ndarray:
    if output_type == "pil":
        return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    if output_type == "pt":
        return images.float().permute(0, 2, 3, 1).cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def measure(pipe, recipe: str, args, batch: int, output_type: str, reference: np.ndarray | None,
            device: str) -> tuple[Row, np.ndarray]:
    """Warm up, then time ``args.images`` images in batches; per-image seeded generators as the backend."""
    prompts = [f"a photo of a {CLASSES[i % len(CLASSES)]}, high quality" for i in range(args.images)]

    def run(start: int, count: int):
        generators = [torch.Generator("cpu").manual_seed(s) for s in range(start, start + count)]
        return pipe(prompts[start:start + count], height=args.size, width=args.size,
                    num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators,
                    output_type=output_type).images

    for _ in range(args.warmup):
        run(0, batch)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    first = None
    started = time.perf_counter()
    for start in range(0, args.images, batch):
        images = run(start, min(batch, args.images - start))
        if first is None:
            first = images
    sync(device)
    seconds = time.perf_counter() - started
    sample = as_array(first, output_type)[: args.compare]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    diff = float(np.abs(sample - reference).max()) if reference is not None else 0.0
    n_batches = -(-args.images // batch)
    row = Row(recipe, batch, output_type, args.images / seconds, seconds / n_batches, peak, diff)
    print_row(row)
    return row, sample


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


HEADER = f"{'recipe':<44} {'batch':>5} {'output':>6} {'img/s':>8} {'s/batch':>8} {'peak GiB':>8} {'max|Δ|':>7}"


def print_row(row: Row) -> None:
    print(f"{row.recipe:<44} {row.batch:>5} {row.output:>6} {row.images_per_s:>8.2f} "
          f"{row.seconds_per_batch:>8.3f} {row.peak_gib:>8.2f} {row.max_diff:>7.4f}", flush=True)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU: a smoke test of the script")
    parser.add_argument("--device", default="auto", help="auto (cuda when visible), cuda, cpu")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (224; 32 with --tiny)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps, the same in every recipe")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--images", type=int, default=None, help="images timed per row (256; 8 with --tiny)")
    parser.add_argument("--reference-batch", type=int, default=32, help="batch of the TCKR reference recipe")
    parser.add_argument("--fast-batch", type=int, default=None, help="batch of the fast recipe (128; 8 with --tiny)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before each row")
    parser.add_argument("--compare", type=int, default=4, help="images compared against the reference")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--fast-dtype", choices=["bf16", "fp16"], default="bf16",
                        help="dtype of the fast recipe on a GPU (the reference is fp16, as TCKR's)")
    parser.add_argument("--compile", action="store_true", help="add a row with torch.compile'd UNet and VAE decoder")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    args.size = args.size or (32 if args.tiny else 224)
    args.images = args.images or (8 if args.tiny else 256)
    args.fast_batch = args.fast_batch or (8 if args.tiny else 128)
    if args.tiny:
        args.reference_batch = min(args.reference_batch, 4)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32  # fp16 kernels are GPU-only

    built = time.perf_counter()
    pipe = build_pipeline(args.tiny, device, dtype, args.lora_rank)
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"{'tiny' if args.tiny else 'SD 2'} pipeline on {gpu} ({dtype}), built in {time.perf_counter() - built:.1f}s; "
          f"{args.size}px, {args.steps} steps, guidance {args.guidance}, {args.images} images per row, "
          f"torch {torch.__version__}")
    print(HEADER)
    print("-" * len(HEADER))
    rows = []

    # (a) the TCKR reference: fp16, LoRA loaded but not fused, batch 32, PIL output, default scheduler
    row, reference = measure(pipe, "(a) reference: LoRA unfused, PIL", args, args.reference_batch, "pil", None,
                             device)
    rows.append(row)

    # (b) the fast recipe, one change at a time
    if device.startswith("cuda") and args.fast_dtype == "bf16":
        # bf16: fp32's exponent range (no overflow in the VAE decoder), the same tensor-core speed as fp16
        pipe.to(device, torch.bfloat16)
        row, _ = measure(pipe, "(b0) bf16 instead of fp16", args, args.reference_batch, "pil", reference, device)
        rows.append(row)
    # fold the LoRA into the base weights and drop the peft wrappers: plain nn.Linear again, no extra
    # matmuls per projection, and a graph torch.compile can trace without breaks
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    row, _ = measure(pipe, "(b1) + LoRA fused and unloaded", args, args.reference_batch, "pil", reference, device)
    rows.append(row)
    # one matmul for q, k, v (self-attention) / k, v (cross-attention); NHWC convolutions for tensor cores
    pipe.unet.fuse_qkv_projections()
    pipe.vae.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    row, _ = measure(pipe, "(b2) + fused QKV, channels_last", args, args.reference_batch, "pil", reference, device)
    rows.append(row)
    # keep the images on the device as a tensor: no per-image numpy/PIL conversion
    row, _ = measure(pipe, "(b3) + output_type='pt'", args, args.reference_batch, "pt", reference, device)
    rows.append(row)
    row, _ = measure(pipe, f"(b4) + batch {args.fast_batch}", args, args.fast_batch, "pt", reference, device)
    rows.append(row)
    if args.compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=True)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode="max-autotune-no-cudagraphs")
        args.warmup = max(args.warmup, 2)  # compile + autotune happen in the first calls
        row, _ = measure(pipe, "(b5) + torch.compile UNet, VAE decode", args, args.fast_batch, "pt", reference,
                         device)
        rows.append(row)

    best = max(rows[1:], key=lambda r: r.images_per_s)
    print(f"\nfastest: {best.recipe.strip()} at {best.images_per_s:.2f} img/s, "
          f"{best.images_per_s / rows[0].images_per_s:.2f}x the reference")
    del pipe
    gc.collect()
    return rows


if __name__ == "__main__":
    main()
