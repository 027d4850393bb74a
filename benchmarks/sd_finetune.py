"""``sd-lora`` fine-tuning on a GPU: steps/s and peak memory per precision, and the LoRA reloaded in plain
diffusers.

The base has the layout of ``stabilityai/stable-diffusion-2`` (768-v, v-prediction: the paper preset's
base) with random weights built from config (see ``benchmarks/sd_generation.py``), so nothing is
downloaded; speed does not depend on the weight values. Each row fine-tunes a fresh LoRA with the
backend's own ``SDLoraGenerator.fit`` at the paper preset's settings (rank 4, batch 4, 224 px) on random
images and captions, times the steps after a warm-up, and reads the peak GPU memory. Each row's model is
built alone, directly in the row's weight dtype, after the previous row's is freed (the resident memory
before each row is printed), so a row's peak is its own. After the bf16 row its LoRA is saved, loaded
into a freshly built plain ``StableDiffusionPipeline`` with ``load_lora_weights`` and asked for the same
images as the backend: ``max|Δ|`` between the two (and without the LoRA, for scale).

    python -m benchmarks.sd_finetune                 # on a GPU (stops at once without one): fp16, bf16, bf16 + checkpointing
    python -m benchmarks.sd_finetune --steps 30 --batch-size 8
    python -m benchmarks.sd_finetune --tiny          # CPU smoke test on a tiny model (the backend trains fp32 there)
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.gpu_common import add_row, device_name, device_or_exit, peak_gib, reset_peak
from benchmarks.sd_generation import CLASSES, base_pipeline, sync
from pipeline.core.precision import compute_dtype
from pipeline.generators.sd_lora import LORA_FILE, SDLoraConfig, SDLoraGenerator
from pipeline.presets import PAPER_LORA_BATCH

ROWS = (("fp16", False), ("bf16", False), ("bf16", True))  # (mixed precision, gradient checkpointing)
RELOADED = ("bf16", False)  # the row whose LoRA is reloaded in plain diffusers


def random_images(n: int, side: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def fine_tune(args, device: str, precision: str, checkpointing: bool, out_dir: Path):
    """(generator, steps/s over the timed steps, peak GiB) of one fine-tune on a freshly built model."""
    images = random_images(args.images, args.resolution + 32)
    prompts = [f"a photo of a {CLASSES[i % len(CLASSES)]}" for i in range(args.images)]
    # built in the dtype the backend keeps the frozen base in (the row's on CUDA, fp32 on a CPU), so no
    # fp32 copy of the weights ever sits beside it
    weights = compute_dtype(device, precision) if device.startswith("cuda") else torch.float32
    pipe = base_pipeline(args.tiny, device, weights)
    config = SDLoraConfig(base="(random SD 2 weights)", rank=args.rank, alpha=float(args.rank), lr=args.lr,
                          steps=args.warmup + args.steps, batch_size=args.batch_size, resolution=args.resolution,
                          mixed_precision=precision, gradient_checkpointing=checkpointing, checkpoint_every=0,
                          device=device, dtype="bf16" if device.startswith("cuda") else "fp32",
                          num_inference_steps=args.sample_steps, sample_batch_size=args.compare)
    generator = SDLoraGenerator.from_pipeline(pipe, config)
    stamps: dict[int, float] = {}

    def on_step(event) -> None:
        if event.done in (args.warmup, args.warmup + args.steps):
            sync(device)  # the loss read already waits for the step; this keeps the clock honest
            stamps[event.done] = time.perf_counter()

    reset_peak(device)
    generator.fit(images, prompts, list(range(args.images)), out_dir, progress=on_step)
    steps_per_s = args.steps / (stamps[args.warmup + args.steps] - stamps[args.warmup]) if args.warmup else float("nan")
    return generator, steps_per_s, peak_gib(device)


def reload_in_plain_diffusers(args, device: str, generator: SDLoraGenerator, lora_dir: Path) -> tuple[float, float]:
    """max|Δ| between the backend's images and plain diffusers' with the saved LoRA (same prompts and seeds),
    and the same without the LoRA (how much the LoRA changes the images: the first figure means something
    only when it is much smaller than this one)."""
    prompts = [f"a photo of a {c}" for c in CLASSES[: args.compare]]
    seeds = list(range(args.compare))
    ours = np.asarray(generator.sample(prompts, seeds, output_type="np"))
    plain = base_pipeline(args.tiny, device, torch.bfloat16 if device.startswith("cuda") else torch.float32)

    def images() -> np.ndarray:
        return np.asarray(plain(prompts, height=args.resolution, width=args.resolution,
                                num_inference_steps=args.sample_steps, guidance_scale=generator.config.guidance_scale,
                                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                                output_type="np").images)

    without = images()
    plain.load_lora_weights(str(lora_dir), weight_name=LORA_FILE)
    return float(np.abs(ours - images()).max()), float(np.abs(ours - without).max())


def free(device: str) -> float | None:
    """Collect what the previous row left and return the GPU memory still allocated (GiB; None on a CPU)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated(device) / 2**30
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU: a smoke test of the script")
    parser.add_argument("--device", default=None, help="cuda (default; cpu with --tiny)")
    parser.add_argument("--resolution", type=int, default=None, help="training side in pixels (224; 16 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=PAPER_LORA_BATCH, help="images per step (the paper preset's 4)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (the paper preset's 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (20; 2 with --tiny)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--images", type=int, default=64, help="training images (random)")
    parser.add_argument("--lr", type=float, default=None,
                        help="LoRA learning rate (1e-4, the paper preset's; 1e-2 with --tiny, so that a few steps "
                             "change the images)")
    parser.add_argument("--compare", type=int, default=2, help="images compared after the reload")
    parser.add_argument("--sample-steps", type=int, default=None, help="denoising steps of the reload check (20; 3 with --tiny)")
    parser.add_argument("--markdown", default=None, help="append the rows to this Markdown table")
    args = parser.parse_args(argv)
    device = device_or_exit(args.device, args.tiny)
    args.resolution = args.resolution or (16 if args.tiny else 224)
    args.steps = args.steps or (2 if args.tiny else 20)
    args.lr = args.lr or (1e-2 if args.tiny else 1e-4)
    args.sample_steps = args.sample_steps or (3 if args.tiny else 20)
    on_gpu = device.startswith("cuda")

    print(f"{'tiny' if args.tiny else 'SD 2 (768-v layout)'} LoRA fine-tuning on {device_name(device)}: rank {args.rank}, "
          f"{args.resolution}px, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}; each row's "
          f"model alone; torch {torch.__version__}"
          + ("" if on_gpu else "\n(on a CPU the backend trains in float32 whatever the row asks: the rows exercise the "
                               "script, not the precisions)"), flush=True)
    header = f"{'precision':<10} {'grad. ckpt':>10} {'steps/s':>8} {'images/s':>9} {'peak GiB':>9} {'resident before':>16}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for precision, checkpointing in ROWS:
            resident = free(device)
            out = Path(folder) / f"{precision}-{checkpointing}"
            generator, steps_per_s, peak = fine_tune(args, device, precision, checkpointing, out)
            shown = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            label = f"{precision}{' + grad. checkpointing' if checkpointing else ''}"
            print(f"{precision:<10} {'on' if checkpointing else 'off':>10} {steps_per_s:>8.2f} "
                  f"{steps_per_s * args.batch_size:>9.1f} {shown(peak):>9} {shown(resident):>16}", flush=True)
            add_row(args.markdown, "LoRA fine-tuning", label, steps_per_s, "steps/s", peak,
                    f"rank {args.rank}, batch {args.batch_size}, {args.resolution} px: "
                    f"{steps_per_s * args.batch_size:.1f} images/s; resident before the row {shown(resident)} GiB"
                    + ("" if on_gpu else "; fp32 on a CPU"))
            if (precision, checkpointing) == RELOADED:
                diff, without = reload_in_plain_diffusers(args, device, generator, out)
                size = (out / LORA_FILE).stat().st_size / 2**20
                print(f"  its LoRA ({size:.1f} MiB) reloaded with plain diffusers' load_lora_weights: max|Δ| = "
                      f"{diff:.4f} to the backend's images ({args.compare} images, {args.sample_steps} steps); "
                      f"{without:.4f} without the LoRA", flush=True)
                add_row(args.markdown, "LoRA fine-tuning", f"{label} LoRA reloaded in plain diffusers", diff,
                        "max abs pixel diff", None, f"{without:.4f} without the LoRA")
            del generator
    free(device)


if __name__ == "__main__":
    main()
