"""The formal side of privacy: DP-SGD budgets, their accounting, and a ledger of ε spent per dataset.

Everything here asks Opacus' accountants (RDP, PRV, GDP); nothing is a hand-written bound.
:func:`calibrate` picks the Gaussian noise multiplier that meets a target (ε, δ) over the planned
steps (``opacus.accountants.utils.get_noise_multiplier``) and refuses a budget that cannot be met;
:func:`spent` composes trained parts — each ``(noise multiplier, sampling rate, steps)`` — through one
accountant's history, so that ε of a generator and of a DP teacher compose as the accountant says
(Mironov 2017; Gopi et al. 2021), not by adding worst cases.

The ledger (``<project>/privacy_ledger.json``) is what a data owner reads: for each dataset
fingerprint, the ε every DP training on it spent and an optional budget. Across runs ε is summed (basic
composition: each run is an independent release of the same data, so (Σε, Σδ) is a valid, conservative
total; an accountant composition across runs would need every run's δ to be equal).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("prv", "rdp", "gdp")
MAX_NOISE_MULTIPLIER = 50.0  # above this the model learns nothing: refuse instead of training noise
LEDGER_FILE = "privacy_ledger.json"


class BudgetError(ValueError):
    """The (ε, δ) budget cannot be met with the planned steps and sampling rate."""


@dataclass(frozen=True)
class DPPart:
    """One trained part under DP-SGD, as the accountant sees it, and what it spent."""

    part: str  # "generator", "teacher"
    epsilon: float  # ε spent, from the accountant (at ``delta``)
    delta: float
    accountant: str  # prv | rdp | gdp
    noise_multiplier: float  # σ: Gaussian noise std / clipping bound
    sample_rate: float  # Poisson sampling rate q = expected batch / N
    steps: int  # noisy optimiser steps taken
    max_grad_norm: float  # per-example clipping bound
    target_epsilon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_delta(n: int) -> float:
    """δ < 1/N: 1 / (10 N), so that releasing one whole record is unlikely (Dwork & Roth 2014, sec. 2.3)."""
    if n < 1:
        raise ValueError("default_delta needs at least one training example")
    return 1.0 / (10 * n)


def check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; valid: {', '.join(ACCOUNTANTS)}")
    return name


def calibrate(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp",
              max_noise: float = MAX_NOISE_MULTIPLIER) -> float:
    """The noise multiplier σ that keeps ``steps`` Poisson-sampled steps at rate ``sample_rate`` within
    (``epsilon``, ``delta``), from Opacus' binary search; :class:`BudgetError` when none below
    ``max_noise`` does (the run would train on noise: fewer steps, a smaller batch or a larger ε)."""
    from opacus.accountants.utils import get_noise_multiplier

    check_accountant(accountant)
    if not epsilon > 0 or not 0 < delta < 1:
        raise BudgetError(f"need ε > 0 and 0 < δ < 1, got ε={epsilon}, δ={delta}")
    if not 0 < sample_rate <= 1 or steps < 1:
        raise BudgetError(f"need 0 < sampling rate <= 1 and steps >= 1, got {sample_rate}, {steps}")
    # one accountant call first: even the largest noise allowed overspends -> refuse without a search
    at_max = spent([(max_noise, sample_rate, steps)], delta, accountant)
    if at_max > epsilon:
        raise BudgetError(_refusal(epsilon, delta, sample_rate, steps, f"even noise multiplier {max_noise:g} spends "
                                                                       f"ε={at_max:.3g}"))
    try:
        sigma = float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                           steps=steps, accountant=accountant))
    except (ValueError, RuntimeError, OverflowError) as err:
        raise BudgetError(_refusal(epsilon, delta, sample_rate, steps, f"the accountant found no noise ({err})")) from None
    if not math.isfinite(sigma) or sigma > max_noise:
        raise BudgetError(_refusal(epsilon, delta, sample_rate, steps, f"it needs noise multiplier {sigma:.3g} "
                                                                       f"> {max_noise:g}"))
    return sigma


def _refusal(epsilon: float, delta: float, sample_rate: float, steps: int, why: str) -> str:
    return (f"budget ε={epsilon:g}, δ={delta:.2g} cannot be met with {steps} steps at sampling rate {sample_rate:.3g}: "
            f"{why}; raise ε, or lower the steps or the batch size")


def spent(parts: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of the composition of ``parts`` = ``(noise multiplier, sample rate, steps)``, each a
    run of the subsampled Gaussian mechanism on the same data, composed by one Opacus accountant."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=check_accountant(accountant))
    acc.history = [(float(s), float(q), int(n)) for s, q, n in parts if n > 0]
    if not acc.history:
        return 0.0
    return float(acc.get_epsilon(delta=delta))


def composed(parts: Sequence[DPPart], delta: float | None = None, accountant: str | None = None) -> dict[str, Any]:
    """The student's total: every part composed by the accountant at the largest δ of the parts (or
    ``delta``); a single part is returned as recorded."""
    if not parts:
        raise ValueError("nothing to compose")
    delta = delta if delta is not None else max(p.delta for p in parts)
    accountant = accountant or parts[0].accountant
    if len(parts) == 1 and parts[0].delta == delta and parts[0].accountant == accountant:
        epsilon = parts[0].epsilon
    else:
        epsilon = spent([(p.noise_multiplier, p.sample_rate, p.steps) for p in parts], delta, accountant)
    return {"epsilon": epsilon, "delta": delta, "accountant": accountant, "parts": [p.part for p in parts]}


# -- the ledger ---------------------------------------------------------------------------------------------------
def read_ledger(root: Path) -> dict[str, Any]:
    path = Path(root) / LEDGER_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _write_ledger(root: Path, ledger: dict[str, Any]) -> None:
    path = Path(root) / LEDGER_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ledger-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(ledger, handle, indent=2)
    os.replace(tmp, path)


def record_spend(root: Path, fingerprint: str, run_id: str, part: DPPart, dataset: str = "") -> dict[str, Any]:
    """Add (or replace) what run ``run_id`` spent on the dataset ``fingerprint``; returns its entry."""
    ledger = read_ledger(root)
    entry = ledger.setdefault(fingerprint, {"dataset": dataset, "budget": None, "spends": []})
    entry["spends"] = [s for s in entry["spends"] if (s["run"], s["part"]) != (run_id, part.part)]
    entry["spends"].append({"run": run_id, **part.to_dict()})
    _write_ledger(root, ledger)
    warn_if_over(fingerprint, entry)
    return entry


def set_budget(root: Path, fingerprint: str, budget: float | None, dataset: str = "") -> None:
    """The ε budget of a dataset (None: no budget); a warning when spending passes it."""
    if budget is not None and not budget > 0:
        raise ValueError(f"the ε budget must be positive, got {budget}")
    ledger = read_ledger(root)
    entry = ledger.setdefault(fingerprint, {"dataset": dataset, "budget": None, "spends": []})
    entry["budget"] = budget
    _write_ledger(root, ledger)


def ledger_summary(root: Path, fingerprint: str) -> dict[str, Any] | None:
    """A dataset's total ε (summed over runs), its budget and whether it is over; None without spends."""
    entry = read_ledger(root).get(fingerprint)
    if not entry:
        return None
    return _summary(fingerprint, entry)


def _summary(fingerprint: str, entry: dict[str, Any]) -> dict[str, Any]:
    total = float(sum(s["epsilon"] for s in entry["spends"]))
    budget = entry.get("budget")
    return {"fingerprint": fingerprint, "dataset": entry.get("dataset", ""), "total_epsilon": total,
            "total_delta": float(sum(s["delta"] for s in entry["spends"])),
            "runs": sorted({s["run"] for s in entry["spends"]}), "spends": entry["spends"], "budget": budget,
            "over_budget": budget is not None and total > budget}


def warn_if_over(fingerprint: str, entry: dict[str, Any]) -> str | None:
    """Log (and return) the warning when the dataset's ε spent passes its budget."""
    summary = _summary(fingerprint, entry)
    if not summary["over_budget"]:
        return None
    message = budget_warning(summary)
    logger.warning(message)
    return message


def budget_warning(summary: dict[str, Any]) -> str:
    return (f"privacy budget exceeded on dataset {summary['dataset'] or summary['fingerprint'][:12]}: "
            f"ε spent {summary['total_epsilon']:.3g} over {len(summary['runs'])} run(s) > budget {summary['budget']:g}")
