"""RMIA, the relative membership-inference attack (Zarifzadeh et al. 2024, "Low-Cost High-Power
Membership Inference Attacks", arXiv 2312.03262).

RMIA compares how much more likely the audited model makes an example ``x`` than the reference
(shadow) models do, with the same ratio for population samples ``z`` the model never saw: ``x`` is
scored by the share of ``z`` it dominates. It stays strong with very few reference models (one or
two), which is what makes the pipeline-mode audit (every reference reruns the whole pipeline)
affordable.
"""

from __future__ import annotations

import numpy as np

from . import ATTACKS, AttackInputs, softmax_true_class

_CHUNK = 4_000_000  # pairwise (x, z) comparisons held in memory at once


def rmia_scores(target_x: np.ndarray, ref_x: np.ndarray, target_z: np.ndarray, ref_z: np.ndarray,
                ref_x_in: np.ndarray | None = None, a: float = 0.3, gamma: float = 1.0) -> np.ndarray:
    """RMIA membership scores (paper Sec. 3, Eqs. 3-4).

    Args:
        target_x: (n,) the audited model's probability of the true label of each challenge example.
        ref_x: (m, n) the same from m reference models.
        target_z: (k,) the audited model's probability of the true label of k population samples.
        ref_z: (m, k) the same from the reference models.
        ref_x_in: (m, n) bool, which references trained on each challenge example (online), or None
            (offline: no reference trained on any x or z).
        a: offline only: the linear approximation of the unknown in-model probability,
            Pr(x) = ½[(1 + a)·mean_m ref_x + (1 − a)] (paper App. B.2.2); likewise Pr(z).
        gamma: an x dominates a z when LR(x, z) ≥ gamma.

    Online, Pr(x) is the mean over all m references (about half of them trained on x), likewise
    Pr(z); LR(x, z) = (target_x / Pr(x)) / (target_z / Pr(z)).

    Returns:
        (n,) float64 scores in [0, 1]: the share of z with LR(x, z) ≥ gamma; higher = more likely member.
    """
    target_x, ref_x = np.asarray(target_x, np.float64), np.asarray(ref_x, np.float64)
    target_z, ref_z = np.asarray(target_z, np.float64), np.asarray(ref_z, np.float64)
    if target_x.ndim != 1 or ref_x.ndim != 2 or ref_x.shape[1] != target_x.shape[0]:
        raise ValueError(f"target_x must be (n,) and ref_x (m, n); got {target_x.shape}, {ref_x.shape}")
    if target_z.ndim != 1 or ref_z.ndim != 2 or ref_z.shape != (ref_x.shape[0], target_z.shape[0]):
        raise ValueError(f"target_z must be (k,) and ref_z (m, k) with the same m as ref_x; "
                         f"got {target_z.shape}, {ref_z.shape}")
    if ref_x.shape[0] < 1 or target_z.size < 1:
        raise ValueError("RMIA needs at least one reference model and one population sample z")
    if ref_x_in is not None and np.shape(ref_x_in) != ref_x.shape:
        raise ValueError(f"ref_x_in must have shape {ref_x.shape}; got {np.shape(ref_x_in)}")
    for name, arr in (("target_x", target_x), ("ref_x", ref_x), ("target_z", target_z), ("ref_z", ref_z)):
        if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
            raise ValueError(f"{name} must hold probabilities in [0, 1]")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"a must lie in [0, 1]; got {a}")
    # 1. the probability of x (and z) under models that were not conditioned on the target's data
    if ref_x_in is None:
        pr_x = 0.5 * ((1.0 + a) * ref_x.mean(0) + (1.0 - a))
        pr_z = 0.5 * ((1.0 + a) * ref_z.mean(0) + (1.0 - a))
    else:
        pr_x, pr_z = ref_x.mean(0), ref_z.mean(0)
    # 2. likelihood ratios of x and z, then the share of z that each x dominates
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_x = target_x / pr_x
        ratio_z = target_z / pr_z
    scores = np.empty(target_x.shape[0])
    step = max(1, _CHUNK // target_z.size)
    for start in range(0, target_x.shape[0], step):
        with np.errstate(divide="ignore", invalid="ignore"):
            lr = ratio_x[start:start + step, None] / ratio_z[None, :]
        scores[start:start + step] = np.mean(lr >= gamma, axis=1)  # NaN (0/0) compares False
    return scores


@ATTACKS.register("rmia", help="RMIA (Zarifzadeh et al. 2024): likelihood ratio against population samples; "
                               "strong with 1-8 reference models")
def rmia_attack(inputs: AttackInputs, a: float = 0.3, gamma: float = 1.0, temperature: float = 1.0) -> np.ndarray:
    """RMIA on the true-class softmax probability at ``temperature``, scored per view and averaged."""
    per_view = []
    for v in range(inputs.target.shape[0]):
        target_x = softmax_true_class(inputs.target[v], inputs.labels, temperature)
        ref_x = softmax_true_class(inputs.shadows[:, v], inputs.labels, temperature)
        target_z = softmax_true_class(inputs.target_z[v], inputs.z_labels, temperature)
        ref_z = softmax_true_class(inputs.shadows_z[:, v], inputs.z_labels, temperature)
        per_view.append(rmia_scores(target_x, ref_x, target_z, ref_z,
                                    inputs.shadow_in if inputs.online else None, a=a, gamma=gamma))
    return np.mean(per_view, axis=0)
