"""Images/s of Stable Diffusion 2 + LoRA sampling: the TCKR reference recipe against a faster one.

The pipeline has the layout of ``stabilityai/stable-diffusion-2`` (768-v), TCKR's base: OpenCLIP-H text
encoder, 1024-wide cross-attention, attention upcast, a v-prediction scheduler; random weights built from
config, so nothing is downloaded. A random rank-16 LoRA is saved and loaded back with diffusers'
``load_lora_weights``, as a trained one would be. Speed does not depend on the weight values.

Every row samples the same prompts and seeds at the same size, steps, guidance and scheduler; rows are
cumulative changes to the reference, and ``max|Δ|`` says how far a row's images are from the reference's
(fp16 / bf16 rounding only: none of the changes alters the maths). The rows, in order (``--rows`` picks
some; the changes of the rows before a picked one are applied without timing them):

- ``reference``: TCKR's recipe, fp16, LoRA loaded but not fused, batch 32, PIL output;
- ``bf16``: bf16 weights instead (fp32's exponent range, the same tensor-core speed);
- ``fused``: the LoRA fused into the weights and unloaded;
- ``channels_last``: fused QKV projections, UNet and VAE in channels-last layout;
- ``pt``: images kept on the device as a tensor;
- ``batch``: batch 128;
- ``compile``: ``torch.compile`` of the UNet (whole graph) and the VAE decoder, as the sd-lora backend's
  ``compile`` option does (not in the default rows: its warm-up compiles for a minute or more).

    python -m benchmarks.sd_generation                  # on a GPU (stops at once without one): 224 px, 20 steps, CFG 2
    python -m benchmarks.sd_generation --rows compile   # the compiled row alone (its own reference images)
    python -m benchmarks.sd_generation --tiny           # CPU smoke test on a tiny model, every row but compile
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.gpu_common import add_row, device_name, device_or_exit, peak_gib, reset_peak

# SD 2 (768-v) UNet (stabilityai/stable-diffusion-2 unet/config.json: 2.1-base has no attention upcast)
SD2_UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    use_linear_projection=True, upcast_attention=True,
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
    # a v-prediction scheduler as SD 2 (768-v) ships (the sd-lora backend samples with the base's own)
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


ROWS = ("reference", "bf16", "fused", "channels_last", "pt", "batch", "compile")


@dataclass
class Row:
    recipe: str
    batch: int
    output: str
    images_per_s: float
    seconds_per_batch: float
    peak_gib: float | None
    max_diff: float


def as_array(images, output_type: str) -> np.ndarray:
    if output_type == "pil":
        return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    if output_type == "pt":
        return images.float().permute(0, 2, 3, 1).cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def prompts_for(n: int) -> list[str]:
    return [f"a photo of a {CLASSES[i % len(CLASSES)]}, high quality" for i in range(n)]


def sample(pipe, args, start: int, count: int, output_type: str):
    """Images ``start .. start + count`` of the row's prompts, one seeded CPU generator per image (as the
    backend samples)."""
    generators = [torch.Generator("cpu").manual_seed(s) for s in range(start, start + count)]
    return pipe(prompts_for(start + count)[start:], height=args.size, width=args.size,
                num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators,
                output_type=output_type).images


def measure(pipe, recipe: str, args, batch: int, output_type: str, reference: np.ndarray | None,
            device: str) -> tuple[Row, np.ndarray]:
    """Warm up (``args.warmup`` batches of the same size), then time ``args.images`` images in batches."""
    for _ in range(args.warmup):
        sample(pipe, args, 0, batch, output_type)
    reset_peak(device)
    first = None
    started = time.perf_counter()
    for start in range(0, args.images, batch):
        images = sample(pipe, args, start, min(batch, args.images - start), output_type)
        if first is None:
            first = images
    sync(device)
    seconds = time.perf_counter() - started
    got = as_array(first, output_type)[: args.compare]
    diff = float(np.abs(got - reference).max()) if reference is not None else 0.0
    n_batches = -(-args.images // batch)
    row = Row(recipe, batch, output_type, args.images / seconds, seconds / n_batches, peak_gib(device), diff)
    print_row(row)
    add_row(args.markdown, "SD sampling", recipe, row.images_per_s, "images/s", row.peak_gib,
            f"batch {batch}, {args.size} px, {args.steps} steps, CFG {args.guidance:g}, {args.images} images; "
            f"max abs diff to (a) {diff:.4f}")
    return row, got


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


HEADER = f"{'recipe':<44} {'batch':>5} {'output':>6} {'img/s':>8} {'s/batch':>8} {'peak GiB':>8} {'max|Δ|':>7}"


def print_row(row: Row) -> None:
    peak = "-" if row.peak_gib is None else f"{row.peak_gib:.2f}"
    print(f"{row.recipe:<44} {row.batch:>5} {row.output:>6} {row.images_per_s:>8.2f} "
          f"{row.seconds_per_batch:>8.3f} {peak:>8} {row.max_diff:>7.4f}", flush=True)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU: a smoke test of the script")
    parser.add_argument("--device", default=None, help="cuda (default; cpu with --tiny)")
    parser.add_argument("--rows", default="reference,bf16,fused,channels_last,pt,batch",
                        help=f"comma-separated, of {', '.join(ROWS)} (default: all but compile)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (224; 16 with --tiny)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps, the same in every recipe")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--images", type=int, default=None, help="images timed per row (128; 8 with --tiny)")
    parser.add_argument("--reference-batch", type=int, default=None, help="batch of the TCKR recipe (32; 4 with --tiny)")
    parser.add_argument("--fast-batch", type=int, default=None, help="batch of the last rows (128; 8 with --tiny)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before each row (2 for compile)")
    parser.add_argument("--compare", type=int, default=4, help="images compared against the reference")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode of the compile row (default: the backend's; max-autotune-no-cudagraphs "
                             "autotunes for minutes)")
    parser.add_argument("--markdown", default=None, help="append the rows to this Markdown table")
    args = parser.parse_args(argv)
    device = device_or_exit(args.device, args.tiny)
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows_wanted) - set(ROWS))
    if unknown or not rows_wanted:
        parser.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    args.size = args.size or (16 if args.tiny else 224)
    args.images = args.images or (8 if args.tiny else 128)
    args.reference_batch = args.reference_batch or (4 if args.tiny else 32)
    args.fast_batch = args.fast_batch or (8 if args.tiny else 128)
    args.compare = min(args.compare, args.reference_batch)

    built = time.perf_counter()
    pipe = build_pipeline(args.tiny, device, torch.float16, args.lora_rank)
    print(f"{'tiny' if args.tiny else 'SD 2 (768-v layout)'} pipeline + rank-{args.lora_rank} LoRA on "
          f"{device_name(device)}, built in {time.perf_counter() - built:.1f}s; {args.size}px, {args.steps} steps, "
          f"guidance {args.guidance}, {args.images} images per row, torch {torch.__version__}", flush=True)
    print(HEADER)
    print("-" * len(HEADER))
    last = max(ROWS.index(r) for r in rows_wanted)
    rows: list[Row] = []
    batch, output = args.reference_batch, "pil"

    # (a) the TCKR reference: fp16, LoRA loaded but not fused, batch 32, PIL output, the base's scheduler
    if "reference" in rows_wanted:
        row, reference = measure(pipe, "(a) TCKR: fp16, LoRA unfused, PIL", args, batch, output, None, device)
        rows.append(row)
    else:  # only the images the other rows are compared with
        reference = as_array(sample(pipe, args, 0, args.compare, "pil"), "pil")
    # (b) the fast recipe, one change at a time, each measured when asked for
    changes = {
        # bf16: fp32's exponent range (no overflow in the VAE decoder), the same tensor-core speed as fp16
        "bf16": ("(b0) bf16 instead of fp16", lambda: pipe.to(device, torch.bfloat16)),
        # fold the LoRA into the base weights and drop the peft wrappers: plain nn.Linear again, no extra
        # matmuls per projection, and a graph torch.compile can trace without breaks
        "fused": ("(b1) + LoRA fused and unloaded", lambda: (pipe.fuse_lora(lora_scale=1.0), pipe.unload_lora_weights())),
        # one matmul for q, k, v (self-attention) / k, v (cross-attention); NHWC convolutions for tensor cores
        "channels_last": ("(b2) + fused QKV, channels_last", lambda: (
            pipe.unet.fuse_qkv_projections(), pipe.vae.fuse_qkv_projections(),
            pipe.unet.to(memory_format=torch.channels_last), pipe.vae.to(memory_format=torch.channels_last))),
        "pt": ("(b3) + output_type='pt'", lambda: None),  # images stay on the device: no per-image PIL conversion
        "batch": (f"(b4) + batch {args.fast_batch}", lambda: None),
        # the sd-lora backend's compile option: the UNet whole, the VAE's decoder
        "compile": (f"(b5) + torch.compile ({args.compile_mode})", lambda: compile_pipe(pipe, args.compile_mode)),
    }
    for name in ROWS[1:last + 1]:
        recipe, apply = changes[name]
        apply()
        output = "pt" if ROWS.index(name) >= ROWS.index("pt") else output
        batch = args.fast_batch if ROWS.index(name) >= ROWS.index("batch") else batch
        if name == "compile":
            args.warmup = max(args.warmup, 2)  # compile (and autotune) happen in the first calls
        if name in rows_wanted:
            compiled = time.perf_counter()
            row, _ = measure(pipe, recipe, args, batch, output, reference, device)
            if name == "compile":
                print(f"  (warm-up with compilation and the timed images: {time.perf_counter() - compiled:.0f} s)")
            rows.append(row)
    print("\nmax|Δ|: largest pixel difference (0-1 scale) to the reference's first images (same prompts and seeds)")
    return rows


def compile_pipe(pipe, mode: str) -> None:
    pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True)
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode)


if __name__ == "__main__":
    main()
