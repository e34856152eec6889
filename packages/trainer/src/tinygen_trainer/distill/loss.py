"""The logit-distillation loss: KL from the teacher's top-k distribution to the student's."""

from __future__ import annotations

import torch


def topk_kl(student_logits: torch.Tensor, teacher_ids: torch.Tensor,
            teacher_logits: torch.Tensor, temperature: float = 1.0,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions of KL(p_teacher || p_student), both softened by `temperature`.

    student_logits: (B, T, V); teacher_ids, teacher_logits: (B, T, k), the teacher's k
    largest logits. The teacher distribution is the softmax over those k (the cache
    keeps no more); the student's log-probabilities are over its whole vocabulary,
    so mass it puts outside the teacher's top k is penalised too. Scaled by T^2 so
    its gradients keep their size as the temperature changes (Hinton et al. 2015).
    weights: (B, T) per position, or None.
    """
    t = float(temperature)
    log_q = torch.log_softmax(student_logits.float() / t, dim=-1).gather(-1, teacher_ids)
    log_p = torch.log_softmax(teacher_logits.float() / t, dim=-1)
    per_position = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T)
    if weights is not None:
        per_position = per_position * weights
        return per_position.sum() / (weights > 0).sum().clamp(min=1) * t * t
    return per_position.mean() * t * t
