"""The ``paper`` preset at toy size, end to end, with its stage wall times.

What a user runs on real models, ``python -m pipeline run --dataset imagefolder:DIR --preset paper
--base SD_DIR --captioner-model BLIP2_DIR --classifier NAME``, here on tiny random models built offline
(a Stable Diffusion 2 (768-v) layout pipeline and a BLIP-2 from ``tests/tiny_models.py``, saved with
``save_pretrained``; a timm MobileNetV3 without pretrained weights) and shrunk by config (the printed
config, edited as the README says) to a few images, steps and shadows: BLIP-2 captions -> LoRA
fine-tune -> generation -> teacher -> student -> fidelity -> audit in both modes. Nothing is downloaded.
``tests/test_paper_route.py`` runs the same toy in the suite; on a GPU it runs the product's CUDA paths
(bf16 LoRA training and sampling, bf16 classifier training), which no test can.

    python -m benchmarks.paper_toy                  # on a GPU (stops at once without one)
    python -m benchmarks.paper_toy --device cpu     # the same toy on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_common import add_row, device_name, device_or_exit, peak_gib, reset_peak

ROOT = Path(__file__).resolve().parents[1]
TOY_CLASSIFIER = "mobilenetv3_small_050"  # timm's smallest MobileNetV3 (the preset's is mobilenetv3_large_100)
TOY_RESOLUTION = 16  # the tiny VAE and UNet halve it twice
STAGES = ("caption", "generator", "generate", "teacher", "student", "fidelity", "audit")


def toy_config(config: dict[str, Any]) -> dict[str, Any]:
    """The paper preset's printed config (``run ... --preset paper --print-config``) shrunk to toy size:
    a few images per call, two steps of everything that steps, two transfer and one pipeline shadow;
    every stage and both audit modes still run. Classifier recipes are sized in optimiser steps
    (``TrainConfig.epochs`` / ``min_steps`` / ``max_steps``): no floor, at most two steps."""
    config = copy.deepcopy(config)
    config["captioner"].update(batch_size=8, max_new_tokens=8)
    options = dict(config["generator_options"])
    options.update(resolution=TOY_RESOLUTION, steps=2, batch_size=2, checkpoint_every=1, num_inference_steps=2,
                   sample_batch_size=16)
    config["generator_options"] = [[key, value] for key, value in options.items()]
    config.update(cardinality=1.0, rounds=2, generation_batch=16, cas_epochs=1)
    for recipe, epochs in ((config["teacher"], 1), (config["distill"]["student"], 2)):
        recipe.update(pretrained=False, image_size=32, epochs=epochs, min_steps=0, max_steps=2, batch_size=8,
                      crop_padding=4)
    config["distill"]["regen_every"] = 1  # the student moves to round 1 for its second epoch
    config["audit"].update(n_shadows=2, pipeline_shadows=1, workers=1, bootstrap=20, reference_size=16)
    return config


def _tiny_models():
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models

    return tiny_models


def write_models(root: Path) -> tuple[Path, Path]:
    """A tiny SD 2 (768-v) layout pipeline and a tiny BLIP-2, each saved into a folder under ``root``."""
    tiny = _tiny_models()
    sd2 = root / "sd2-768-v"
    tiny.tiny_sd_pipeline(sd2=True).save_pretrained(sd2)
    return sd2, tiny.make_tiny_blip2(root / "blip2")


def write_images(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 10, size: int = 32) -> Path:
    """PNG files ``root/<class>/<n>.png``: class-coloured noise, seeded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3)) + 100 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{n:03d}.png")
    return root


def preset_argv(images: Path, sd2: Path, blip2: Path, device: str) -> list[str]:
    """``run --dataset ... --preset paper`` pointed at the local folders (the README's command)."""
    return ["run", "--dataset", f"imagefolder:{images}", "--preset", "paper", "--base", str(sd2),
            "--captioner-model", str(blip2), "--classifier", TOY_CLASSIFIER, "--device", device]


def run_toy(images: Path, sd2: Path, blip2: Path, project: Path, device: str, quiet: bool = True
            ) -> tuple[str, dict[str, Any], float]:
    """Print the preset's config, shrink it, run it: (run id, metrics.json, wall seconds of the run)."""
    from pipeline.cli.main import main
    from pipeline.core.common import read_json
    from pipeline.core.project import Project

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        if main([*preset_argv(images, sd2, blip2, device), "--print-config"]) != 0:
            raise RuntimeError("run --preset paper --print-config failed")
    config_file = project.parent / "paper-toy.json"
    config_file.write_text(json.dumps(toy_config(json.loads(printed.getvalue())), indent=2))
    started = time.perf_counter()
    if main([*(["-q"] if quiet else []), "run", str(config_file), "--project", str(project)]) != 0:
        raise RuntimeError("the toy paper run failed")
    seconds = time.perf_counter() - started
    [record] = Project.open(project).registry().list(kind="experiment")
    return record.id, read_json(record.run_dir / "metrics.json"), seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default) or cpu")
    parser.add_argument("--markdown", default=None, help="append the stage rows to this Markdown table")
    parser.add_argument("--keep", default=None, help="build in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    device = device_or_exit(args.device, tiny=False)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        root.mkdir(parents=True, exist_ok=True)
        built = time.perf_counter()
        sd2, blip2 = write_models(root)
        images = write_images(root / "images")
        print(f"toy paper run on {device_name(device)}: tiny SD 2 (768-v layout) + BLIP-2 built and saved in "
              f"{time.perf_counter() - built:.1f} s; {TOY_CLASSIFIER}, 20 images of 32 px", flush=True)
        reset_peak(device)
        run_id, metrics, seconds = run_toy(images, sd2, blip2, root / "project", device)
    peak = peak_gib(device)
    timings = metrics["timings"]
    print(f"{'stage':<12} {'seconds':>8}")
    for stage in STAGES:
        print(f"{stage:<12} {timings.get(stage, float('nan')):>8.2f}")
        add_row(args.markdown, "paper toy", stage, timings.get(stage), "s")
    print(f"{'run (wall)':<12} {seconds:>8.2f}  run {run_id}; student accuracy {metrics['student']['accuracy']:.2f} "
          f"(toy data: no meaning); audited modes {sorted(metrics['student']['mia_modes'])}")
    add_row(args.markdown, "paper toy", "whole run (wall)", seconds, "s", peak,
            f"{device_name(device)}; captions, LoRA, 2 rounds, teacher, student, 2 + 1 shadows")
    return metrics


if __name__ == "__main__":
    main()
