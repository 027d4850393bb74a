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
from pipeline.data.datasets import load_dataset, parse_dataset_spec
from pipeline.distill import evaluate_on_test, real_tensors, train_teacher
from pipeline.methods import MethodContext, RealData, create_method
from pipeline.presets import DataProfile, preset_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="dataset spec (default: the built-in digits)")
    parser.add_argument("--methods", default="am,bss,dp-sgd@8", help="comma-separated (gkd+bss needs rounds: not here)")
    parser.add_argument("--out", default=None, help="folder for the weights (default: a temporary folder)")
    args = parser.parse_args()

    # 1. data, preset recipes, the teacher on the members
    spec = parse_dataset_spec(args.dataset)
    dataset = load_dataset(spec)
    split = dataset.membership()
    config, _ = preset_config(spec, DataProfile.of(dataset), "standard")
    out = Path(args.out or tempfile.mkdtemp(prefix="methods-"))
    n_classes, recipe = len(dataset.class_names), config.distill.student
    started = time.monotonic()
    teacher = train_teacher(dataset, split, config.teacher, out, lambda _: None)
    teacher_s = time.monotonic() - started
    test_ids = [r.id for r in dataset.split("test")]
    test = real_tensors(dataset, test_ids, config.teacher.image_size)
    teacher_acc = evaluate_on_test(teacher.model, test, n_classes)["accuracy"]
    rows = [("teacher", "yes", teacher_acc, teacher_s, None)]

    # 2. every method on the same teacher
    members = real_tensors(dataset, split.members, recipe.image_size)
    val = real_tensors(dataset, split.validation, recipe.image_size) if split.validation else None
    shape = tuple(real_tensors(dataset, split.members[:8], config.teacher.image_size).x.shape[1:])
    student_test = test if recipe.image_size == config.teacher.image_size else \
        real_tensors(dataset, test_ids, recipe.image_size)
    for name, options in _methods(args.methods):
        method = create_method(name, options)
        real = RealData(members, val) if method.reads_real() else None
        context = MethodContext(teacher.model.eval(), config.teacher, recipe, config.distill.temperature,
                                config.distill.alpha, n_classes, shape, (), config.distill.regen_every, real, 0)
        started = time.monotonic()
        result = method.train(context, out / method.label().replace(" ", "_"), lambda _: None)
        accuracy = evaluate_on_test(result.model, student_test, n_classes)["accuracy"]
        rows.append((method.label(), "yes" if method.reads_real() else "no", accuracy, time.monotonic() - started,
                     result.metrics.get("epsilon")))

    # 3. the table
    print(f"\n{dataset.name}: {len(split.members)} members, {len(test_ids)} test images, teacher "
          f"{config.teacher.model}, student {recipe.model} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads)\n")
    print("| model | reads real training images | test accuracy | / teacher | ε | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, reads, accuracy, seconds, epsilon in rows:
        eps = f"{epsilon:.2f}" if epsilon is not None else "-"
        print(f"| {label} | {reads} | {accuracy:.4f} | {accuracy / teacher_acc:.3f} | {eps} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
