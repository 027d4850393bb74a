"""The cost curve: the default run (``run --dataset SPEC``, the preset chosen from the data) at several
dataset sizes, with the wall time of every stage, the plan's estimate beside the measured total, and the
headline figures; under each run a row with the plan's estimate of every stage (to see which one it misjudges).
Asserts nothing; run it with nothing else on the machine.

    python -m benchmarks.scaling --dataset parquet:../shared/datasets/fashion --limits 250 500 1000 1500
    python -m benchmarks.scaling --dataset digits --limits 0          # 0: the whole dataset (the quickstart's data)
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from pipeline.core.project import Project
from pipeline.data.context import DataContext
from pipeline.data.datasets import parse_dataset_spec
from pipeline.experiment import run_experiment
from pipeline.presets import DataProfile, StageEstimate, estimate_stages, estimated_wall, preset_config

STAGES = ("caption", "generator", "generate", "teacher", "student", "methods", "fidelity", "audit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="dataset spec")
    parser.add_argument("--limits", type=int, nargs="+", default=[0], help="training images per split (0: all)")
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--project", default=None, help="project folder (default: a temporary one)")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| images / split | members | " + " | ".join(STAGES) + " | of which transfer / pipeline shadows "
          "| total (s) | estimate (s) | teacher | student | class fidelity | RMIA teacher | RMIA student (pipeline) |")
    print("| --- " * (len(STAGES) + 10) + "|")
    for limit in args.limits:
        spec = parse_dataset_spec(args.dataset, limit=limit or None)
        data = DataContext.open(spec)
        profile = DataProfile.of(data.dataset)
        config, _ = preset_config(spec, profile, args.preset)
        stages = estimate_stages(config, profile)
        estimate = estimated_wall(stages)
        root = Path(args.project) if args.project else Path(tempfile.mkdtemp(prefix="scaling-"))
        started = time.monotonic()
        metrics = run_experiment(config, Project.open(root / f"limit-{limit}")).metrics
        total = time.monotonic() - started
        timings = metrics["timings"]
        student = metrics["student"]
        shadows = metrics["audit"]["shadows"]
        split = f"{shadows['transfer']['train_seconds']:.0f} / {shadows.get('pipeline', {}).get('train_seconds', 0):.0f}"
        print(f"| {limit or 'all'} | {metrics['dataset']['members']} | "
              + " | ".join(f"{timings.get(s, 0):.0f}" for s in STAGES)
              + f" | {split} | {total:.0f} | {estimate:.0f} | {metrics['teacher']['accuracy']:.3f} | {student['accuracy']:.3f} | "
              f"{metrics['fidelity']['class_fidelity']:.3f} | {metrics['teacher']['mia']['auc']:.3f} | "
              f"{student['mia']['auc']:.3f} |", flush=True)
        print(estimate_row(stages), flush=True)


def estimate_row(stages: list[StageEstimate]) -> str:
    """The plan's estimate of every stage, in the measured row's columns (the audit's transfer shadows and
    attacks, then its pipeline shadows, as the plan splits them)."""
    planned = {s.stage: s.seconds for s in stages}

    def f(value: float | None) -> str:  # "–": not a stage of this plan (or not estimated)
        return "–" if value is None else f"{value:.0f}"

    audit = [planned.get("audit"), planned.get("pipeline shadows"), planned.get("method shadows")]
    known = [a for a in audit if a is not None]
    cells = [f(planned.get(s)) if s != "audit" else f(sum(known) if known else None) for s in STAGES]
    return (f"| (estimate) | | {' | '.join(cells)} | {f(planned.get('audit'))} / {f(planned.get('pipeline shadows'))} "
            f"| | {f(estimated_wall(stages))} | | | | | |")


if __name__ == "__main__":
    main()
