"""Training losses as pure tensor functions returning a dict of their parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
            temperature: float = 4.0, alpha: float = 1.0, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """Knowledge-distillation loss (Hinton et al. 2015), as used by GKD in TCKR.

    ``kd`` = T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch (KL, not soft cross-entropy:
    the two differ by the teacher's entropy, a constant for the student, so the gradients are the same
    but KL is 0 when the student matches). ``ce`` = cross-entropy with the hard (generated-class) labels.
    ``loss`` = alpha · kd + (1 − alpha) · ce.

    Shapes: logits (B, K), labels (B,) long. Returns {"loss", "kd", "ce"} (scalars).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kd = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * temperature**2
    if labels is None or alpha == 1.0:
        ce = torch.zeros((), dtype=kd.dtype, device=kd.device)
    else:
        ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return {"loss": alpha * kd + (1.0 - alpha) * ce, "kd": kd, "ce": ce}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                        mix_labels: torch.Tensor | None = None, mix_lambda: float = 1.0) -> dict[str, torch.Tensor]:
    """Cross-entropy with label smoothing; with MixUp, λ·CE(y) + (1−λ)·CE(y_mix).

    Shapes: logits (B, K), labels (B,), mix_labels (B,) or None. Returns {"loss", "ce"}.
    """
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if mix_labels is not None:
        ce = mix_lambda * ce + (1 - mix_lambda) * F.cross_entropy(logits, mix_labels,
                                                                  label_smoothing=label_smoothing)
    return {"loss": ce, "ce": ce}
