"""Fidelity of a synthetic set, measured with the teacher as the feature extractor (no download).

- **class fidelity**: the share of synthetic images the teacher assigns to their intended class,
  overall and per class (is the generator class-faithful?);
- **Fréchet distance** between Gaussians fitted to the teacher's penultimate features of the real
  member images and of the synthetic ones (the FID formula, Heusel et al. 2017, with the teacher in
  place of Inception);
- **precision / recall / density / coverage** (Naeem et al. 2020) on the same features, from the
  authors' ``prdc`` package.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np
import torch
from scipy import linalg
from torch import nn

logger = logging.getLogger(__name__)

PRDC_MAX = 2000  # features per side for PRDC (pairwise distances are quadratic), a seeded sample
PRDC_K = 5  # nearest neighbours, the paper's default


def class_fidelity(predicted: np.ndarray, intended: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Share of images whose predicted class is their intended class.

    Args:
        predicted: (n,) the teacher's argmax class of each synthetic image.
        intended: (n,) the class each image was generated for.

    Returns:
        {"class_fidelity": float, "per_class": [float | None] * num_classes} (None: no image of that class).
    """
    predicted, intended = np.asarray(predicted), np.asarray(intended)
    if predicted.shape != intended.shape or predicted.ndim != 1 or predicted.size == 0:
        raise ValueError(f"predicted and intended must be equal non-empty (n,) arrays; got {predicted.shape}, "
                         f"{intended.shape}")
    hit = predicted == intended
    per_class = [float(hit[intended == c].mean()) if (intended == c).any() else None for c in range(num_classes)]
    return {"class_fidelity": float(hit.mean()), "per_class": per_class}


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||² + Tr(S_r + S_f - 2 (S_r S_f)^½) between Gaussians fitted to two feature sets.

    With at least as many images on each side as features, the matrix square root follows pytorch-fid's
    ``calculate_frechet_distance`` (a small diagonal offset when the product is near-singular, the
    imaginary round-off dropped). With fewer images than features on one side (a small run: a
    MobileNetV3 teacher has 1,024-1,280 features) only the trace is needed and it is computed exactly
    from that side's images (:func:`trace_sqrt_product`): a d x d ``sqrtm`` of a rank-deficient matrix
    took 20 s at d = 1,024 on a 2-core CPU.

    Args:
        real: (n, d) features; fake: (m, d) features; n, m >= 2.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1] or min(len(real), len(fake)) < 2:
        raise ValueError(f"need two (n, d) feature sets with the same d and n >= 2; got {real.shape}, {fake.shape}")
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    diff = mu_r - mu_f
    if min(len(real), len(fake)) < real.shape[1]:
        trace_sqrt = trace_sqrt_product(real, s_f) if len(real) <= len(fake) else trace_sqrt_product(fake, s_r)
        return float(max(0.0, diff @ diff + np.trace(s_r) + np.trace(s_f) - 2.0 * trace_sqrt))
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(s_r @ s_f)
            singular = not np.isfinite(covmean).all()
        except linalg.LinAlgWarning:  # e.g. features that never fire (ReLU) give a singular covariance
            singular = True
    if singular:
        offset = np.eye(s_r.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s_r + offset) @ (s_f + offset))
    covmean = np.real(covmean)
    return float(max(0.0, diff @ diff + np.trace(s_r) + np.trace(s_f) - 2.0 * np.trace(covmean)))


def trace_sqrt_product(x: np.ndarray, s_other: np.ndarray) -> float:
    """Tr((S_x S_o)^½) for S_x the sample covariance of ``x`` (n, d) and a covariance ``s_other`` (d, d),
    exactly, through an n x n eigenproblem.

    S_x = A Aᵀ with A = (x - mean)ᵀ / √(n - 1) (d x n). The non-zero eigenvalues of S_x S_o are those of
    the symmetric positive semi-definite Aᵀ S_o A (n x n), and Tr((S_x S_o)^½) is the sum of their square
    roots (round-off below zero clipped).
    """
    a = (x - x.mean(0)).T / np.sqrt(len(x) - 1)
    eigenvalues = np.linalg.eigvalsh(a.T @ s_other @ a)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def prdc(real: np.ndarray, fake: np.ndarray, nearest_k: int = PRDC_K, max_points: int = PRDC_MAX,
         seed: int = 0) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) via the ``prdc`` package, on
    seeded samples of at most ``max_points`` per side."""
    from prdc import compute_prdc

    rng = np.random.default_rng(seed)
    real = real[rng.permutation(len(real))[:max_points]] if len(real) > max_points else real
    fake = fake[rng.permutation(len(fake))[:max_points]] if len(fake) > max_points else fake
    if min(len(real), len(fake)) <= nearest_k:
        raise ValueError(f"PRDC with k={nearest_k} needs more than {nearest_k} real and synthetic images")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints the set sizes
        out = compute_prdc(real.astype(np.float32), fake.astype(np.float32), nearest_k)
    return {k: float(v) for k, v in out.items()}


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, d), logits (n, k)) of a classifier: the input of its last linear layer, caught
    with a forward hook, so it works for the built-in CNNs and timm models alike."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not head:
        raise ValueError(f"{type(model).__name__} has no linear layer to take features from")
    caught: list[torch.Tensor] = []
    hook = head[-1].register_forward_hook(lambda _m, inputs, _o: caught.append(inputs[0].flatten(1).float()))
    model = model.eval()
    device = next(model.parameters()).device
    try:
        logits = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        hook.remove()
    return torch.cat(caught).cpu().numpy(), torch.cat(logits).numpy()


def synthetic_fidelity(teacher: nn.Module, synthetic_x: torch.Tensor, intended: torch.Tensor,
                       real_x: torch.Tensor, num_classes: int, seed: int = 0) -> dict[str, Any]:
    """Every fidelity figure of one synthetic set against the real member images."""
    fake_features, fake_logits = penultimate_features(teacher, synthetic_x)
    real_features, _ = penultimate_features(teacher, real_x)
    out = class_fidelity(fake_logits.argmax(1), intended.numpy(), num_classes)
    out["frechet_distance"] = frechet_distance(real_features, fake_features)
    out.update(prdc(real_features, fake_features, seed=seed))
    out["feature_dim"] = int(real_features.shape[1])
    return out
