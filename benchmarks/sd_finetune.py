"""``sd-lora`` fine-tuning on a GPU: steps/s and peak memory per precision, and the LoRA reloaded in plain
diffusers.

The base has the SD 2.x architecture with random weights built from config (see
``benchmarks/sd_generation.py``), so nothing is downloaded; speed does not depend on the weight values.
Each row fine-tunes a fresh rank-16 LoRA with the backend's own ``SDLoraGenerator.fit`` on random
images and captions at 224 px, batch 8 (the defaults), times the steps after a warm-up, and reads the
peak GPU memory. Then the bf16 LoRA is saved, loaded into a freshly built plain ``StableDiffusionPipeline``
with ``load_lora_weights`` and asked for the same images as the backend: ``max|Δ|`` between the two.

    python -m benchmarks.sd_finetune                 # on a GPU: fp16, bf16, bf16 + gradient checkpointing
    python -m benchmarks.sd_finetune --steps 30 --batch-size 16
    python -m benchmarks.sd_finetune --tiny          # CPU smoke test on a tiny model
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

from benchmarks.sd_generation import CLASSES, base_pipeline, sync
from pipeline.generators.sd_lora import LORA_FILE, SDLoraConfig, SDLoraGenerator


def random_images(n: int, side: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def fine_tune(args, device: str, precision: str, checkpointing: bool, out_dir: Path):
    """(generator, steps/s over the timed steps, peak GiB) of one fine-tune."""
    images = random_images(args.images, args.resolution + 32)
    prompts = [f"a photo of a {CLASSES[i % len(CLASSES)]}" for i in range(args.images)]
    pipe = base_pipeline(args.tiny, device, torch.float32)
    config = SDLoraConfig(base="(random SD 2 weights)", rank=16, alpha=16.0, lr=args.lr, steps=args.warmup + args.steps,
                          batch_size=args.batch_size, resolution=args.resolution, mixed_precision=precision,
                          gradient_checkpointing=checkpointing, checkpoint_every=0, snr_gamma=5.0, device=device,
                          dtype="bf16" if device.startswith("cuda") else "fp32", num_inference_steps=args.sample_steps,
                          sample_batch_size=args.compare)
    generator = SDLoraGenerator.from_pipeline(pipe, config)
    stamps: dict[int, float] = {}

    def on_step(event) -> None:
        if event.done in (args.warmup, args.warmup + args.steps):
            sync(device)  # the loss read already waits for the step; this keeps the clock honest
            stamps[event.done] = time.perf_counter()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    generator.fit(images, prompts, list(range(args.images)), out_dir, progress=on_step)
    steps_per_s = args.steps / (stamps[args.warmup + args.steps] - stamps[args.warmup]) if args.warmup else float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return generator, steps_per_s, peak


def reload_in_plain_diffusers(args, device: str, generator: SDLoraGenerator, lora_dir: Path) -> tuple[float, float]:
    """max|Δ| between the backend's images and plain diffusers' with the saved LoRA (same prompts and seeds),
    and the same without the LoRA (how much the LoRA changes the images: the first figure means something
    only when it is much smaller than this one)."""
    prompts = [f"a photo of a {c}" for c in CLASSES[: args.compare]]
    seeds = list(range(args.compare))
    ours = np.asarray(generator.sample(prompts, seeds, output_type="np"))
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    plain = base_pipeline(args.tiny, device, torch.float32).to(device, dtype)

    def images() -> np.ndarray:
        return np.asarray(plain(prompts, height=args.resolution, width=args.resolution,
                                num_inference_steps=args.sample_steps, guidance_scale=generator.config.guidance_scale,
                                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                                output_type="np").images)

    without = images()
    plain.load_lora_weights(str(lora_dir), weight_name=LORA_FILE)
    return float(np.abs(ours - images()).max()), float(np.abs(ours - without).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU: a smoke test of the script")
    parser.add_argument("--device", default="auto", help="auto (cuda when visible), cuda, cpu")
    parser.add_argument("--resolution", type=int, default=None, help="training side in pixels (224; 32 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (the backend's default)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (20; 2 with --tiny)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--images", type=int, default=64, help="training images (random)")
    parser.add_argument("--lr", type=float, default=None,
                        help="LoRA learning rate (1e-4, the backend's default; 1e-2 with --tiny, so that a few steps "
                             "change the images)")
    parser.add_argument("--compare", type=int, default=2, help="images compared after the reload")
    parser.add_argument("--sample-steps", type=int, default=None, help="denoising steps of the reload check (20; 3 with --tiny)")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    args.resolution = args.resolution or (32 if args.tiny else 224)
    args.steps = args.steps or (2 if args.tiny else 20)
    args.lr = args.lr or (1e-2 if args.tiny else 1e-4)
    args.sample_steps = args.sample_steps or (3 if args.tiny else 20)
    rows = [("fp16", False), ("bf16", False), ("bf16", True)] if device.startswith("cuda") else [("no", False)]

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"{'tiny' if args.tiny else 'SD 2'} LoRA fine-tuning on {gpu}: rank 16, {args.resolution}px, batch "
          f"{args.batch_size}, Min-SNR 5, {args.steps} timed steps after {args.warmup}; torch {torch.__version__}")
    header = f"{'precision':<10} {'grad. ckpt':>10} {'steps/s':>8} {'images/s':>9} {'peak GiB':>9}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        kept = None
        for precision, checkpointing in rows:
            out = Path(folder) / f"{precision}-{checkpointing}"
            generator, steps_per_s, peak = fine_tune(args, device, precision, checkpointing, out)
            print(f"{precision.replace('no', 'fp32'):<10} {'on' if checkpointing else 'off':>10} {steps_per_s:>8.2f} "
                  f"{steps_per_s * args.batch_size:>9.1f} {peak:>9.2f}", flush=True)
            if precision in ("bf16", "no") and kept is None:
                kept = (generator, out)
            else:
                del generator
                gc.collect()
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
        generator, out = kept
        diff, without = reload_in_plain_diffusers(args, device, generator, out)
        print(f"\nthe {generator.config.mixed_precision.replace('no', 'fp32')} LoRA "
              f"({(out / LORA_FILE).stat().st_size / 2**20:.1f} MiB) reloaded with plain diffusers' "
              f"load_lora_weights: max|Δ| = {diff:.4f} between its images and the backend's ({args.compare} images, "
              f"{args.sample_steps} steps); {without:.4f} without the LoRA")


if __name__ == "__main__":
    main()
