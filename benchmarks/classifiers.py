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

from pipeline.classifiers.train import TrainConfig, evaluate, fit_classifier
from pipeline.data.datasets import load_dataset, parse_dataset_spec
from pipeline.distill import build_model, real_tensors


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

    dataset = load_dataset(parse_dataset_spec(args.dataset, limit=args.limit))
    split = dataset.membership()
    train = real_tensors(dataset, split.members, None)
    test = real_tensors(dataset, [r.id for r in dataset.split("test")], None)
    n_classes = len(dataset.class_names)
    print(f"{dataset.name}: {len(train)} member images {tuple(train.x.shape[1:])}, {len(test)} test, "
          f"{n_classes} classes; {args.epochs} epochs, augment {args.augment}, {torch.get_num_threads()} threads\n")
    print("| classifier | parameters | test accuracy | s / epoch |")
    print("|---|---|---|---|")
    for name in args.models:
        recipe = TrainConfig(model=name, epochs=args.epochs, augment=tuple(args.augment), device="cpu")
        model = build_model(recipe, n_classes)
        started = time.monotonic()
        fit_classifier(model, lambda _: train, recipe)
        seconds = (time.monotonic() - started) / args.epochs
        accuracy = evaluate(model, test, n_classes, device="cpu")["accuracy"]
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params:,} | {accuracy:.4f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
