"""The loss of a training step: ``kd_lambda * hard + (1 - kd_lambda) * soft`` (see :mod:`kd.tasks.losses` for the
terms and why ``kd_lambda`` weights the label loss); the task picks each term (:class:`kd.tasks.Task`), unless the
soft term matches the teacher's logits (``soft_loss="logits"``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kd.options import SOFT_LOSSES, SoftLoss
from kd.tasks import Task, losses
from kd_errors import KdError

__all__ = ["DistillLoss", "LossTerms"]


@dataclass(frozen=True)
class LossTerms:
    total: torch.Tensor
    hard: torch.Tensor
    soft: torch.Tensor | None


@dataclass(frozen=True)
class DistillLoss:
    """``kd_lambda * hard + (1 - kd_lambda) * soft``; without soft targets, the hard loss alone."""

    task: Task
    kd_lambda: float = 0.5
    temperature: float = 1.0
    soft_loss: SoftLoss = "probs"

    def __post_init__(self) -> None:
        if not 0.0 <= self.kd_lambda <= 1.0:
            raise KdError(f"kd_lambda must lie in [0, 1], got {self.kd_lambda}")
        if self.temperature <= 0:
            raise KdError(f"temperature must be positive, got {self.temperature}")
        if self.soft_loss not in SOFT_LOSSES:
            raise KdError(f"--soft-loss must be one of {', '.join(SOFT_LOSSES)}, got {self.soft_loss}")

    def targets(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """What the soft loss matches (and mixup mixes): the teacher's probabilities, or its logits."""
        if self.soft_loss == "logits":
            return teacher_logits.float()
        return self.task.soft_targets(teacher_logits, self.temperature)

    def __call__(
        self, logits: torch.Tensor, hard_targets: torch.Tensor, teacher_targets: torch.Tensor | None = None,
        labelled: torch.Tensor | None = None,
    ) -> LossTerms:
        """``labelled`` (boolean ``[B]``): which clips have labels; the label loss reads only those."""
        if labelled is None or labelled.all():
            hard = self.task.hard_loss(logits, hard_targets)
        elif labelled.any():
            hard = self.task.hard_loss(logits[labelled], hard_targets[labelled])
        else:
            hard = logits.sum() * 0.0  # a batch of transfer clips alone: no label term, but a graph for backward
        if teacher_targets is None:
            return LossTerms(hard, hard, None)
        if self.soft_loss == "logits":
            soft = losses.logit_mse(logits, teacher_targets)
        else:
            soft = self.task.soft_loss(logits, teacher_targets, self.temperature)
        return LossTerms(self.kd_lambda * hard + (1.0 - self.kd_lambda) * soft, hard, soft)
