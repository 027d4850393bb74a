"""Which classifier trains well from scratch on a dataset's member images on this machine?

Trains each named classifier with the same recipe on the member images of a dataset (the teacher's
setting: members only, early stopping off), and prints test accuracy and seconds per epoch. Prints a
Markdown table; asserts nothing.

    python -m benchmarks.classifiers --dataset parquet:../shared/datasets/fashion --models tiny-cnn small-resnet
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.classifiers.models import build_classifier
from pipeline.classifiers.objectives import HardLabels
from pipeline.classifiers.train import TrainConfig, evaluate, fit
from pipeline.data.context import DataContext
from pipeline.data.datasets import parse_dataset_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits", help="dataset spec (digits, parquet:DIR, imagefolder:DIR)")
    parser.add_argument("--limit", type=int, default=None, help="images per split (stratified)")
    parser.add_argument("--models", nargs="+", default=["tiny-cnn", "small-resnet"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--augment", nargs="*", default=["crop"], help="of crop, flip, augmix, mixup")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = DataContext.open(parse_dataset_spec(args.dataset, limit=args.limit))
    train, test = data.tensors("members"), data.tensors("test")
    n_classes = data.num_classes
    print(f"{data.dataset.name}: {len(train)} member images {tuple(train.x.shape[1:])}, {len(test)} test, "
          f"{n_classes} classes; {args.epochs} epochs, augment {args.augment}, {torch.get_num_threads()} threads\n")
    print("| classifier | parameters | test accuracy | s / epoch |")
    print("|---|---|---|---|")
    for name in args.models:
        recipe = TrainConfig(model=name, epochs=args.epochs, augment=tuple(args.augment), device="cpu")
        model = build_classifier(recipe, n_classes)
        started = time.monotonic()
        fit(model, train, HardLabels(mixup="mixup" in recipe.augment), recipe)
        seconds = (time.monotonic() - started) / args.epochs
        accuracy = evaluate(model, test, n_classes, device="cpu")["accuracy"]
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params:,} | {accuracy:.4f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
