"""Membership-inference metrics: ROC, TPR at a fixed FPR, AUC with a bootstrap interval, TCKR's
Accuracy Over Privacy, and the empirical ε an attack's ROC implies (a lower bound, never a guarantee).

Pure NumPy/SciPy functions on arrays (no I/O, no torch), in the manner of TF-Privacy's
``advanced_mia.py``. Convention throughout: a *higher* membership score means "more likely a member".
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)

DEFAULT_DELTA = 1e-5  # δ of the empirical-ε bound for a model without a DP guarantee (one of its own)


# ---------------------------------------------------------------------------------------------
# ROC metrics
# ---------------------------------------------------------------------------------------------


def _check_scores(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (n,); got {scores.shape}")
    if is_member.shape != scores.shape:
        raise ValueError(f"is_member shape {is_member.shape} must equal scores shape {scores.shape}")
    if is_member.dtype != np.bool_:
        raise ValueError(f"is_member must be a bool array; got dtype {is_member.dtype}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    n_pos = int(is_member.sum())
    if n_pos == 0 or n_pos == is_member.size:
        raise ValueError(f"need both members and non-members; got {n_pos} members of {is_member.size}")
    return scores, is_member


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve of the rule "member iff score >= threshold".

    One point per distinct score (tied scores move together, giving a diagonal segment), plus a
    first point (0, 0) at threshold +inf; the last point is (1, 1) at the smallest score.

    Args:
        scores: (n,) finite membership scores, higher = more likely member.
        is_member: (n,) bool ground truth, with at least one member and one non-member.

    Returns:
        fpr (p,), tpr (p,), thresholds (p,), with p = distinct scores + 1; fpr and tpr
        non-decreasing, thresholds decreasing.
    """
    scores, is_member = _check_scores(scores, is_member)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], is_member[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = last_of_tie + 1 - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve by the trapezoid rule.

    On the exact curve from :func:`roc_curve` this equals the Mann-Whitney probability
    P(score_member > score_nonmember) + 1/2 P(tie).

    Args:
        fpr: (p,) non-decreasing false-positive rates.
        tpr: (p,) true-positive rates.
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.ndim != 1:
        raise ValueError(f"fpr and tpr must be 1-D of equal length; got {fpr.shape}, {tpr.shape}")
    if np.any(np.diff(fpr) < 0):
        raise ValueError("fpr must be non-decreasing")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """AUC of the exact ROC curve (Mann-Whitney, ties counted 1/2).

    Args:
        scores: (n,) membership scores.
        is_member: (n,) bool ground truth.
    """
    fpr, tpr, _ = roc_curve(scores, is_member)
    return auc(fpr, tpr)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR among ROC points with FPR <= ``target`` (the LiRA paper's convention).

    Args:
        fpr: (p,) false-positive rates of the ROC points.
        tpr: (p,) matching true-positive rates.
        target: the FPR budget, e.g. 0.001 for "TPR at 0.1% FPR".
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.ndim != 1:
        raise ValueError(f"fpr and tpr must be 1-D of equal length; got {fpr.shape}, {tpr.shape}")
    ok = fpr <= target
    if not ok.any():
        raise ValueError(f"no ROC point has FPR <= {target}; a full curve starts at (0, 0)")
    return float(tpr[ok].max())


def balanced_attack_accuracy(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Best balanced accuracy over thresholds: max of 1 - (FPR + (1 - TPR)) / 2.

    Args:
        fpr: (p,) false-positive rates of the ROC points.
        tpr: (p,) matching true-positive rates.
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.ndim != 1 or fpr.size == 0:
        raise ValueError(f"fpr and tpr must be 1-D of equal, non-zero length; got {fpr.shape}, {tpr.shape}")
    return float(np.max(1.0 - (fpr + (1.0 - tpr)) / 2.0))


def bootstrap_auc_ci(scores: np.ndarray, is_member: np.ndarray, n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for the AUC.

    Members and non-members are resampled separately (stratified), keeping both group sizes, so
    every replicate has both classes. Each replicate's AUC is the Mann-Whitney statistic from
    average ranks (ties 1/2), the same value :func:`roc_auc` gives.

    Args:
        scores: (n,) membership scores.
        is_member: (n,) bool ground truth.
        n_boot: number of bootstrap replicates (>= 1).
        alpha: 1 - confidence level, e.g. 0.05 for a 95% interval.
        seed: seed of the resampling generator.

    Returns:
        (low, high) the alpha/2 and 1 - alpha/2 quantiles of the replicate AUCs.
    """
    scores, is_member = _check_scores(scores, is_member)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    rng = np.random.default_rng(seed)
    pos, neg = scores[is_member], scores[~is_member]
    n_pos, n_neg = pos.size, neg.size
    chunk = max(1, 2_000_000 // scores.size)  # bound memory of the (chunk, n) rank matrix
    aucs = []
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        sample = np.concatenate([pos[rng.integers(0, n_pos, size=(c, n_pos))],
                                 neg[rng.integers(0, n_neg, size=(c, n_neg))]], axis=1)
        ranks = stats.rankdata(sample, axis=1)
        aucs.append((ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    low, high = np.quantile(np.concatenate(aucs), [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def clopper_pearson(k: np.ndarray, n: np.ndarray | int, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) two-sided ``1 - alpha`` intervals for binomial proportions k / n.

    The Beta-quantile form of ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``,
    vectorised over thresholds: low = Beta(alpha/2; k, n-k+1) (0 at k = 0), high =
    Beta(1-alpha/2; k+1, n-k) (1 at k = n).

    Args:
        k: (p,) successes, 0 <= k <= n.
        n: trials, scalar or (p,).
        alpha: 1 - confidence, e.g. 0.05 for 95%.

    Returns:
        low (p,), high (p,).
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    if np.any(k < 0) or np.any(k > n) or np.any(n < 1):
        raise ValueError("need 0 <= k <= n and n >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    with np.errstate(invalid="ignore"):  # the k = 0 / k = n edges are set below
        low = np.where(k > 0, stats.beta.ppf(alpha / 2.0, k, n - k + 1), 0.0)
        high = np.where(k < n, stats.beta.ppf(1.0 - alpha / 2.0, k + 1, n - k), 1.0)
    return low, high


def empirical_epsilon(scores: np.ndarray, is_member: np.ndarray, delta: float = DEFAULT_DELTA,
                      alpha: float = 0.05) -> float:
    """The lower bound on ε that an attack's ROC implies (Jagielski et al. 2020, Nasr et al. 2021).

    An (ε, δ)-DP training run bounds every membership test: TPR <= e^ε FPR + δ and, swapping the
    roles, TNR <= e^ε FNR + δ. At every threshold of the rule "member iff score >= t", with the
    Clopper-Pearson ``1 - alpha`` bounds TPR_lo and FPR_hi, so

        ε >= max( log((TPR_lo - δ) / FPR_hi), log((1 - FPR_hi - δ) / (1 - TPR_lo)) ),

    and the bound is the largest over thresholds (0 when no threshold beats chance). An attack's
    lower bound on the ε the training run spends, never a guarantee: a weak attack gives a small
    figure whatever the model leaks. The max over thresholds is picked on the same scores (as the
    papers' threshold sweeps do), so the confidence is per threshold, not simultaneous.

    Args:
        scores: (n,) membership scores, higher = more likely member.
        is_member: (n,) bool ground truth.
        delta: the δ of the (ε, δ) pair bounded (the run's own δ when it is DP).
        alpha: 1 - confidence of the Clopper-Pearson intervals (0.05: 95%).
    """
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must lie in [0, 1); got {delta}")
    scores, is_member = _check_scores(scores, is_member)
    fpr, tpr, _ = roc_curve(scores, is_member)
    n_pos, n_neg = int(is_member.sum()), int((~is_member).sum())
    tpr_lo, _ = clopper_pearson(np.rint(tpr * n_pos), n_pos, alpha)
    _, fpr_hi = clopper_pearson(np.rint(fpr * n_neg), n_neg, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):  # numerators <= 0 give no bound
        forward = np.log((tpr_lo - delta) / fpr_hi)
        backward = np.log((1.0 - fpr_hi - delta) / (1.0 - tpr_lo))
    bounds = np.concatenate([forward, backward])
    bounds = bounds[np.isfinite(bounds)]
    return float(max(0.0, bounds.max())) if bounds.size else 0.0


def aop(accuracy: float, auc: float) -> float:
    """TCKR's Accuracy Over Privacy: accuracy / (2 * AUC)^2.

    An AUC of 0.5 (no better than guessing) leaves the accuracy unchanged; a leakier model is
    penalised quadratically. E.g. accuracy 0.9752, AUC 0.5389 -> 0.8395.

    Args:
        accuracy: classifier test accuracy in [0, 1].
        auc: membership-inference AUC in (0, 1].
    """
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1]; got {accuracy}")
    if not 0.0 < auc <= 1.0:
        raise ValueError(f"auc must lie in (0, 1]; got {auc}")
    return float(accuracy / (2.0 * auc) ** 2)


def _downsample_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 500,
                    exact_below: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Thin a ROC curve for plotting/JSON while keeping its low-FPR end exact.

    Steps: 1. drop interior points of vertical/horizontal runs (lossless); 2. if still too
    many, keep every point with FPR <= ``exact_below`` (when they fit in a fifth of the budget),
    and, for each FPR on a log- and a linearly-spaced grid plus the anchors 1e-5 ... 1e-1, the
    last point at or below it and the next one, so ``tpr_at_fpr`` of the thinned curve at any
    grid value (hence at 0.1% and 1%) equals the exact one.

    Args:
        fpr, tpr: (p,) exact ROC curve.

    Returns:
        fpr (q,), tpr (q,) with q <= about ``max_points``, first and last points kept.
    """
    # 1. lossless: drop interior points of vertical or horizontal runs (diagonal tie segments
    #    are kept whole: their interior points matter to tpr_at_fpr)
    if fpr.size > 2:
        vertical = (fpr[1:-1] == fpr[:-2]) & (fpr[1:-1] == fpr[2:])
        horizontal = (tpr[1:-1] == tpr[:-2]) & (tpr[1:-1] == tpr[2:])
        keep = np.r_[True, ~(vertical | horizontal), True]
        fpr, tpr = fpr[keep], tpr[keep]
    if fpr.size <= max_points:
        return fpr, tpr
    # 2. lossy: exact low-FPR end plus grid-anchored points
    chosen = [np.array([0, fpr.size - 1])]
    low = np.flatnonzero(fpr <= exact_below)
    if low.size <= max_points // 5:
        chosen.append(low)
    n_grid = max(2, (max_points - max_points // 5) // 4)
    smallest = fpr[fpr > 0].min()
    anchors = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # the FPRs reports quote TPR at
    grid = np.r_[np.logspace(np.log10(smallest), 0.0, n_grid), np.linspace(0.0, 1.0, n_grid), anchors]
    at = np.searchsorted(fpr, grid, side="right") - 1
    chosen += [at, np.minimum(at + 1, fpr.size - 1)]
    idx = np.unique(np.concatenate(chosen))
    return fpr[idx], tpr[idx]


def attack_metrics(scores: np.ndarray, is_member: np.ndarray, accuracy: float | None = None,
                   n_boot: int = 1000, seed: int = 0, max_roc_points: int = 500,
                   delta: float = DEFAULT_DELTA) -> dict[str, Any]:
    """Every figure a privacy report needs, as plain JSON-serialisable Python values.

    With N non-members the smallest false-positive rate a threshold can have above zero is 1/N
    (``fpr_floor``): a "TPR at 0.1 % FPR" with fewer than 1,000 non-members would really be the TPR
    at zero false positives, so a TPR at an FPR below the floor is reported as None (not measurable),
    never as a number.

    Args:
        scores: (n,) membership scores, higher = more likely member.
        is_member: (n,) bool ground truth.
        accuracy: test accuracy of the attacked model; adds ``aop`` when given.
        n_boot: bootstrap replicates for ``auc_ci95``; 0 skips it (value None).
        seed: seed of the bootstrap.
        max_roc_points: about how many points ``roc`` keeps (low-FPR end kept exact).
        delta: δ of the empirical-ε bound (the model's own when it is DP; else ``DEFAULT_DELTA``).

    Returns:
        dict with ``auc``, ``auc_ci95`` [low, high] (or None), ``tpr_at_0.1pct_fpr`` and
        ``tpr_at_1pct_fpr`` (None below ``fpr_floor``), ``fpr_floor``, ``balanced_accuracy``,
        ``n_members``, ``n_nonmembers``, ``empirical_epsilon`` (the attack's lower bound on ε, at
        ``empirical_epsilon_delta``), ``roc`` {"fpr": [...], "tpr": [...]}, and ``aop`` when ``accuracy``
        is given.
    """
    fpr, tpr, _ = roc_curve(scores, is_member)
    area = auc(fpr, tpr)
    n_members = int(np.sum(is_member))
    n_nonmembers = int(np.size(is_member) - n_members)
    floor = 1.0 / n_nonmembers
    ci = bootstrap_auc_ci(scores, is_member, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    roc_fpr, roc_tpr = _downsample_roc(fpr, tpr, max_points=max_roc_points)
    out: dict[str, Any] = {
        "auc": area,
        "auc_ci95": [ci[0], ci[1]] if ci is not None else None,
        "tpr_at_0.1pct_fpr": tpr_at_fpr(fpr, tpr, 0.001) if 0.001 >= floor else None,
        "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01) if 0.01 >= floor else None,
        "fpr_floor": floor,
        "balanced_accuracy": balanced_attack_accuracy(fpr, tpr),
        "n_members": n_members,
        "n_nonmembers": n_nonmembers,
        "empirical_epsilon": empirical_epsilon(scores, is_member, delta),
        "empirical_epsilon_delta": delta,
        "roc": {"fpr": [float(v) for v in roc_fpr], "tpr": [float(v) for v in roc_tpr]},
    }
    if accuracy is not None:
        out["aop"] = aop(accuracy, area)
    return out
