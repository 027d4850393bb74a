"""Membership-inference audit parts: attacks (``attacks/``: lira, rmia, loss, by name), their metrics
(ROC, TPR at FPR, AUC intervals, AOP, the empirical ε an attack's ROC implies), shadow models (``shadows``)
and the one-run audit of Steinke et al. 2023 (``one_run``: canaries, one training run, a bound on ε).

``from pipeline.privacy import lira_scores, rmia_scores`` gives the pure scoring functions; names are
imported lazily (SciPy is slow to import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "lira_scores": ".attacks.lira", "logit_scaled_confidence": ".attacks.lira",
    "rmia_scores": ".attacks.rmia", "loss_threshold_scores": ".attacks.loss",
    "ATTACKS": ".attacks", "AttackInputs": ".attacks", "run_attack": ".attacks", "attack_names": ".attacks",
    "attack_metrics": ".metrics", "aop": ".metrics", "roc_curve": ".metrics", "tpr_at_fpr": ".metrics",
    "empirical_epsilon": ".metrics", "clopper_pearson": ".metrics", "one_run_epsilon": ".one_run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'pipeline.privacy' has no attribute {name!r}")
