"""The loss-threshold baseline (Yeom et al. 2018): a lower loss on an example means "member".
Needs no shadow models; a floor any real attack should beat."""

from __future__ import annotations

import numpy as np
from scipy import special

from . import ATTACKS, AttackInputs


def loss_threshold_scores(losses: np.ndarray) -> np.ndarray:
    """The loss-threshold baseline attack (Yeom et al. 2018): score = -loss.

    Args:
        losses: (n,) per-example loss of the attacked model.

    Returns:
        (n,) float64 membership scores.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1:
        raise ValueError(f"losses must have shape (n,); got {losses.shape}")
    if np.isnan(losses).any():
        raise ValueError("losses contain NaN")
    return -losses



@ATTACKS.register("loss", help="loss threshold (Yeom et al. 2018): -cross-entropy on the first view; no shadows")
def loss_attack(inputs: AttackInputs) -> np.ndarray:
    logits = np.asarray(inputs.target[0], dtype=np.float64)  # (n, k), first view (the original image)
    log_p = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    losses = -np.take_along_axis(log_p, inputs.labels[:, None].astype(np.int64), axis=-1)[:, 0]
    return loss_threshold_scores(losses)
