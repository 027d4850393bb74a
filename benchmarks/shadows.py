"""Shadow models per hour on CPU: stacked (vmap) training vs one model at a time.

Each shadow is a small CNN trained on a random half (720 images) of a 1,440-image pool from
scikit-learn's 8x8 ``load_digits`` (optionally upscaled), then asked for logits on the whole
pool, as LiRA needs. Prints a table; asserts nothing.

    python -m benchmarks.shadows                       # from the repository root
    python -m benchmarks.shadows --sizes 16 32 64 --epochs 5 --image-size 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.classifiers.models import TinyCNN
from pipeline.classifiers.stacked import predict_stacked, train_single, train_stacked
from pipeline.classifiers.train import TrainConfig


def small_cnn() -> nn.Module:
    """The pipeline's default classifier (``tiny-cnn``, GroupNorm, no BatchNorm, so it stacks) on
    one grey channel."""
    return TinyCNN(num_classes=10, in_chans=1, width=32)


def load_pool(image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (pool_x, pool_y, test_x, test_y), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    pool, test = order[:1440], order[1440:]
    return x[pool], y[pool], x[test], y[test]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="models per stacked run")
    parser.add_argument("--single", type=int, default=4, help="models trained one at a time (timed, averaged)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per shadow")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per model per step")
    parser.add_argument("--image-size", type=int, default=8, help="8 (native) or e.g. 16 (bilinear upscale)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pool split and the shadows")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    pool_x, pool_y, test_x, test_y = load_pool(args.image_size, args.seed)
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=3e-3, seed=args.seed, augment=(),
                         device="cpu")
    rng = np.random.default_rng(args.seed)
    n_pool = len(pool_y)

    def half_masks(m: int) -> torch.Tensor:
        # LiRA's split: each shadow trains on a random half of the pool (exactly 720 examples)
        keep = np.argsort(rng.random((m, n_pool)), axis=1) < n_pool // 2
        return torch.from_numpy(keep)

    # warm-up (first-call allocations, thread pools), not timed
    train_stacked(small_cnn, pool_x[:64], pool_y[:64], torch.ones(2, 64, dtype=torch.bool),
                  TrainConfig(epochs=1, batch_size=args.batch_size, augment=(), device="cpu"))

    rows = []
    # one at a time
    masks = half_masks(args.single)
    start, cpu = time.perf_counter(), time.process_time()
    accs = []
    for i in range(args.single):
        model = train_single(small_cnn, pool_x, pool_y, recipe, mask=masks[i], model_index=i)
        with torch.no_grad():
            model(pool_x)  # the LiRA scores need logits on the whole pool
            accs.append(float((model(test_x).argmax(-1) == test_y).float().mean()))
    rows.append(("one at a time", args.single, time.perf_counter() - start, time.process_time() - cpu,
                 float(np.mean(accs))))

    # stacked
    for m in args.sizes:
        masks = half_masks(m)
        start, cpu = time.perf_counter(), time.process_time()
        state = train_stacked(small_cnn, pool_x, pool_y, masks, recipe)
        predict_stacked(small_cnn, state, pool_x)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        acc = float((predict_stacked(small_cnn, state, test_x).argmax(-1) == test_y).float().mean())
        rows.append((f"stacked (vmap) M={m}", m, seconds, cpu_seconds, acc))

    steps = args.epochs * -(-(n_pool // 2) // args.batch_size)
    print(f"digits {args.image_size}x{args.image_size}x1, {n_pool // 2} train examples/shadow, "
          f"{args.epochs} epochs ({steps} steps of {args.batch_size}), "
          f"{sum(p.numel() for p in small_cnn().parameters())} params, {args.threads} threads")
    print("wall = elapsed time (train + logits on the pool); cpu = process CPU time, all threads "
          "(less sensitive to other load on the machine)")
    base = rows[0][2] / rows[0][1]
    print(f"{'mode':<22}{'models':>7}{'wall s':>9}{'cpu s':>9}{'wall s/model':>14}{'shadows/h':>11}"
          f"{'speed-up':>10}{'test acc':>10}")
    for name, m, seconds, cpu_seconds, acc in rows:
        per = seconds / m
        print(f"{name:<22}{m:>7}{seconds:>9.1f}{cpu_seconds:>9.1f}{per:>14.2f}{3600 / per:>11.0f}"
              f"{base / per:>9.1f}x{acc:>10.3f}")


if __name__ == "__main__":
    main()
