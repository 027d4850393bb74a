"""The default preset end to end on several datasets: what a new user gets with no flag but --dataset.

For each dataset, chooses the preset from the data (``python -m pipeline run --dataset SPEC`` does the
same), prints the plan with its time estimate, runs the whole loop in a fresh project, and prints one
Markdown table: teacher and student accuracy and their ratio, class fidelity, Fréchet distance
(teacher features), CAS, MIA AUCs (headline attack: the teacher, the student in transfer and in
pipeline mode), the estimated and the measured wall time, and wall time per stage. Asserts nothing.

    python -m benchmarks.datasets                               # digits, Fashion subset, CIFAR-10 5k
    python -m benchmarks.datasets --datasets digits parquet:../shared/datasets/fashion
    python -m benchmarks.datasets --preset quick --out /tmp/bench

A dataset is ``SPEC`` or ``SPEC@LIMIT`` (``--limit``: a seeded, class-stratified sample per split).
The shared datasets (``../shared/datasets/``) are skipped with a note when absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.core.common import Progress
from pipeline.core.project import Project
from pipeline.data.datasets import load_dataset, parse_dataset_spec
from pipeline.experiment import run_experiment
from pipeline.presets import DataProfile, estimate_stages, estimated_wall, preset_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DEFAULT_DATASETS = ["digits", f"parquet:{SHARED / 'fashion'}", f"parquet:{SHARED / 'cifar10'}@5000"]
STAGES = ("caption", "generator", "generate", "teacher", "student", "fidelity", "audit")


def run_one(spec: str, preset: str, out: Path) -> dict[str, Any] | None:
    """Run the preset on one dataset; the table row's figures (None when the data is absent)."""
    path_spec, _, limit = spec.partition("@")
    config_ds = parse_dataset_spec(path_spec, limit=int(limit) if limit else None)
    if config_ds.path and not Path(config_ds.path).exists():
        print(f"skipping {spec}: {config_ds.path} not found")
        return None
    dataset = load_dataset(config_ds)
    profile = DataProfile.of(dataset)
    config, why = preset_config(config_ds, profile, preset)
    estimate = estimated_wall(estimate_stages(config, profile))
    print(f"\n## {spec}\n" + "\n".join(f"- {line}" for line in why)
          + f"\n- estimated wall time: {estimate / 60:.1f} min", flush=True)
    project = Project.open(out / Path(path_spec).name.replace(":", "-"))
    last = {"t": 0.0}

    def progress(event: Progress) -> None:  # one line every 30 s, so a long run shows it is alive
        if time.monotonic() - last["t"] > 30:
            last["t"] = time.monotonic()
            print(f"  {event.stage} {event.done}/{event.total}", flush=True)

    started = time.monotonic()
    result = run_experiment(config, project, progress)
    wall = time.monotonic() - started
    m = result.metrics
    teacher, student = m["teacher"], m["student"]
    modes = student.get("mia_modes", {})
    return {
        "dataset": spec.replace(str(SHARED) + "/", ""),
        "members": m["dataset"]["members"],
        "teacher": teacher["accuracy"],
        "student": student["accuracy"],
        "ratio": student["accuracy"] / max(teacher["accuracy"], 1e-9),
        "fidelity": m["fidelity"]["class_fidelity"],
        "fd": m["fidelity"]["frechet_distance"],
        "cas": m["fidelity"].get("cas"),
        "auc_teacher": teacher["mia"]["auc"],
        "auc_transfer": modes.get("transfer", {}).get("auc"),
        "auc_pipeline": modes.get("pipeline", {}).get("auc"),
        "estimate_min": estimate / 60 if estimate else None,
        "wall_min": wall / 60,
        "stages": m["timings"],
        "run": result.run_id,
    }


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any, d: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{d}f}"

    lines = ["| dataset | members | teacher | student | ratio | class fidelity | FD | CAS | AUC teacher | "
             "AUC student transfer | AUC student pipeline | est. min | wall min | "
             + " | ".join(f"{s} s" for s in STAGES) + " |",
             "|" + "---|" * (13 + len(STAGES))]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['members']} | {f(r['teacher'])} | {f(r['student'])} | {f(r['ratio'])} | "
                     f"{f(r['fidelity'])} | {f(r['fd'], 1)} | {f(r['cas'])} | {f(r['auc_teacher'])} | "
                     f"{f(r['auc_transfer'])} | {f(r['auc_pipeline'])} | {f(r['estimate_min'], 1)} | "
                     f"{f(r['wall_min'], 1)} | "
                     + " | ".join(f"{r['stages'].get(s, 0):.0f}" for s in STAGES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, metavar="SPEC[@LIMIT]")
    parser.add_argument("--preset", default="standard", choices=["quick", "standard"])
    parser.add_argument("--out", type=Path, default=None, help="keep the projects here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tckr-bench-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; projects in {out}")
    rows = []
    for spec in args.datasets:
        row = run_one(spec, args.preset, out)
        if row:
            rows.append(row)
            print("\n" + table(rows), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
