"""Shadow models per hour on a GPU: one at a time vs stacked (vmap) vs several processes sharing the GPU.

Each shadow trains on half of a pool of 32x32 colour images (LiRA's split) through the audit's own
training code (:func:`pipeline.classifiers.stacked.train_single` / ``train_stacked``, both the one loop
``pipeline.classifiers.train.fit``) in the audit's own precision (``TrainConfig.amp``: the product's
policy, bf16 autocast on CUDA), and then gives its logits on the whole pool as the audit's
``predict_logits`` / ``predict_stacked`` do. The images are random, generated from a seed in every
process that needs them (speed does not depend on their values; ``python -m benchmarks.audit`` measures
the AUC side on real data). Two models: the presets' ``small-resnet`` (0.3M parameters) and a ResNet-18
(timm's, 11M parameters, GroupNorm instead of BatchNorm so that copies can be stacked).

Before each timed mode an untimed warm-up runs the same shapes (the same stack size, batch and last
partial batch, the same logits chunks), so cuDNN's autotuning and vmap's tracing stay out of the clock.
Every mode trains ``--epochs`` epochs over ``--train-size`` images per shadow; the table extrapolates to
TCKR's audit: 256 shadows x 50 epochs over 25,000 images (about 24.8 H100-hours with MobileNetV3 shadows,
the figure issue 22 quotes). Prints tables; asserts nothing.

    python -m benchmarks.gpu_shadows                     # on a GPU (stops at once without one)
    python -m benchmarks.gpu_shadows --models small-resnet --stack 32 128 --processes 2 4
    python -m benchmarks.gpu_shadows --tiny              # CPU smoke test: small pool, both models, every mode
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.multiprocessing as mp

from benchmarks.gpu_common import add_row, device_name, device_or_exit, peak_gib, reset_peak
from pipeline.classifiers.models import ClassifierSpec, create_classifier
from pipeline.classifiers.stacked import predict_stacked, train_single, train_stacked
from pipeline.classifiers.train import TrainConfig, predict_logits
from pipeline.core.precision import compute_dtype

TCKR_SHADOWS, TCKR_EPOCHS, TCKR_TRAIN = 256, 50, 25_000  # TCKR's LiRA audit (MobileNetV3, CIFAR-10 halves)
TCKR_GPU_HOURS = 24.8  # their audit's H100-hours, as issue 22 quotes it
LOGIT_CHUNK = 1024  # images per forward pass of the logits (one model)


def model_factory(name: str, num_classes: int = 10):
    """A picklable factory for ``resnet18`` (timm's, GroupNorm) or a registered classifier."""
    if name == "resnet18":
        import timm
        from timm.layers import GroupNorm

        return functools.partial(timm.create_model, "resnet18", num_classes=num_classes,
                                 norm_layer=functools.partial(GroupNorm, num_groups=32))
    return functools.partial(create_classifier, ClassifierSpec(name=name, num_classes=num_classes))


def make_pool(size: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random 32x32 colour images and labels, made on ``device`` from ``seed`` (each process makes
    its own: nothing large crosses a process boundary)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(size, 3, 32, 32, generator=gen, device=device)
    y = torch.randint(0, 10, (size,), generator=gen, device=device)
    return x, y


def half_masks(n_models: int, pool: int, size: int, seed: int) -> torch.Tensor:
    """(M, pool) bool: each shadow trains on ``size`` random examples of the pool (LiRA's half)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.argsort(rng.random((n_models, pool)), axis=1) < size)


@dataclass
class Row:
    model: str
    mode: str
    shadows: int
    epochs: int  # timed epochs per shadow
    seconds: float  # wall time: training + logits on the whole pool
    peak_gib: float | None

    @property
    def shadow_epochs_per_s(self) -> float:
        return self.shadows * self.epochs / self.seconds


def one_at_a_time(factory, x, y, masks, recipe: TrainConfig) -> None:
    """Shadows one after another through the loop, then their logits on the whole pool (the audit's)."""
    for i in range(masks.shape[0]):
        model = train_single(factory, x, y, recipe, mask=masks[i], model_index=i)
        predict_logits(model, x, batch_size=LOGIT_CHUNK, device=recipe.device)


def stacked(factory, x, y, masks, recipe: TrainConfig) -> None:
    state = train_stacked(factory, x, y, masks, recipe)
    predict_stacked(factory, state, x)


def _process(rank: int, k: int, model: str, pool: int, train_size: int, n_models: int, seed: int,
             recipe: TrainConfig, threads: int) -> None:
    """One of ``k`` processes: it makes the pool from the seed itself and trains its share of the shadows."""
    torch.set_num_threads(threads)
    x, y = make_pool(pool, seed, recipe.device)
    masks = half_masks(n_models, pool, train_size, seed + 2)[rank::k]
    one_at_a_time(model_factory(model), x, y, masks, dataclasses.replace(recipe, seed=recipe.seed + 100 * rank))
    if recipe.device.startswith("cuda"):
        torch.cuda.synchronize()


def in_processes(k: int, model: str, pool: int, train_size: int, n_models: int, seed: int, recipe: TrainConfig) -> None:
    """``k`` spawned processes, each training its share of ``n_models`` shadows one at a time on the same
    device (start-up included: a real audit pays it too)."""
    threads = max(1, torch.get_num_threads() // k)
    mp.start_processes(_process, args=(k, model, pool, train_size, n_models, seed, recipe, threads), nprocs=k,
                       join=True, start_method="spawn")


def timed(device: str, work, *args) -> tuple[float, float | None]:
    """(wall seconds, peak GiB) of ``work(*args)``."""
    reset_peak(device)
    started = time.perf_counter()
    work(*args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started, peak_gib(device)


def warm_size(train_size: int, batch: int) -> int:
    """The smallest training set with the timed run's batch shapes: full batches and the same last one."""
    return batch + (train_size % batch) if train_size > batch else train_size


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: 256-image pool, 2 shadows per mode")
    parser.add_argument("--device", default=None, help="cuda (default; cpu with --tiny)")
    parser.add_argument("--models", nargs="+", default=["small-resnet", "resnet18"],
                        help="small-resnet, resnet18, tiny-cnn, small-cnn")
    parser.add_argument("--train-size", type=int, default=None, help="images per shadow (25000; 128 with --tiny)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per shadow")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per shadow per step")
    parser.add_argument("--single", type=int, default=None, help="shadows trained one at a time (4; 2 with --tiny)")
    parser.add_argument("--stack", type=int, nargs="+", default=None, help="shadows per stacked run (16 64; 2)")
    parser.add_argument("--processes", type=int, nargs="+", default=None,
                        help="processes sharing the device, each training --single shadows (4; 2)")
    parser.add_argument("--markdown", default=None, help="append the rows to this Markdown table")
    args = parser.parse_args(argv)
    device = device_or_exit(args.device, args.tiny)
    train_size = args.train_size or (128 if args.tiny else TCKR_TRAIN)
    single = args.single or (2 if args.tiny else 4)
    stack_sizes = args.stack or ([2] if args.tiny else [16, 64])
    process_counts = args.processes or ([2] if args.tiny else [4])
    torch.backends.cudnn.benchmark = True  # as an audit on a GPU would want it: autotuned once per shape

    pool = 2 * train_size
    # the audit's recipe for its shadows: the one loop, its precision policy (amp), flip + crop
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=2e-3, augment=("crop", "flip"),
                         crop_padding=4, amp=True, device=device)
    precision = compute_dtype(device, "auto")
    x, y = make_pool(pool, 0, device)
    warm_recipe = dataclasses.replace(recipe, epochs=1)
    print(f"{device_name(device)}, torch {torch.__version__}, training in "
          f"{'bf16 autocast' if precision is torch.bfloat16 else precision or 'float32'} (the audit's policy); "
          f"32x32x3, {train_size} images per shadow (pool {pool}), {args.epochs} timed epoch(s) of batch "
          f"{args.batch_size}, flip + crop", flush=True)

    rows: list[Row] = []
    for model in args.models:
        factory = model_factory(model)
        params = sum(p.numel() for p in factory().parameters())
        print(f"\n{model}: {params / 1e6:.2f}M parameters", flush=True)
        warm = warm_size(train_size, args.batch_size)

        def record(row: Row, note: str = "") -> None:
            rows.append(row)
            print_row(row, note)
            add_row(args.markdown, "shadows", f"{row.model}, {row.mode}", shadows_per_hour(row, train_size),
                    "shadows/h", row.peak_gib, f"TCKR's audit in {tckr_hours(row, train_size):.2f} GPU-h {note}".strip())

        one_at_a_time(factory, x, y, half_masks(1, pool, warm, 99), warm_recipe)  # warm-up: the same shapes
        masks = half_masks(single, pool, train_size, 0)
        record(Row(model, "one at a time", single, args.epochs, *timed(device, one_at_a_time, factory, x, y, masks, recipe)))
        for m in stack_sizes:
            try:
                stacked(factory, x, y, half_masks(m, pool, warm, 99), warm_recipe)
                masks = half_masks(m, pool, train_size, 1)
                record(Row(model, f"stacked (vmap) M={m}", m, args.epochs,
                           *timed(device, stacked, factory, x, y, masks, recipe)))
            except torch.OutOfMemoryError:
                print(f"  stacked M={m}: out of memory", flush=True)
                add_row(args.markdown, "shadows", f"{model}, stacked (vmap) M={m}", None, "shadows/h", None, "out of memory")
                torch.cuda.empty_cache()
        for k in process_counts:
            n = single * k
            record(Row(model, f"{k} processes, one at a time", n, args.epochs,
                       *timed(device, in_processes, k, model, pool, train_size, n, 0, recipe)),
                   "(start-up included; peak: main process)")

    print(f"\nExtrapolated to TCKR's audit ({TCKR_SHADOWS} shadows x {TCKR_EPOCHS} epochs x {TCKR_TRAIN} images; "
          f"~{TCKR_GPU_HOURS} H100-hours); GPU-h = hours of this device")
    print(f"{'model':<13} {'mode':<30} {'shadows/h':>10} {'TCKR GPU-h':>11} {'vs TCKR':>8}")
    for row in rows:
        tckr = tckr_hours(row, train_size)
        print(f"{row.model:<13} {row.mode:<30} {shadows_per_hour(row, train_size):>10.1f} {tckr:>11.2f} "
              f"{TCKR_GPU_HOURS / tckr:>7.1f}x")
    print(f"shadows/h at TCKR's recipe (50 epochs over 25k images); 'vs TCKR' = their {TCKR_GPU_HOURS} GPU-h / ours. "
          f"The goal (the 256-shadow audit in <= 1/20 of its GPU time) compares the fastest ResNet-18 mode's "
          f"GPU-h with {TCKR_GPU_HOURS / 20:.2f}.")
    return rows


def seconds_per_image_epoch(row: Row, train_size: int) -> float:
    return row.seconds / (row.shadows * row.epochs * train_size)


def shadows_per_hour(row: Row, train_size: int) -> float:
    """Shadows of TCKR's recipe (50 epochs over 25,000 images) per hour at this row's speed."""
    return 3600 / (seconds_per_image_epoch(row, train_size) * TCKR_EPOCHS * TCKR_TRAIN)


def tckr_hours(row: Row, train_size: int) -> float:
    """Hours of this device for TCKR's whole audit at this row's speed."""
    return seconds_per_image_epoch(row, train_size) * TCKR_SHADOWS * TCKR_EPOCHS * TCKR_TRAIN / 3600


def print_row(row: Row, note: str = "") -> None:
    peak = "-" if row.peak_gib is None else f"{row.peak_gib:.2f}"
    print(f"  {row.mode:<30} {row.shadows:>4} shadows  {row.seconds:>8.1f} s  "
          f"{row.shadow_epochs_per_s:>7.2f} shadow-epochs/s  peak {peak} GiB {note}", flush=True)


if __name__ == "__main__":
    main()
