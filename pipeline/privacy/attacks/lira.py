"""LiRA, the likelihood-ratio attack with shadow models (Carlini et al. 2022, arXiv 2112.03570).

Pure NumPy/SciPy maths; shapes use ``n`` challenge examples, ``m`` shadow models, ``a`` query views
(augmentations of one example) and ``k`` classes. A higher score means "more likely a member".
"""

from __future__ import annotations

import numpy as np
from scipy import special

from . import ATTACKS, AttackInputs

# Added as a lower bound on every standard deviation, only so that a shadow distribution with
# zero spread (all shadows gave the same score) does not divide by zero; it is far below any
# real spread of logit-scaled scores, so it never changes a score otherwise. The reference LiRA
# code adds 1e-30 to sigma for the same reason.
SIGMA_FLOOR = 1e-30

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)

# Below this many shadows one global variance is more reliable than per-example ones (Carlini et
# al. 2022, Sec. VI-A: "fixed variance" for small shadow counts, per-example from about 64 on).
FIXED_VARIANCE_BELOW = 64


# ---------------------------------------------------------------------------------------------


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence ``log p_y - log sum_{y' != y} p_y'`` (Carlini et al. 2022).

    Computed from the logits as ``z_y - logsumexp_{y' != y} z_y'`` (the softmax normaliser
    cancels), so it stays exact for huge logits where ``p_y`` rounds to 1.

    Args:
        logits: (..., k) float logits, k >= 2.
        labels: (...) int true class of each row, in [0, k).

    Returns:
        (...) float64 scores.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim < 1 or z.shape[-1] < 2:
        raise ValueError(f"logits must have shape (..., k) with k >= 2 classes; got {z.shape}")
    if y.shape != z.shape[:-1]:
        raise ValueError(f"labels shape {y.shape} must equal logits shape without the class axis "
                         f"{z.shape[:-1]}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype {y.dtype}")
    k = z.shape[-1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}); got range [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or infinity")
    z_true = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, y[..., None], -np.inf, axis=-1)
    return z_true - special.logsumexp(others, axis=-1)


def _log_normal_pdf(s: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """log N(s; mu, sigma), elementwise (sigma already floored)."""
    return -0.5 * ((s - mu) / sigma) ** 2 - np.log(sigma) - _LOG_SQRT_2PI


def _check_lira_inputs(target: np.ndarray, shadow: np.ndarray, shadow_in: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and lift to (n, a), (m, n, a), (m, n)."""
    target = np.asarray(target, dtype=np.float64)
    shadow = np.asarray(shadow, dtype=np.float64)
    shadow_in = np.asarray(shadow_in)
    if target.ndim not in (1, 2):
        raise ValueError(f"target must have shape (n,) or (n, a); got {target.shape}")
    if shadow.ndim != target.ndim + 1:
        raise ValueError(f"shadow must have shape (m, n) for target (n,), or (m, n, a) for target "
                         f"(n, a); got shadow {shadow.shape} with target {target.shape}")
    if shadow.shape[1:] != target.shape:
        raise ValueError(f"shadow shape {shadow.shape} does not match target shape {target.shape} "
                         "(expected (m, *target.shape))")
    if shadow_in.dtype != np.bool_:
        raise ValueError(f"shadow_in must be a bool array; got dtype {shadow_in.dtype}")
    if shadow_in.shape != shadow.shape[:2]:
        raise ValueError(f"shadow_in must have shape (m, n) = {shadow.shape[:2]}; got {shadow_in.shape}")
    if not (np.all(np.isfinite(target)) and np.all(np.isfinite(shadow))):
        raise ValueError("target or shadow scores contain NaN or infinity")
    if target.ndim == 1:
        target, shadow = target[:, None], shadow[..., None]
    return target, shadow, shadow_in


def _require_count(count: np.ndarray, which: str, why: str, least: int = 2) -> None:
    """Raise naming the examples with fewer than ``least`` shadows of one kind."""
    bad = np.flatnonzero(count < least)
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:20]) + (" ..." if bad.size > 20 else "")
        raise ValueError(f"{bad.size} example(s) have fewer than {least} {which} shadows ({why}): "
                         f"indices [{shown}]; train more shadow models or change the splits")


def _median_std(shadow: np.ndarray, mask: np.ndarray, fixed_variance: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """Median and population std (ddof=0) over the shadows selected by ``mask``.

    Args:
        shadow: (m, n, a) scores.
        mask: (m, n) bool, every column has >= 2 True entries.

    Returns:
        mu (n, a), sigma (n, a) or a broadcastable scalar when ``fixed_variance``.
    """
    vals = np.where(mask[:, :, None], shadow, np.nan)
    mu = np.nanmedian(vals, axis=0)
    if fixed_variance:
        # One global sigma: pool every selected score after removing its own example's median.
        sigma = np.nanstd(vals - mu[None])
    else:
        sigma = np.nanstd(vals, axis=0)
    return mu, np.maximum(sigma, SIGMA_FLOOR)


def lira_scores(target: np.ndarray, shadow: np.ndarray, shadow_in: np.ndarray,
                online: bool = True, fixed_variance: bool = False) -> np.ndarray:
    """Likelihood-ratio attack scores (LiRA, Carlini et al. 2022, arXiv 2112.03570, Alg. 1).

    For each example j and augmentation v, fit a Gaussian to the shadow scores of the shadows
    that trained on j ("in") and of those that did not ("out"): centre = median (robust, as in
    the reference code), spread = population standard deviation (``ddof=0``, as ``np.std``).

    * online:  mean_v [ log N(s_jv; mu_in, sigma_in) - log N(s_jv; mu_out, sigma_out) ]
    * offline: mean_v [ log Phi((s_jv - mu_out) / sigma_out) ], the paper's one-sided offline
      test, which needs out shadows only. ``Phi`` is the standard normal CDF, computed in log
      space by ``scipy.special.log_ndtr`` so far tails stay finite.

    ``fixed_variance=True`` replaces each per-example sigma_in (sigma_out) by one global value: the
    population std of all in (out) shadow scores, over examples and augmentations, after
    subtracting each example's own median for that augmentation (the paper's "fixed variance"
    variant, for few shadows; the reference code instead takes ``np.std`` of the raw scores).
    Every sigma is floored at ``SIGMA_FLOOR`` (1e-30) only to avoid dividing by zero.

    Args:
        target: (n,) or (n, a) scores of the attacked model, e.g. logit-scaled confidences.
        shadow: (m, n) or (m, n, a) the same scores from m shadow models.
        shadow_in: (m, n) bool, True where example j was in shadow i's training set.
        online: use in and out shadows (True) or out shadows only (False).
        fixed_variance: use one global sigma per side instead of a per-example one.

    Returns:
        (n,) float64 scores, higher = more likely a member.

    Raises:
        ValueError: on bad shapes, or an example with fewer than two out shadows (or, online,
            fewer than two in shadows; one of each is enough with ``fixed_variance``); the message
            lists the offending example indices.
    """
    target, shadow, shadow_in = _check_lira_inputs(target, shadow, shadow_in)
    n_in = shadow_in.sum(axis=0)
    n_out = shadow_in.shape[0] - n_in
    # a per-example Gaussian needs two scores for its spread; with one global variance, one score
    # per example (its median) is enough
    least = 1 if fixed_variance else 2
    _require_count(n_out, "out", "LiRA needs out-scores", least)
    mu_out, sigma_out = _median_std(shadow, ~shadow_in, fixed_variance)
    if online:
        _require_count(n_in, "in", "online LiRA needs in-scores; or use online=False", least)
        mu_in, sigma_in = _median_std(shadow, shadow_in, fixed_variance)
        per_view = _log_normal_pdf(target, mu_in, sigma_in) - _log_normal_pdf(target, mu_out, sigma_out)
    else:
        per_view = special.log_ndtr((target - mu_out) / sigma_out)
    return per_view.mean(axis=1)




@ATTACKS.register("lira", help="LiRA (Carlini et al. 2022): Gaussian likelihood ratio of logit-scaled confidences")
def lira_attack(inputs: AttackInputs, fixed_variance: bool | None = None) -> np.ndarray:
    """LiRA on the logit-scaled confidence of every view; ``fixed_variance=None`` uses one global
    variance below :data:`FIXED_VARIANCE_BELOW` shadows and per-example variances from there on."""
    m = inputs.shadows.shape[0]
    if fixed_variance is None:
        fixed_variance = m < FIXED_VARIANCE_BELOW
    target = np.stack([logit_scaled_confidence(v, inputs.labels) for v in inputs.target], -1)  # (n, a)
    labels = np.broadcast_to(inputs.labels, inputs.shadows.shape[:3])  # (m, a, n)
    shadow = np.moveaxis(logit_scaled_confidence(inputs.shadows, labels), 1, -1)  # (m, n, a)
    return lira_scores(target, shadow, inputs.shadow_in, online=inputs.online, fixed_variance=fixed_variance)
