"""How many shadows does an audit need, and how honest is the transfer mode?

On the quickstart's data (or any finished experiment): LiRA with 8/16/32/64 transfer shadows vs RMIA
with 1/2/4/8 reference models (AUC and TPR at 1 % FPR, each with a bootstrap 95 % interval, and the
shadow-training time), and the student audited in transfer vs pipeline mode. Every count is a prefix
of one cached shadow set (shadow sets grow without retraining the first ones), so the largest count
is trained once. Prints a Markdown table; asserts nothing.

    python -m benchmarks.audit                                  # runs the quickstart first if needed
    python -m benchmarks.audit --project bench --run EXPERIMENT_ID --lira 8 16 --rmia 1 2 --pipeline 1 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.audit import audit
from pipeline.core.project import Project
from pipeline.experiment import run_experiment
from pipeline.presets import quickstart_config
from pipeline.privacy.attacks import AttackInputs, run_attack
from pipeline.privacy.metrics import attack_metrics, roc_curve, tpr_at_fpr


def tpr_ci(scores: np.ndarray, is_member: np.ndarray, fpr: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Stratified percentile bootstrap interval of the TPR at ``fpr``."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(is_member), np.flatnonzero(~is_member)
    values = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        f, t, _ = roc_curve(scores[idx], is_member[idx])
        values.append(tpr_at_fpr(f, t, fpr))
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def shadow_arrays(directory: Path, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    files = [np.load(Path(directory) / f"shadow-{i:04d}.npz") for i in range(count)]
    return (np.stack([f["logits"] for f in files]), np.stack([f["z_logits"] for f in files]),
            np.stack([f["shadow_in"] for f in files]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", default="bench-audit", help="project folder (default ./bench-audit)")
    parser.add_argument("--run", default=None, help="a finished experiment (default: run the quickstart)")
    parser.add_argument("--lira", type=int, nargs="+", default=[8, 16, 32, 64], help="LiRA shadow counts")
    parser.add_argument("--rmia", type=int, nargs="+", default=[1, 2, 4, 8], help="RMIA reference counts")
    parser.add_argument("--pipeline", type=int, nargs="+", default=[1, 2, 4], help="pipeline-mode shadow counts")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for the intervals")
    args = parser.parse_args()

    # 1. an experiment to audit, then one audit that trains the largest shadow sets
    project = Project.open(args.project)
    run_id = args.run or run_experiment(quickstart_config(), project).run_id
    n_transfer, n_pipeline = max(args.lira + args.rmia), max(args.pipeline)
    started = time.monotonic()
    result = audit(replace(quickstart_config().audit, experiment=run_id, n_shadows=n_transfer,
                           pipeline_shadows=n_pipeline, bootstrap=0), project)
    print(f"audit {result.run_id}: {time.monotonic() - started:.0f} s "
          f"(trained {result.metrics['shadows']['transfer']['trained']} transfer and "
          f"{result.metrics['shadows']['pipeline']['trained']} pipeline shadows)")
    targets = np.load(project.runs_dir / result.run_id / "targets.npz")
    is_member = targets["is_member"]
    timing = {kind: per_shadow_seconds(result.metrics["shadows"][kind]) for kind in ("transfer", "pipeline")}

    # 2. every (attack, mode, count) from prefixes of the cached sets
    rows = []
    plan = [("lira", "transfer", n) for n in args.lira] + [("rmia", "transfer", n) for n in args.rmia] + \
        [("rmia", "pipeline", n) for n in args.pipeline] + \
        [("lira", "pipeline", n) for n in args.pipeline if n >= 4]
    for attack, mode, count in plan:
        logits, z_logits, shadow_in = shadow_arrays(result.metrics["shadows"][mode]["directory"], count)
        models = ("teacher", "student") if mode == "transfer" else ("student",)
        for model in models:
            inputs = AttackInputs(targets["labels"], targets[f"{model}_logits"], logits, shadow_in,
                                  targets["z_labels"], targets[f"{model}_z_logits"], z_logits)
            try:
                scores = run_attack(attack, inputs)
            except ValueError as err:
                rows.append((attack, mode, count, model, f"skipped: {err}", "", ""))
                continue
            m = attack_metrics(scores, is_member, n_boot=args.bootstrap, seed=0)
            lo, hi = tpr_ci(scores, is_member, 0.01, args.bootstrap, seed=0)
            rows.append((attack, mode, count, model, f"{m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}]",
                         f"{m['tpr_at_1pct_fpr']:.3f} [{lo:.3f}, {hi:.3f}]",
                         f"{count * timing[mode]:.0f} s" if timing[mode] else "n/a"))

    # 3. the table
    print(f"\n{int(is_member.sum())} members, {int((~is_member).sum())} non-members; experiment {run_id}\n")
    print("| attack | mode | shadows | model | AUC [95% CI] | TPR@1%FPR [95% CI] | shadow training |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"\nshadow training per shadow: transfer {timing['transfer']:.1f} s, pipeline {timing['pipeline']:.1f} s "
          "(pipeline shadows ran two at a time on 2 cores: wall time per shadow)")


def per_shadow_seconds(entry: dict) -> float:
    """Wall seconds per shadow that this benchmark's audit trained (0 when all came from the cache)."""
    return entry["train_seconds"] / entry["trained"] if entry.get("trained") else 0.0


if __name__ == "__main__":
    main()
