"""Generator-free transfer methods on a dataset: test accuracy of each method's student next to the
teacher's, and what it cost. A quick look before a full ``compare-methods`` run (which adds the
generator, GKD, gkd+bss and the membership audit of every model).

The teacher and the student recipes come from the dataset's preset (``run --dataset`` picks the same);
the teacher trains on the MIA members. Methods that need synthetic rounds (``gkd+bss``) are not run
here. Prints one Markdown table; asserts nothing.

    python -m benchmarks.methods                                   # digits: am, bss, dp-sgd ε=8
    python -m benchmarks.methods --dataset parquet:../shared/datasets/fashion --methods am,dp-sgd@8
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from pipeline.cli.stages import _methods
from pipeline.data.context import DataContext
from pipeline.data.datasets import parse_dataset_spec
from pipeline.distill import evaluate_on_test, train_teacher
from pipeline.methods import create_method
from pipeline.presets import DataProfile, preset_config
from pipeline.replay import method_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="dataset spec (default: the built-in digits)")
    parser.add_argument("--methods", default="am,bss,dp-sgd@8", help="comma-separated (gkd+bss needs rounds: not here)")
    parser.add_argument("--out", default=None, help="folder for the weights (default: a temporary folder)")
    args = parser.parse_args()

    # 1. data, preset recipes, the teacher on the members
    spec = parse_dataset_spec(args.dataset)
    data = DataContext.open(spec)
    split = data.split
    config, _ = preset_config(spec, DataProfile.of(data.dataset), "standard")
    out = Path(args.out or tempfile.mkdtemp(prefix="methods-"))
    n_classes, recipe = data.num_classes, config.distill.student
    started = time.monotonic()
    val = data.tensors("validation", config.teacher.image_size) if split.validation else None
    teacher = train_teacher(data.tensors("members", config.teacher.image_size), val, config.teacher, n_classes, out)
    teacher_s = time.monotonic() - started
    test = data.tensors("test", config.teacher.image_size)
    teacher_acc = evaluate_on_test(teacher.model, test, n_classes)["accuracy"]
    rows = [("teacher", "yes", teacher_acc, teacher_s, None)]

    # 2. every method on the same teacher, with the context the experiment gives it (no synthetic rounds here)
    for name, options in _methods(args.methods):
        method = create_method(name, options)
        context = method_context(teacher.model.eval(), config.teacher, config.distill, data, (), split.members,
                                 split.validation, method.reads_real())
        started = time.monotonic()
        result = method.train(context, out / method.label().replace(" ", "_"), lambda _: None)
        accuracy = evaluate_on_test(result.model, data.tensors("test", recipe.image_size), n_classes)["accuracy"]
        rows.append((method.label(), "yes" if method.reads_real() else "no", accuracy, time.monotonic() - started,
                     result.metrics.get("epsilon")))

    # 3. the table
    print(f"\n{data.dataset.name}: {len(split.members)} members, {len(test)} test images, teacher "
          f"{config.teacher.model}, student {recipe.model} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads)\n")
    print("| model | reads real training images | test accuracy | / teacher | ε | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, reads, accuracy, seconds, epsilon in rows:
        eps = f"{epsilon:.2f}" if epsilon is not None else "-"
        print(f"| {label} | {reads} | {accuracy:.4f} | {accuracy / teacher_acc:.3f} | {eps} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
