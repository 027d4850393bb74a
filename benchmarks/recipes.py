"""Is the preset's classifier recipe trained enough, and not more? The teacher recipe the preset picks for a
dataset, trained as the preset sizes it and k times longer (``--factors``: the epochs and the floor and
ceiling of steps all multiplied), on the member images; test accuracy, epochs run (early stopping
included) and seconds. Students need a generator: ``benchmarks/datasets.py`` runs whole experiments.
Prints a Markdown table; asserts nothing.

    python -m benchmarks.recipes --dataset parquet:../shared/datasets/fashion
    python -m benchmarks.recipes --dataset parquet:../shared/datasets/cifar10 --limit 5000
    python -m benchmarks.recipes --dataset parquet:../shared/datasets/cifar10 --limit 660   # ~30 members per class
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import torch

from pipeline.classifiers.train import TrainConfig
from pipeline.data.context import DataContext
from pipeline.data.datasets import parse_dataset_spec
from pipeline.distill import evaluate_on_test, train_teacher
from pipeline.presets import DataProfile, preset_config


def longer(recipe: TrainConfig, factor: float) -> TrainConfig:
    """The same recipe, ``factor`` times as long (epochs, floor and ceiling of steps)."""
    return replace(recipe, epochs=max(1, round(recipe.epochs * factor)), min_steps=round(recipe.min_steps * factor),
                   max_steps=None if recipe.max_steps is None else round(recipe.max_steps * factor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="dataset spec (digits, parquet:DIR, imagefolder:DIR)")
    parser.add_argument("--limit", type=int, default=None, help="images per split (stratified)")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 5.0], help="training lengths to compare")
    parser.add_argument("--steps", type=int, nargs="*", default=[],
                        help="also: the recipe with exactly these step budgets (floor = ceiling, no early stop)")
    parser.add_argument("--preset", default="standard")
    args = parser.parse_args()

    spec = parse_dataset_spec(args.dataset, limit=args.limit)
    data = DataContext.open(spec)
    config, why = preset_config(spec, DataProfile.of(data.dataset), args.preset)
    recipe = config.teacher
    size = recipe.image_size
    members, test = data.tensors("members", size), data.tensors("test", size)
    val = data.tensors("validation", size) if data.split.validation else None
    print(f"{data.dataset.name}: {len(members)} members, {len(val) if val else 0} validation, {len(test)} test; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print("\n".join(f"  {line}" for line in why))
    print("\n| teacher recipe | planned | epochs run | test accuracy | seconds |")
    print("| --- | --- | --- | --- | --- |")
    variants = [(f"preset x{f:g}", longer(recipe, f)) for f in args.factors]
    variants += [(f"{s} steps", replace(recipe, epochs=1, min_steps=s, max_steps=s, patience=None)) for s in args.steps]
    for label, variant in variants:
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            started = time.monotonic()
            trained = train_teacher(members, val, variant, data.num_classes, out)
            seconds = time.monotonic() - started
        accuracy = evaluate_on_test(trained.model, test, data.num_classes)["accuracy"]
        print(f"| {label} | {variant.plan(len(members))} | {trained.train.epochs_run} | {accuracy:.4f} | "
              f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
