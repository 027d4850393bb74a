"""The one-run privacy audit of Steinke, Nasr & Jagielski 2023 ("Privacy Auditing with One (1) Training
Run", NeurIPS 2023): m canaries, each put into the training set independently with probability 1/2; after
one training run the auditor guesses "in" for the k+ highest-scoring canaries and "out" for the k− lowest
(abstaining on the rest), and the number of correct guesses bounds ε from below.

Under (ε, δ)-DP the correct guesses among r are stochastically dominated by Binomial(r, e^ε / (1 + e^ε))
plus a δ term (the paper's Theorem 3.1 / Proposition 5.7); the bound is the largest ε whose tail
probability of the observed count is below ``alpha`` (0.05: 95 % confidence). An attack's lower bound,
never a guarantee. Pure NumPy/SciPy: the canaries' training and scoring are the caller's
(``pipeline.methods.dp.one_run_audit`` for the DP-SGD classifier).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)

# (k+, k−) guess counts tried, as shares of the m canaries: the confidence is split over them (Bonferroni)
GUESS_SHARES = ((0.05, 0.0), (0.1, 0.0), (0.2, 0.0), (0.05, 0.05), (0.1, 0.1), (0.2, 0.2))


@dataclass(frozen=True)
class OneRunBound:
    """The one-run audit's figure and the guesses it comes from."""

    epsilon: float  # lower bound on ε at confidence 1 − alpha (0: no evidence against ε = 0)
    canaries: int  # m
    guesses: int  # r = k+ + k−
    correct: int  # v
    k_pos: int  # "in" guesses on the highest scores
    k_neg: int  # "out" guesses on the lowest scores
    delta: float
    alpha: float  # 1 − confidence, after the split over the guess counts tried


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P[at least ``v`` of ``r`` guesses correct] under (ε, δ)-DP, m canaries included w.p. 1/2.

    Adapted from the paper's reference code (Steinke et al. 2023, Appendix D, ``p_value_DP_audit``; as
    reproduced in ubc-systopia/panoramia-privacy-measurement ``O1_Steinke_Code/o1_audit.py``): the
    binomial tail of ε-randomised response plus 2 m δ · max_i P[v > W >= v − i] / i, W ~ Bin(r, q).
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries; got {v}, {r}, {m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1]; got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    if delta > 0 and v > 0:
        # the reference code's loop over i = 1..v: running sums of P[W = v − i] over i, each divided by i
        i = np.arange(1, v + 1)
        tail += float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i)) * delta * 2 * m
    return min(tail, 1.0)


def epsilon_bound(m: int, r: int, v: int, delta: float = 0.0, alpha: float = 0.05) -> float:
    """The largest ε whose p-value of ``v`` correct out of ``r`` guesses stays below ``alpha`` (the
    reference code's ``get_eps_audit``: the p-value rises with ε; doubling, then bisection)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    if r == 0 or p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0  # p(low) < alpha <= p(high)
    while p_value(m, r, v, high, delta) < alpha:
        low, high = high, 2 * high
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) < alpha else (low, mid)
    return low


def guess_counts(scores: np.ndarray, is_member: np.ndarray, k_pos: int, k_neg: int) -> tuple[int, int]:
    """Guesses and correct guesses: "in" for the ``k_pos`` highest scores, "out" for the ``k_neg`` lowest.

    Args:
        scores: (m,) canary scores, higher = more likely included.
        is_member: (m,) bool, whether each canary was included.
    """
    scores, is_member = np.asarray(scores, dtype=np.float64), np.asarray(is_member, dtype=bool)
    if scores.shape != is_member.shape or scores.ndim != 1:
        raise ValueError(f"scores and is_member must be (m,) of one shape; got {scores.shape}, {is_member.shape}")
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > scores.size:
        raise ValueError(f"need k+ and k− >= 0 with k+ + k− <= m = {scores.size}; got {k_pos}, {k_neg}")
    order = np.argsort(-scores, kind="stable")
    correct = int(is_member[order[:k_pos]].sum()) + int((~is_member[order[scores.size - k_neg:]]).sum())
    return k_pos + k_neg, correct


def one_run_epsilon(scores: np.ndarray, is_member: np.ndarray, delta: float = 0.0, alpha: float = 0.05,
                    guesses: Sequence[tuple[int, int]] | None = None) -> OneRunBound:
    """The one-run lower bound on ε from canary scores: the best over the (k+, k−) guess counts tried,
    with ``alpha`` split evenly over them (Bonferroni), so the best is still a 1 − alpha bound.

    Args:
        scores: (m,) canary scores, higher = more likely included (e.g. minus the loss).
        is_member: (m,) bool, whether each canary was included (each w.p. 1/2, drawn before training).
        delta: the δ of the (ε, δ) pair bounded (the run's own; 0 for pure ε).
        alpha: 1 − confidence.
        guesses: (k+, k−) pairs; None: ``GUESS_SHARES`` of m.
    """
    m = int(np.size(scores))
    if m < 2:
        raise ValueError(f"need at least 2 canaries; got {m}")
    if guesses is None:
        guesses = sorted({(max(1, round(a * m)), round(b * m)) for a, b in GUESS_SHARES})
    split = alpha / len(guesses)
    best: OneRunBound | None = None
    for k_pos, k_neg in guesses:
        r, v = guess_counts(scores, is_member, k_pos, k_neg)
        bound = OneRunBound(epsilon_bound(m, r, v, delta, split), m, r, v, k_pos, k_neg, delta, split)
        if best is None or bound.epsilon > best.epsilon:
            best = bound
    assert best is not None
    return best


def draw_canaries(m: int, seed: int) -> np.ndarray:
    """Which of m canaries go into training: each independently with probability 1/2 (the paper's
    sampling; the theorem needs the independence). (m,) bool."""
    if m < 2:
        raise ValueError(f"need at least 2 canaries; got {m}")
    return np.random.default_rng(seed).random(m) < 0.5
