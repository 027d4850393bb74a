"""The DP generator's student against the DP-SGD classifier at the same ε (DPDM's claim, Dockhorn et al. 2023).

For each dataset and each ε, one DP run as ``compare-methods`` plans it (``pipeline/comparison.py``): the
generator trained with DP-SGD at (ε, δ = 1 / (10 · members)), class prompts only, the student labelled by
the generated classes, and beside it in the same run the DP-SGD classifier at the same (ε, δ); both audited
against the same shadows in pipeline mode (RMIA, each pipeline shadow replaying the DP training on its
half). Per model: formal ε (the accountant's guarantee), test accuracy, class fidelity of the synthetic set
(the teacher's agreement with the generated classes; evaluation only, not part of the guarantee), RMIA AUC
with its 95% interval, empirical ε (the attack's lower bound: must not exceed the formal ε), and wall time
(training of the model's own path; the whole run). Prints one Markdown table; asserts nothing.

    python -m benchmarks.dp                                   # digits and the Fashion subset, ε 1, 4, 10
    python -m benchmarks.dp --datasets digits --epsilons 10
    python -m benchmarks.dp --tiny                            # a smoke test: 240 digits, tiny models, ε 10

The Fashion subset (``parquet:../shared/datasets/fashion``) is skipped with a note when absent. The full
benchmark is long on a CPU (the preset's generator trained once per ε and per pipeline shadow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.audit import AuditConfig
from pipeline.comparison import parse_epsilons, plan_comparison
from pipeline.core.project import Project
from pipeline.data.datasets import load_dataset, parse_dataset_spec
from pipeline.experiment import ExperimentConfig, run_experiment
from pipeline.presets import DataProfile, preset_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DEFAULT_DATASETS = ["digits", f"parquet:{SHARED / 'fashion'}"]
HEADLINE_MODE = "pipeline"


def tiny(config: ExperimentConfig) -> ExperimentConfig:
    """The smoke test's run: 240 digits, a tiny generator trained 3 DP steps, 2 epochs, 2 + 2 shadows."""
    epochs = {"epochs": 2, "min_steps": 0, "patience_share": None}
    options = {**config.generator_options, "block_out_channels": [8, 16], "norm_groups": 4, "train_steps": 3,
               "batch_size": 16, "dp_noise_multiplicity": 2}
    return replace(config, dataset=replace(config.dataset, limit=240), rounds=1, generation_batch=64, cas_epochs=0,
                   generator_options=options, teacher=replace(config.teacher, **epochs),
                   distill=replace(config.distill, regen_every=1,
                                   student=replace(config.distill.student, **epochs)),
                   audit=AuditConfig(n_shadows=2, pipeline_shadows=2, workers=1, bootstrap=20, modes=("pipeline",),
                                     method_modes=("pipeline",)))


def dp_runs(spec: str, epsilons: tuple[float, ...], small: bool, options: dict[str, Any] | None = None
            ) -> tuple[list[Any], int] | None:
    """The planned DP runs of one dataset (None when its data is absent) and its member count."""
    path_spec, _, limit = spec.partition("@")
    dataset_config = parse_dataset_spec(path_spec, limit=int(limit) if limit else None)
    if dataset_config.path and not Path(dataset_config.path).exists():
        print(f"skipping {spec}: {dataset_config.path} not found")
        return None
    if small:
        dataset_config = replace(dataset_config, limit=240)
    profile = DataProfile.of(load_dataset(dataset_config))
    config, _ = preset_config(dataset_config, profile, "quick" if small else "standard")
    config = tiny(config) if small else replace(config, audit=replace(config.audit, modes=(HEADLINE_MODE,),
                                                                      method_modes=(HEADLINE_MODE,)))
    dp_sgd = {"epochs": 2} if small else {}
    config = replace(config, generator_options={**dict(config.generator_options), **(options or {})})
    config = replace(config, methods=tuple(("dp-sgd", {"epsilon": e, **dp_sgd}) for e in epsilons))
    return [p for p in plan_comparison(config, epsilons, profile.members) if p.epsilon is not None], profile.members


def rows_of(spec: str, epsilon: float, metrics: dict[str, Any], wall: float) -> list[dict[str, Any]]:
    """The table's rows of one DP run: its DP-generator student, then its DP-SGD classifier."""
    timings = metrics.get("timings", {})
    student = metrics["student"]
    generator_path = sum(timings.get(k, 0.0) for k in ("generator", "generate", "student"))
    rows = [_row(spec, epsilon, "DP-generator student", student, metrics["fidelity"].get("class_fidelity"),
                 generator_path, wall)]
    for label, method in (metrics.get("methods") or {}).items():
        rows.append(_row(spec, epsilon, f"DP-SGD classifier ({label})", method, None,
                         method.get("train", {}).get("seconds", float("nan")), wall))
    return rows


def _row(spec: str, epsilon: float, model: str, m: dict[str, Any], fidelity: float | None, seconds: float,
         wall: float) -> dict[str, Any]:
    mia = m.get("mia_modes", {}).get(HEADLINE_MODE) or m["mia"]
    return {"dataset": spec.replace(str(SHARED) + "/", ""), "epsilon": epsilon, "model": model,
            "formal": m.get("formal_epsilon"), "accuracy": m["accuracy"], "fidelity": fidelity,
            "auc": mia["auc"], "ci": mia.get("auc_ci95"), "mode": mia.get("mia_mode", "?"),
            "empirical": mia.get("empirical_epsilon"), "seconds": seconds, "wall": wall}


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any, d: int = 3) -> str:
        return "–" if v is None else f"{v:.{d}f}"

    lines = ["| dataset | target ε | model | formal ε (guarantee) | accuracy | class fidelity | RMIA AUC [95% CI] | "
             "empirical ε (lower bound) | train s | run s |", "|" + "---|" * 10]
    for r in rows:
        ci = f" [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["ci"] else ""
        lines.append(f"| {r['dataset']} | {r['epsilon']:g} | {r['model']} | {f(r['formal'], 2)} | {f(r['accuracy'], 4)} "
                     f"| {f(r['fidelity'])} | {r['auc']:.3f}{ci} ({r['mode']}) | {f(r['empirical'], 2)} | "
                     f"{r['seconds']:.0f} | {r['wall']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=None, metavar="SPEC[@LIMIT]",
                        help="default: digits and the Fashion subset (--tiny: digits)")
    parser.add_argument("--epsilons", default=None, help="comma-separated ε (default 1,4,10; --tiny: 10)")
    parser.add_argument("--tiny", action="store_true", help="a smoke test: 240 digits, tiny models (about 90 s on 2 CPU cores)")
    parser.add_argument("--out", type=Path, default=None, help="keep the projects here (default: a temp folder)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a generator option over the preset's (JSON value), e.g. --set train_steps=300")
    args = parser.parse_args(argv)
    options = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes FIELD=VALUE, got {item!r}")
        try:
            options[field] = json.loads(value)
        except json.JSONDecodeError:
            options[field] = value
    epsilons = parse_epsilons(args.epsilons or ("10" if args.tiny else "1,4,10"))
    datasets = args.datasets or (["digits"] if args.tiny else DEFAULT_DATASETS)
    out = args.out or Path(tempfile.mkdtemp(prefix="tckr-dp-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; projects in {out}"
          + (f"; generator options over the preset's: {options}" if options else ""))
    rows: list[dict[str, Any]] = []
    for spec in datasets:
        planned = dp_runs(spec, epsilons, args.tiny, options)
        if planned is None:
            continue
        runs, members = planned
        project = Project.open(out / Path(spec.partition("@")[0]).name.replace(":", "-"))
        for run in runs:
            print(f"\n## {spec}: {run.label}, δ = {run.config.delta:.2g} ({members} members)", flush=True)
            started = time.monotonic()
            result = run_experiment(run.config, project)
            rows += rows_of(spec, run.epsilon, result.metrics, time.monotonic() - started)
            print("\n" + table(rows), flush=True)
    print("\n" + table(rows))
    print("\nformal ε: the accountant's guarantee; empirical ε: the attack's lower bound (95% Clopper-Pearson), "
          "never a guarantee. Class fidelity is evaluation on the real data, reported apart from the guarantee.")


if __name__ == "__main__":
    main()
