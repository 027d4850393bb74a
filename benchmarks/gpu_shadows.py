"""Shadow models per hour on a GPU: one at a time vs stacked (vmap) vs several processes sharing the GPU.

Each shadow trains on half of a pool of 32x32 colour images (LiRA's split) with the audit's own training
code (:mod:`pipeline.classifiers.stacked`). The images are random: speed does not depend on their values
(``python -m benchmarks.audit`` measures the AUC side of the goal on real data). Two models: the
quickstart's ``tiny-cnn`` and a ResNet-18 (timm's, 11M parameters, GroupNorm instead of BatchNorm so that
copies can be stacked).

Every mode trains ``--epochs`` epochs over ``--train-size`` images per shadow (after an untimed warm-up);
the table extrapolates to TCKR's audit budget: 256 shadows x 50 epochs over 25,000 images (TCKR quote
about 25 GPU-hours for it with MobileNetV3 shadows) and to the pipeline's default transfer audit
(``AuditConfig``: 8 shadows, the teacher's epochs). Prints tables; asserts nothing.

    python -m benchmarks.gpu_shadows                     # on a GPU: both models, all modes
    python -m benchmarks.gpu_shadows --models tiny-cnn --stack 32 128 --processes 2 4
    python -m benchmarks.gpu_shadows --tiny              # CPU smoke test: small pool, few shadows
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

from pipeline.classifiers.models import ClassifierSpec, create_classifier
from pipeline.classifiers.stacked import predict_stacked, train_single, train_stacked
from pipeline.classifiers.train import TrainConfig

TCKR_SHADOWS, TCKR_EPOCHS, TCKR_TRAIN = 256, 50, 25_000  # TCKR's LiRA audit (MobileNetV3, CIFAR-10 halves)
TCKR_GPU_HOURS = 25.0  # their figure for it


def model_factory(name: str, num_classes: int = 10):
    """A picklable factory (processes get it too) for ``tiny-cnn`` or a GroupNorm ResNet-18."""
    if name == "resnet18":
        import timm
        from timm.layers import GroupNorm

        return functools.partial(timm.create_model, "resnet18", num_classes=num_classes,
                                 norm_layer=functools.partial(GroupNorm, num_groups=32))
    return functools.partial(create_classifier, ClassifierSpec(name=name, num_classes=num_classes))


@dataclass
class Row:
    model: str
    mode: str
    shadows: int
    epochs: int  # timed epochs per shadow
    seconds: float  # wall time: training + logits on the whole pool
    peak_gib: float

    @property
    def shadow_epochs_per_s(self) -> float:
        return self.shadows * self.epochs / self.seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def half_masks(n_models: int, pool: int, seed: int) -> torch.Tensor:
    """LiRA's split: each shadow trains on a random half of the pool."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.argsort(rng.random((n_models, pool)), axis=1) < pool // 2)


def one_at_a_time(factory, x, y, masks, recipe: TrainConfig) -> None:
    for i in range(masks.shape[0]):
        model = train_single(factory, x, y, recipe, mask=masks[i], model_index=i)
        with torch.no_grad():
            for start in range(0, x.shape[0], 1024):
                model(x[start:start + 1024])  # the attacks need logits on the whole pool


def stacked(factory, x, y, masks, recipe: TrainConfig) -> None:
    state = train_stacked(factory, x, y, masks, recipe)
    predict_stacked(factory, state, x)


def _process(rank: int, k: int, factory, x, y, masks, recipe: TrainConfig, device: str, threads: int) -> None:
    torch.set_num_threads(threads)
    x, y = x.to(device), y.to(device)
    one_at_a_time(factory, x, y, masks[rank::k], dataclasses.replace(recipe, seed=recipe.seed + rank, device=device))
    sync(torch.device(device))


def in_processes(k: int, factory, x, y, masks, recipe: TrainConfig, device: torch.device) -> None:
    """``k`` spawned processes, each training its share of the shadows one at a time on the same device
    (start-up included: a real audit pays it too)."""
    threads = max(1, torch.get_num_threads() // k)
    mp.start_processes(_process, args=(k, factory, x.cpu(), y.cpu(), masks, recipe, str(device), threads),
                       nprocs=k, join=True, start_method="spawn")


def timed(device: torch.device, work, *args) -> tuple[float, float]:
    """(wall seconds, peak GiB) of ``work(*args)``."""
    sync(device)
    reset_peak(device)
    started = time.perf_counter()
    work(*args)
    sync(device)
    return time.perf_counter() - started, peak(device)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: 512-image pool, 2-4 shadows, tiny-cnn")
    parser.add_argument("--device", default="auto", help="auto (cuda when visible), cuda, cpu")
    parser.add_argument("--models", nargs="+", default=None, help="tiny-cnn, small-cnn, small-resnet, resnet18")
    parser.add_argument("--train-size", type=int, default=None, help="images per shadow (25000; 256 with --tiny)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per shadow")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per shadow per step")
    parser.add_argument("--single", type=int, default=None, help="shadows trained one at a time (4; 2 with --tiny)")
    parser.add_argument("--stack", type=int, nargs="+", default=None, help="shadows per stacked run (16 64)")
    parser.add_argument("--processes", type=int, nargs="+", default=None, help="processes sharing the device (4)")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls and convolutions (fp32 otherwise)")
    parser.add_argument("--default-epochs", type=int, default=10,
                        help="epochs of the shadows of your audit (the teacher's), for the last column")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    models = args.models or (["tiny-cnn"] if args.tiny else ["tiny-cnn", "resnet18"])
    train_size = args.train_size or (256 if args.tiny else TCKR_TRAIN)
    single = args.single or (2 if args.tiny else 4)
    stack_sizes = args.stack or ([2, 4] if args.tiny else [16, 64])
    process_counts = args.processes or ([2] if args.tiny else [4])
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True

    pool = 2 * train_size
    gen = torch.Generator().manual_seed(0)
    x_cpu = torch.rand(pool, 3, 32, 32, generator=gen)
    y_cpu = torch.randint(0, 10, (pool,), generator=gen)
    x, y = x_cpu.to(device), y_cpu.to(device)
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=2e-3, augment=("crop", "flip"),
                         crop_padding=4, device=str(device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {'TF32' if args.tf32 else 'fp32'}; 32x32x3, {train_size} images "
          f"per shadow (pool {pool}), {args.epochs} timed epoch(s) of batch {args.batch_size}, flip + crop")

    rows: list[Row] = []
    for model in models:
        factory = model_factory(model)
        params = sum(p.numel() for p in factory().parameters())
        # warm-up: cuDNN autotuning, allocator, vmap tracing (not timed)
        warm = half_masks(2, min(pool, 512), 99)
        stacked(factory, x[:512], y[:512], warm, dataclasses.replace(recipe, epochs=1))
        one_at_a_time(factory, x[:512], y[:512], warm[:1], dataclasses.replace(recipe, epochs=1))
        print(f"\n{model}: {params / 1e6:.2f}M parameters")

        masks = half_masks(single, pool, 0)
        rows.append(Row(model, "one at a time", single, args.epochs,
                        *timed(device, one_at_a_time, factory, x, y, masks, recipe)))
        print_row(rows[-1])
        for m in stack_sizes:
            masks = half_masks(m, pool, 1)
            try:
                rows.append(Row(model, f"stacked (vmap) M={m}", m, args.epochs,
                                *timed(device, stacked, factory, x, y, masks, recipe)))
            except torch.OutOfMemoryError:
                print(f"  stacked M={m}: out of memory")
                torch.cuda.empty_cache()
                continue
            print_row(rows[-1])
        for k in process_counts:
            masks = half_masks(single * k, pool, 2)
            rows.append(Row(model, f"{k} processes, one at a time", single * k, args.epochs,
                            *timed(device, in_processes, k, factory, x, y, masks, recipe, device)))
            print_row(rows[-1], note="(peak: main process only)")

    print(f"\nExtrapolated to TCKR's audit ({TCKR_SHADOWS} shadows x {TCKR_EPOCHS} epochs x {TCKR_TRAIN} images; "
          f"they quote ~{TCKR_GPU_HOURS:.0f} GPU-h) and to the default audit (8 shadows x {args.default_epochs} "
          "epochs, same images); GPU-h = hours of this device")
    print(f"{'model':<10} {'mode':<30} {'shadows/h':>10} {'TCKR GPU-h':>11} {'vs TCKR':>8} {'default GPU-h':>14}")
    for row in rows:
        per_image_epoch = row.seconds / (row.shadows * args.epochs * train_size)
        tckr = per_image_epoch * TCKR_SHADOWS * TCKR_EPOCHS * TCKR_TRAIN / 3600
        default = per_image_epoch * 8 * args.default_epochs * TCKR_TRAIN / 3600
        shadows_per_h = 3600 / (per_image_epoch * TCKR_EPOCHS * TCKR_TRAIN)
        print(f"{row.model:<10} {row.mode:<30} {shadows_per_h:>10.1f} {tckr:>11.2f} "
              f"{TCKR_GPU_HOURS / tckr:>7.1f}x {default:>14.3f}")
    print("shadows/h at TCKR's recipe (50 epochs over 25k images); 'vs TCKR' = their 25 GPU-h / ours. "
          "The goal (the 256-shadow audit in <= 1/20 of its GPU time) compares the TCKR GPU-h column of the "
          "fastest mode with 25 / 20 = 1.25 GPU-h.")
    return rows


def print_row(row: Row, note: str = "") -> None:
    print(f"  {row.mode:<30} {row.shadows:>4} shadows  {row.seconds:>8.1f} s  "
          f"{row.shadow_epochs_per_s:>7.2f} shadow-epochs/s  peak {row.peak_gib:.2f} GiB {note}", flush=True)


if __name__ == "__main__":
    main()
