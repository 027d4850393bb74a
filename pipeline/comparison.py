"""``compare-methods``: every way to a private student on one plane, as a few ordinary experiment runs.

The first run trains one teacher and every transfer method the config names (GKD, AM, BSS, GKD+BSS, and
DP-SGD at any ε not compared below) and audits them against the same shadows. Then, for each ε of the DP
comparison (DPDM's claim: a classifier trained on a DP generator's images is on par with a DP-SGD
classifier at the same ε, Dockhorn et al. 2023), one **DP run**: the generator trained with DP-SGD at
(ε, δ), prompted with class names only, the student labelled by the generated classes, and beside it, in
the same run, the DP-SGD classifier at the same (ε, δ), so that both are audited against the same shadows
and the same population. Every run is an experiment like any other (the Trade-offs page, ``report`` and
``runs show`` read them as such).

    plan = plan_comparison(config, (1.0, 4.0, 10.0), members=644)
    [p.label for p in plan]   # ['methods', 'dp generator ε=1', 'dp generator ε=4', 'dp generator ε=10']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .experiment import ExperimentConfig
from .privacy.accounting import default_delta

logger = logging.getLogger(__name__)

DP_GENERATOR_EPSILONS = (1.0, 4.0, 10.0)  # the ε the DP generator is compared at by default


@dataclass(frozen=True)
class PlannedRun:
    """One experiment run of a comparison."""

    label: str  # "methods", or "dp generator ε=4"
    config: ExperimentConfig
    epsilon: float | None = None  # the DP run's target ε (None: the methods run, without a DP generator)


def parse_epsilons(text: str | None) -> tuple[float, ...]:
    """``"1,4,10"`` -> (1.0, 4.0, 10.0); empty or ``none`` -> () (no DP run). Refuses a value that is not a
    positive finite number, and a repeated one."""
    if text is None or text.strip().lower() in ("", "none"):
        return ()
    values = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"ε list {text!r}: {item!r} is not a number (e.g. 1,4,10; none: no DP run)") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"ε list {text!r}: every ε must be a positive number, got {item!r}")
        values.append(value)
    if len(set(values)) != len(values):
        raise ValueError(f"ε list {text!r} names an ε twice")
    return tuple(values)


def plan_comparison(config: ExperimentConfig, dp_epsilons: Sequence[float], members: int) -> list[PlannedRun]:
    """The runs of a comparison: ``config`` (a run without DP, with its methods), then one DP run per ε of
    ``dp_epsilons`` (at ``config.delta`` or δ = 1 / (10 · ``members``)). A ``dp-sgd`` method of ``config`` at an
    ε of that list moves into the DP run of that ε, at the run's δ; one at another ε stays in the first run."""
    # 1. check inputs
    if config.private:
        raise ValueError("compare-methods plans its DP runs itself: start from a config without privacy='dp'")
    epsilons = tuple(float(e) for e in dp_epsilons)
    delta = config.delta if config.delta is not None else default_delta(members)
    # 2. the methods run: every method except the DP-SGD classifiers compared in a DP run
    moved = {e: [(n, o) for n, o in config.methods if n == "dp-sgd" and float(o.get("epsilon", -1)) == e]
             for e in epsilons}
    kept = tuple((n, o) for n, o in config.methods if not any((n, o) in pairs for pairs in moved.values()))
    plan = [PlannedRun("methods", replace(config, methods=kept))]
    # 3. one DP run per ε: DP generator, class prompts and class labels, the DP-SGD classifier beside it
    for epsilon in epsilons:
        methods = tuple(("dp-sgd", {**options, "delta": delta}) for _, options in moved[epsilon])
        dp = replace(config, privacy="dp", epsilon=epsilon, delta=delta, dp_labels="class", teacher_epsilon=None,
                     store=None, store_version=None, copy_gate=0, methods=methods)
        plan.append(PlannedRun(f"dp generator ε={epsilon:g}", dp, epsilon))
    return plan


def plan_summary(plan: Sequence[PlannedRun]) -> list[dict[str, Any]]:
    """One line per planned run: its label, ε and δ, and the students it trains (for the CLI's plan)."""
    return [{"run": p.label, "epsilon": p.config.epsilon, "delta": p.config.delta,
             "students": ["dp-generator student" if p.config.private else "gkd"]
             + [f"{n} ε={o['epsilon']:g}" if n == "dp-sgd" else n for n, o in p.config.methods]} for p in plan]
