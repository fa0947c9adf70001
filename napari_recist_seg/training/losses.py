"""The segmentation loss and the validation Dice."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return bce + dice.mean()


def _dice_np(pred: np.ndarray, ref: np.ndarray) -> float:
    s = int(pred.sum()) + int(ref.sum())
    if s == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / s

