"""Next-token cross-entropy with per-token weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.dataset import IGNORE_INDEX


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss of predicting labels[:, t + 1] from position t.

    logits: (B, T, V); labels: (B, T), IGNORE_INDEX where nothing is predicted;
    weights: (B, T) per target token, or None for 1. The sum of weighted losses
    is divided by the number of predicted tokens, not by the sum of weights, so
    a corpus weighted 0.5 really counts half as much as one weighted 1.
    """
    vocab = logits.size(-1)
    targets = labels[:, 1:].reshape(-1)
    # fp32 softmax: under bf16 autocast the logits may be bf16, too coarse for the loss.
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), targets,
                                ignore_index=IGNORE_INDEX, reduction="none")
    if weights is not None:
        per_token = per_token * weights[:, 1:].reshape(-1)
    return per_token.sum() / target_count(labels).clamp(min=1)


def target_count(labels: torch.Tensor) -> torch.Tensor:
    """How many tokens causal_lm_loss predicts from `labels`, as a tensor (no device sync).

    The loop weights each micro-batch's mean loss by its share of this count over
    the whole optimizer step: padded rows hold fewer targets than full ones.
    """
    return (labels[:, 1:] != IGNORE_INDEX).sum()
