"""How fast this machine trains and runs the product's models, and how close that is to its peak.

Prints, on this machine: the measured peak of float32 and bfloat16 matrix products and 3x3
convolutions (FLOP/s); classifier training images/s through the product's own loop (``fit``: sampler,
augmentation, precision policy, optimiser) and inference images/s (``predict_logits``) for tiny-cnn and
small-resnet at 8, 28, 32 and 64 px, one model and a vmap stack of models, in float32 and in the
precision policy's choice for this CPU; the scratch generator's training steps/s and sampling
images/s at 28 and 32 px (the presets' recipes). Every throughput is also given as a share of the
matching peak (FLOPs per image counted with ``torch.utils.flop_counter``; a training step is taken as
3x the forward pass). Asserts nothing.

    python -m benchmarks.throughput              # the full table (a few minutes on 2 cores)
    python -m benchmarks.throughput --quick      # one size per model, short timings (a smoke test)
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.classifiers.models import ClassifierSpec, build_classifier, create_classifier
from pipeline.classifiers.objectives import HardLabels
from pipeline.classifiers.stacked import train_stacked
from pipeline.classifiers.train import TrainConfig, fit, predict_logits
from pipeline.core.precision import compute_dtype, native_cpu_bf16
from pipeline.data.tensors import TensorData


@dataclass
class Row:
    what: str
    size: int
    precision: str
    unit: str
    rate: float  # units per second
    flops_per_unit: float | None
    peak: float | None  # FLOP/s of the matching peak

    @property
    def share(self) -> str:
        if not self.flops_per_unit or not self.peak:
            return "-"
        return f"{100 * self.rate * self.flops_per_unit / self.peak:.1f} %"


def median_time(work: Callable[[], None], repeats: int) -> float:
    """Median wall seconds of ``work`` over ``repeats`` runs after one warm-up run."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# -- the machine's peak ---------------------------------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    seconds = median_time(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / seconds


def conv_peak(dtype: torch.dtype, repeats: int) -> float:
    """3x3 convolution, 64 -> 64 channels on 32 x 32 maps, batch 64 (the classifiers' inner layers)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(dtype)
    x = torch.randn(64, 64, 32, 32).to(dtype)
    with torch.no_grad():
        seconds = median_time(lambda: conv(x), repeats)
    return 2 * 64 * 64 * 9 * 32 * 32 * 64 / seconds


# -- classifiers ----------------------------------------------------------------------------------------------------
def forward_flops(model: torch.nn.Module, side: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, side, side))
    return float(counter.get_total_flops())


def classifier_rows(name: str, side: int, amp: bool, stacked: int, steps: int, repeats: int,
                    peak: float) -> list[Row]:
    label = "bf16" if amp and compute_dtype("cpu") is not None else "fp32"
    recipe = TrainConfig(model=name, epochs=1, batch_size=64, augment=("crop",), crop_padding=max(1, side // 8),
                         amp=amp, device="cpu")
    n = recipe.batch_size * steps
    data = TensorData(torch.rand(n, 3, side, side), torch.randint(0, 10, (n,)))
    flops = 3 * forward_flops(create_classifier(ClassifierSpec(name, 10)), side)

    def train_one() -> None:
        fit(build_classifier(recipe, 10), data, HardLabels(), recipe)

    rows = [Row(f"{name} training, 1 model", side, label, "images", n / median_time(train_one, repeats), flops, peak)]
    if stacked:
        def factory() -> torch.nn.Module:
            return create_classifier(ClassifierSpec(name, 10))

        masks = torch.ones(stacked, n, dtype=torch.bool)
        seconds = median_time(lambda: train_stacked(factory, data.x, data.y, masks, recipe), repeats)
        rows.append(Row(f"{name} training, vmap stack of {stacked}", side, label, "images", stacked * n / seconds,
                        flops, peak))
    model = build_classifier(recipe, 10)
    big = torch.rand(2048, 3, side, side)
    seconds = median_time(lambda: predict_logits(model, big, device="cpu"), repeats)
    rows.append(Row(f"{name} inference (no grad, batches of 512)", side, "fp32", "images", len(big) / seconds,
                    flops / 3, peak if not amp else None))
    return rows


# -- the scratch generator -----------------------------------------------------------------------------------------
def generator_rows(side: int, precision: str, steps: int, repeats: int) -> list[Row]:
    from PIL import Image

    from pipeline.generators.scratch import ScratchConfig, ScratchGenerator

    options = ScratchGenerator.suggest_options(side, 1, 1000, "cpu")
    config = ScratchConfig(**{**options, "train_steps": steps, "checkpoint_every": 0, "threads": 0,
                              "precision": precision})
    images = [Image.new("RGB", (side, side), (i * 20 % 255,) * 3) for i in range(64)]
    labels = [i % 10 for i in range(64)]
    generator = ScratchGenerator(config)
    label = "bf16" if compute_dtype("cpu", precision) is not None else "fp32"

    def train() -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            ScratchGenerator(config).fit(images, [""] * len(images), labels, out)

    train_s = median_time(train, repeats)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        generator.fit(images, [""] * len(images), labels, out)
    batch = 256
    seconds = median_time(lambda: generator.generate([""] * batch, [i % 10 for i in range(batch)], list(range(batch))),
                          repeats)
    return [Row(f"scratch generator training ({config.batch_size} images/step)", side, label, "steps",
                steps / train_s, None, None),
            Row(f"scratch generator sampling ({config.sampler} {config.sampling_steps} steps, "
                f"CFG {config.guidance_scale:g})", side, label, "images", batch / seconds, None, None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one size per model, short timings (a smoke test)")
    parser.add_argument("--stacked", type=int, default=4, help="models in the vmap stack (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    steps = 3 if args.quick else 12

    # 1. the machine and its peak
    peaks = {"fp32": (matmul_peak(torch.float32, 1024, repeats), conv_peak(torch.float32, repeats)),
             "bf16": (matmul_peak(torch.bfloat16, 1024, repeats), conv_peak(torch.bfloat16, repeats))}
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}; native bf16: {native_cpu_bf16()}; precision policy on this CPU: "
          f"{'bf16' if compute_dtype('cpu') is not None else 'fp32'}\n")
    print("| peak | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |")
    print("| --- | --- | --- | --- |")
    for k, what in enumerate(("matrix product 1024 x 1024", "3x3 convolution 64 -> 64 at 32 px, batch 64")):
        f32, b16 = peaks["fp32"][k] / 1e9, peaks["bf16"][k] / 1e9
        print(f"| {what} | {f32:.1f} | {b16:.1f} | {b16 / f32:.2f} |")

    # 2. classifiers and 3. the generator
    print("\n| what | px | precision | per second | share of the conv peak |")
    print("| --- | --- | --- | --- | --- |", flush=True)
    sizes = {"tiny-cnn": [8] if args.quick else [8, 28, 32], "small-resnet": [28] if args.quick else [28, 32, 64]}
    for name, sides in sizes.items():
        for side in sides:
            for amp in (False, True):
                peak = peaks["bf16" if amp and compute_dtype("cpu") is not None else "fp32"][1]
                stacked = 0 if args.quick or side > 32 else args.stacked  # a stack at 64 px takes minutes
                show(classifier_rows(name, side, amp, stacked, steps, repeats, peak))
    for side in [28] if args.quick else [28, 32]:
        for precision in ("no", "auto"):
            show(generator_rows(side, precision, 4 if args.quick else 20, repeats))


def show(rows: list[Row]) -> None:
    for row in rows:
        print(f"| {row.what} | {row.size} | {row.precision} | {row.rate:,.1f} {row.unit} | {row.share} |", flush=True)


if __name__ == "__main__":
    main()
