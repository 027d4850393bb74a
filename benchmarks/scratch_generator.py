"""Size and quality of the scratch diffusion generator on CPU: which recipe fits which resolution?

Each variant trains the ``scratch`` generator on the MIA members of a dataset (default: the built-in
digits, ~650 images of 8x8), starting from the recipe the backend suggests for the data's side
(``ScratchGenerator.suggest_options``, what presets use) plus the variant's overrides, generates a
class-balanced synthetic set, and reports speed plus two quality proxies:
- ``fidelity``: the share of generated images that a CNN trained on the real members (the preset's
  teacher recipe) assigns to the class they were generated for;
- ``student`` / ``ratio``: a logistic regression on pixels trained only on the generated images
  with their intended class, scored on the real test split, over the same model trained on the
  real members (TCKR asks for a ratio >= 0.9).
Variants that differ only in sampling settings reuse the trained model. Prints a table; asserts nothing.

    python -m benchmarks.scratch_generator                      # from the repository root
    python -m benchmarks.scratch_generator --variants default,small,w1.5,w2,s5
    python -m benchmarks.scratch_generator --variants default,w2 --steps 150,300,600  # a learning curve
    python -m benchmarks.scratch_generator --set batch_size=64 --set train_steps=1600
    python -m benchmarks.scratch_generator --dataset parquet:../shared/datasets/fashion \
        --variants default,eps,ddim,w1 --steps 300,600       # the 28 px recipe and what each part adds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.datasets import load_dataset, parse_dataset_spec
from pipeline.generators.scratch import ScratchConfig, ScratchGenerator

# name -> ScratchConfig overrides on top of the suggested recipe (digits: the defaults, a (16, 32) UNet,
# 800 steps of 128; 17-64 px: patch 2-4, (32, 64) UNet, v-prediction + Min-SNR, DPM-Solver++ 10, CFG 2)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    # the parts of the 17-64 px recipe, one at a time
    "eps": {"prediction": "epsilon", "snr_gamma": None},
    "ddim": {"sampler": "ddim"},
    "w1": {"guidance_scale": 1.0},
    "no-patch": {"patch": 1},
    # model size
    "short": {"train_steps": 400},
    "small": {"block_out_channels": (32, 64), "train_steps": 400},  # about the default's training time
    "small-800": {"block_out_channels": (32, 64)},
    "wide": {"block_out_channels": (64, 128), "train_steps": 400},
    "deep": {"layers_per_block": 2},
    "attn": {"attention": True},
    "16px": {"resolution": 16},  # train at 16x16, downsample the samples to 8x8
    # training recipe
    "bs64": {"batch_size": 64, "train_steps": 1600},  # as many images seen as the default
    "2threads": {"threads": 2},
    # sampling only (reuse the default's weights)
    "w1.5": {"guidance_scale": 1.5},
    "w2": {"guidance_scale": 2.0},
    "w3": {"guidance_scale": 3.0},
    "dpm": {"sampler": "dpm"},
    "s5": {"sampling_steps": 5},
    "s20": {"sampling_steps": 20},
}
SAMPLING_FIELDS = ("guidance_scale", "sampler", "sampling_steps", "generate_batch_size")


def member_and_test(spec: str, seed: int, limit: int | None = None):
    """(member PIL images, member labels, test PIL images, test labels, dataset) from the data layer."""
    dataset = load_dataset(parse_dataset_spec(spec, seed=seed, limit=limit))
    members = set(dataset.membership().members)
    train = [r for r in dataset.split("train") if r.id in members]
    test = dataset.split("test")
    return ([dataset.load_image(r) for r in train], [r.label for r in train],
            [dataset.load_image(r) for r in test], np.array([r.label for r in test]), dataset)


def cnn_teacher(dataset, images: list, labels: list[int]):
    """The preset's teacher recipe trained on the member images (the fidelity judge)."""
    import torch

    from pipeline.classifiers.models import build_classifier
    from pipeline.classifiers.objectives import HardLabels
    from pipeline.classifiers.train import TensorData, fit, images_to_tensor
    from pipeline.presets import DataProfile, preset_config

    config, _ = preset_config(dataset.config, DataProfile.of(dataset, device="cpu"))
    recipe = dataclasses.replace(config.teacher, device="cpu")
    model = build_classifier(recipe, len(dataset.class_names))
    data = TensorData(images_to_tensor(images, recipe.image_size), torch.as_tensor(labels))
    fit(model, data, HardLabels(recipe.label_smoothing, mixup="mixup" in recipe.augment), recipe)
    return model.eval(), recipe.image_size


def class_fidelity(teacher, size: int | None, images: list, labels: list[int]) -> float:
    from pipeline.classifiers.train import images_to_tensor, predict_logits

    predicted = predict_logits(teacher, images_to_tensor(images, size), device="cpu").argmax(1).numpy()
    return float((predicted == np.asarray(labels)).mean())


def features(images: list) -> np.ndarray:
    """Grey pixels in [0, 1], flattened: (N, H*W)."""
    return np.stack([np.asarray(im.convert("L"), dtype=np.float32).ravel() / 255.0 for im in images])


def accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=3000, C=1.0)
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def evaluate(name: str, config: ScratchConfig, out_dir: Path, trained: dict, spent: dict, images: list,
             labels: list[int], test_x: np.ndarray, test_y: np.ndarray, teacher: float, n_images: int, seed: int,
             judge: tuple) -> dict[str, Any]:
    """Train (or resume, or reuse) one config, generate a balanced set, score the student: one table row."""
    n_classes = max(labels) + 1
    gen_labels = [i % n_classes for i in range(n_images)]
    gen_seeds = [seed * 1_000_003 + i for i in range(n_images)]
    # 1. train, resume a shorter run of the same model, or reuse one that differs only in sampling
    model = {k: v for k, v in dataclasses.asdict(config).items() if k not in SAMPLING_FIELDS}
    run_dir = out_dir / name / key_hash({k: v for k, v in model.items() if k != "train_steps"})
    key = key_hash(model)
    if key not in trained:
        generator = ScratchGenerator(config)
        start = time.perf_counter()
        metrics = generator.fit(images, [""] * len(images), labels, run_dir)
        spent[run_dir] = spent.get(run_dir, 0.0) + time.perf_counter() - start  # all steps so far
        trained[key] = (generator, metrics, spent[run_dir])
    fitted, metrics, train_s = trained[key]
    generator = ScratchGenerator(config)
    generator.unet, generator.state = fitted.unet, fitted.state
    # 2. generate a class-balanced synthetic set
    start = time.perf_counter()
    synthetic = generator.generate([""] * n_images, gen_labels, gen_seeds)
    gen_s = time.perf_counter() - start
    # 3. the student sees only synthetic images and the labels they were conditioned on
    student = accuracy(features(synthetic), np.array(gen_labels), test_x, test_y)
    fidelity = class_fidelity(*judge, synthetic, gen_labels)
    return {
        "variant": name,
        "params": f"{metrics['params'] / 1e6:.2f}M",
        "steps": metrics["steps"],
        "batch": config.batch_size,
        "train s": f"{train_s:.1f}",
        "s/step": f"{metrics['seconds_per_step']:.3f}",
        "loss": f"{metrics['final_loss']:.3f}",
        "w": config.guidance_scale,
        "sampler": f"{config.sampler}x{config.sampling_steps}",
        "gen s": f"{gen_s:.1f}",
        "images/s": f"{n_images / gen_s:.0f}",
        "fidelity": f"{fidelity:.3f}",
        "student": f"{student:.3f}",
        "ratio": f"{student / teacher:.3f}",
    }


def key_hash(fields: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]


def parse_value(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return tuple(value) if isinstance(value, list) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="default",
                        help=f"comma-separated names from: {', '.join(VARIANTS)} (default: default)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a ScratchConfig field in every variant (JSON value), repeatable")
    parser.add_argument("--images", type=int, default=None,
                        help="synthetic images per variant, class-balanced (default: 2 x members, the "
                             "quickstart's two rounds)")
    parser.add_argument("--steps", default="",
                        help="comma-separated train_steps to evaluate along one run, e.g. 200,400,600: each "
                             "resumes the previous one (training does not depend on train_steps)")
    parser.add_argument("--seed", type=int, default=0, help="member split and generation seed")
    parser.add_argument("--dataset", default="digits", help="dataset spec (default: the built-in digits)")
    parser.add_argument("--limit", type=int, default=None, help="images per split (stratified)")
    parser.add_argument("--out", type=Path, default=None, help="keep checkpoints here (default: a temp folder)")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    common = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set wants FIELD=VALUE, got {item!r}")
        common[key] = parse_value(value)

    import diffusers.training_utils  # noqa: F401  (~8 s of imports, paid once; kept out of the timings)

    images, labels, test_images, test_y, dataset = member_and_test(args.dataset, args.seed, args.limit)
    test_x = features(test_images)
    teacher = accuracy(features(images), np.array(labels), test_x, test_y)
    judge = cnn_teacher(dataset, images, labels)
    judge_accuracy = class_fidelity(*judge, test_images, list(test_y))
    side = max(images[0].size)
    suggested = ScratchGenerator.suggest_options(side, 3, len(images), "cpu")
    args.images = args.images or 2 * len(images)
    print(f"{dataset.name}: members: {len(images)}  test: {len(test_y)}  logistic regression on real: "
          f"{teacher:.3f}; CNN judge on real test: {judge_accuracy:.3f}; suggested recipe {suggested or 'defaults'}",
          flush=True)

    trained: dict[str, tuple[ScratchGenerator, dict[str, Any], float]] = {}  # model key -> fitted
    spent: dict[Path, float] = {}  # run folder -> training seconds so far
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for name in names:
            base = ScratchConfig(**{**suggested, **VARIANTS[name], **common, "seed": args.seed})
            curve = [int(k) for k in args.steps.split(",") if k.strip()] or [base.train_steps]
            for steps in curve:
                config = dataclasses.replace(base, train_steps=steps)
                rows.append(evaluate(name, config, root, trained, spent, images, labels, test_x, test_y, teacher,
                                     args.images, args.seed, judge))
                print(json.dumps(rows[-1]), flush=True)

    print()
    print(f"images generated per variant: {args.images}; teacher accuracy {teacher:.3f}; overrides {common or '-'}")
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    main()
