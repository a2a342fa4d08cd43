"""SAM 2's mask losses and their weighted sum with next-token cross-entropy.

Definitions follow SAM 2's training losses (``MultiStepMultiMasksAndIous`` with one mask output):
- focal: sigmoid focal loss (alpha 0.25, gamma 2), mean over pixels, summed over objects;
- dice: ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` on sigmoid probabilities, summed over objects;
- IoU: L1 (mean absolute error) between the predicted IoU and the IoU of the thresholded
  prediction (logit > 0) with the target, summed over objects;
- object score: binary cross-entropy of the object-score logit against "target is non-empty".
As in SAM 2, the mask, dice and IoU terms of objects whose target is empty are zeroed (only the
object-score term teaches "nothing here"), and every term is divided by the number of objects.
Default weights are SAM 2.1's: 20 (focal), 1 (dice), 1 (IoU), 1 (object score).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    """Weights of the Stage 1 objective's terms."""

    lm: float = 1.0
    """Next-token cross-entropy on the response."""
    focal: float = 20.0
    """Sigmoid focal loss on mask logits (SAM 2.1: 20)."""
    dice: float = 1.0
    """Dice loss on mask probabilities (SAM 2.1: 1)."""
    iou: float = 1.0
    """L1 between predicted and actual mask IoU (SAM 2.1: 1)."""
    object_score: float = 1.0
    """BCE of the object-score logit (SAM 2.1: 1)."""

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {value}")


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-object focal loss, mean over pixels. ``logits``, ``targets``: ``(N, H, W)`` -> ``(N,)``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-object dice loss with +1 smoothing. ``(N, H, W)`` -> ``(N,)``."""
    prob = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)


def mask_iou(pred_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of ``logit > 0`` with ``target > 0`` per object (0 when both are empty, as in SAM 2). ``(N,)``."""
    pred = pred_logits.flatten(1) > 0
    gt = targets.flatten(1) > 0
    inter = (pred & gt).sum(1).float()
    union = (pred | gt).sum(1).float()
    return inter / union.clamp(min=1.0)


def iou_l1_loss(pred_logits: torch.Tensor, targets: torch.Tensor, pred_iou: torch.Tensor) -> torch.Tensor:
    """Per-object ``|pred_iou - actual_iou|`` (actual IoU carries no gradient). ``(N,)``."""
    return (pred_iou - mask_iou(pred_logits, targets).detach()).abs()


def object_score_loss(object_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-object BCE of the object-score logit against "the target has a foreground pixel". ``(N,)``."""
    present = targets.flatten(1).any(1).float()
    return F.binary_cross_entropy_with_logits(object_logits, present, reduction="none")


def mask_losses(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    pred_iou: torch.Tensor,
    object_logits: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """SAM 2's four mask terms, each summed over objects and divided by their number.

    ``mask_logits``, ``targets``: ``(N, H, W)``; ``pred_iou``, ``object_logits``: ``(N,)``.
    """
    targets = targets.to(mask_logits.dtype)
    n = max(mask_logits.shape[0], 1)
    present = targets.flatten(1).any(1).to(mask_logits.dtype)  # (N,)
    return {
        "focal": (sigmoid_focal_loss(mask_logits, targets) * present).sum() / n,
        "dice": (dice_loss(mask_logits, targets) * present).sum() / n,
        "iou": (iou_l1_loss(mask_logits, targets, pred_iou) * present).sum() / n,
        "object_score": object_score_loss(object_logits, targets).sum() / n,
    }


def total_loss(lm_loss: torch.Tensor | None, parts: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """``lm * CE + focal * focal + dice * dice + iou * iou + object_score * bce``."""
    total = weights.lm * lm_loss if lm_loss is not None else 0.0
    for name, value in parts.items():
        total = total + getattr(weights, name) * value
    return total
