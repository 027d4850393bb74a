"""The one-run audit (Steinke, Nasr & Jagielski 2023) beside a shadow-based one, on the DP-SGD classifier.

m canaries from the non-member pool, each put into training with probability 1/2, beside the real members.
One target run per privacy level (no DP, and DP-SGD at each ε), then four lower bounds on ε from the same
canaries: the one-run bound and the ROC bound (Clopper-Pearson) of the target's loss alone (no shadows),
and both bounds of LiRA scores from S shadows trained the same way on their own halves of the canaries
(the shadow-based audit, S + 1 trainings). Every figure is an attack's lower bound on ε; only the claimed ε
of a DP row is a guarantee. Prints one Markdown table; asserts nothing.

    python -m benchmarks.one_run                      # digits, 200 canaries, no DP and ε = 8, 4 shadows
    python -m benchmarks.one_run --epsilons 1,8 --canaries 400 --shadows 8 --epochs 20
    python -m benchmarks.one_run --mislabel        # canaries with a wrong label: easier to tell apart

Measured on digits (2026-12-07, a shared 2-core CPU; 644 members, 200 canaries, 88 in, 4 shadows, δ = 1e-5;
columns one-run/ROC of the loss, then one-run/ROC of LiRA): in-distribution canaries, 10 epochs: no DP
0.00 / 0.06 / 0.00 / 0.00, DP-SGD ε = 8 (7.99 claimed) all 0.00; mislabelled, 10 epochs: no DP 0.00 / 0.26 /
0.00 / 0.00, ε = 8 all 0.00; mislabelled, 40 epochs, no DP: 1.43 / 1.42 / 2.77 / 2.72 (the shadows double it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.classifiers.models import build_classifier
from pipeline.classifiers.objectives import HardLabels
from pipeline.classifiers.train import TrainConfig, fit
from pipeline.data.context import DataContext
from pipeline.data.datasets import parse_dataset_spec
from pipeline.data.tensors import TensorData
from pipeline.methods import MethodContext, RealData
from pipeline.methods.dp import DPSGD, DPConfig, canary_scores
from pipeline.presets import DataProfile, preset_config
from pipeline.privacy.attacks import AttackInputs, run_attack
from pipeline.privacy.metrics import DEFAULT_DELTA, empirical_epsilon
from pipeline.privacy.one_run import draw_canaries, one_run_epsilon
from pipeline.privacy.shadows import assign_shadows


def train(members: TensorData, canaries: TensorData, inside: np.ndarray, recipe: TrainConfig, classes: int,
          epsilon: float | None, delta: float, out: Path) -> tuple[nn.Module, float | None]:
    """One run on the members plus the canaries ``inside``: DP-SGD at ``epsilon``, or plain (None).
    Returns the model and its spent ε."""
    rows = canaries.rows(np.flatnonzero(inside))
    data = TensorData(torch.cat([members.x, rows.x]), torch.cat([members.y, rows.y]))
    if epsilon is None:
        return fit(build_classifier(recipe, classes), data, HardLabels(), recipe, stage="plain").model.eval(), None
    shape = tuple(data.x.shape[1:])
    context = MethodContext(nn.Identity(), recipe, recipe, 1.0, 1.0, classes, shape, (), 1, RealData(data, None),
                            recipe.seed)
    config = DPConfig(epsilon=epsilon, delta=delta, epochs=recipe.epochs, batch_size=recipe.batch_size)
    result = DPSGD(config).train(context, out, lambda _: None)
    return result.model.eval(), float(result.metrics["epsilon"])


def logits(model: nn.Module, data: TensorData) -> np.ndarray:
    """(1, n, k): one query view."""
    with torch.no_grad():
        device = next(model.parameters()).device
        return model(data.x.to(device)).float().cpu().numpy()[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="dataset spec (default: the built-in digits)")
    parser.add_argument("--epsilons", default="none,8", help="comma-separated ε; none: trained without DP")
    parser.add_argument("--canaries", type=int, default=200, help="m: canaries from the non-member pool")
    parser.add_argument("--shadows", type=int, default=4, help="shadows of the shadow-based audit")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of every run")
    parser.add_argument("--delta", type=float, default=DEFAULT_DELTA, help="δ of the guarantee and the bounds")
    parser.add_argument("--mislabel", action="store_true",
                        help="give every canary a random wrong label (the audits' usual stronger canaries)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # 1. data: members, a canary pool from the non-members, a reference population from the test split
    spec = parse_dataset_spec(args.dataset)
    data = DataContext.open(spec)
    config, _ = preset_config(spec, DataProfile.of(data.dataset), "standard")
    recipe = replace(config.distill.student, epochs=args.epochs, min_steps=0, max_steps=None, patience=None,
                     patience_share=None, augment=(), weight_decay=0.0, amp=False, seed=args.seed)
    size, classes = recipe.image_size, data.num_classes
    members = data.tensors("members", size)
    pool = data.tensors("nonmembers", size)
    canaries = pool.rows(torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))
                         [:args.canaries])
    if args.mislabel:  # a wrong label: the model can only fit it by memorising that example
        shift = torch.randint(1, classes, (len(canaries),), generator=torch.Generator().manual_seed(args.seed))
        canaries = TensorData(canaries.x, (canaries.y + shift) % classes)
    reference = data.tensors("test", size).rows(range(min(200, len(data.tensors("test", size)))))
    included = draw_canaries(len(canaries), args.seed)
    shadow_in = assign_shadows(len(canaries), args.shadows, seed=args.seed + 1)
    out = Path(tempfile.mkdtemp(prefix="one-run-"))
    print(f"{spec} · {len(members)} members · {len(canaries)} canaries ({int(included.sum())} in) · "
          f"{args.shadows} shadows · {args.epochs} epochs · δ = {args.delta:g}"
          + (" · mislabelled canaries" if args.mislabel else "") + "\n")
    print("| training | claimed ε (guarantee) | one-run ε (loss) | ROC ε (loss) | one-run ε (LiRA) | ROC ε (LiRA) "
          "| target s | shadows s |")
    print("|---|---|---|---|---|---|---|---|")
    for text in args.epsilons.split(","):
        epsilon = None if text.strip() == "none" else float(text)
        # 2. the target run; the no-shadow bounds from its canary losses
        started = time.monotonic()
        target, spent = train(members, canaries, included, recipe, classes, epsilon, args.delta, out / f"t{text}")
        target_s = time.monotonic() - started
        loss = canary_scores(target, canaries)
        # 3. the shadows, each on its own half of the canaries; LiRA on the target's canaries
        started = time.monotonic()
        shadows = [train(members, canaries, inside, replace(recipe, seed=args.seed + 1 + i), classes, epsilon,
                         args.delta, out / f"s{text}-{i}")[0] for i, inside in enumerate(shadow_in)]
        shadows_s = time.monotonic() - started
        inputs = AttackInputs(canaries.y.numpy(), logits(target, canaries),
                              np.stack([logits(s, canaries) for s in shadows]), shadow_in, reference.y.numpy(),
                              logits(target, reference), np.stack([logits(s, reference) for s in shadows]))
        lira = run_attack("lira", inputs, {"fixed_variance": True})
        figures = [one_run_epsilon(loss, included, args.delta).epsilon, empirical_epsilon(loss, included, args.delta),
                   one_run_epsilon(lira, included, args.delta).epsilon, empirical_epsilon(lira, included, args.delta)]
        claim = "none" if spent is None else f"{spent:.2f}"
        print(f"| {'no DP' if epsilon is None else f'DP-SGD ε={epsilon:g}'} | {claim} | "
              + " | ".join(f"{f:.2f}" for f in figures) + f" | {target_s:.0f} | {shadows_s:.0f} |")


if __name__ == "__main__":
    main()
