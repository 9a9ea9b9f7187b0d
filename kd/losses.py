"""Hard-label and distillation losses for the three tasks kd trains.

The total loss of a distillation step is ``kd_lambda * hard + (1 - kd_lambda) * soft``, the weighting of
EfficientAT (Schmid et al., ICASSP 2023) and of the CP-JKU DCASE'23 system (Schmid et al., "Creating a
Good Teacher for Knowledge Distillation in Acoustic Scene Classification", 2023): ``kd_lambda`` weights the
**label** loss. Soft targets are probabilities derived from the stored teacher logits, so that batch
mixing (mixup) can mix them linearly with the same coefficient as the inputs:

* ``asc`` (single label): ``p = softmax(t / T)``; soft loss ``T^2 * KL(p || softmax(s / T)) / C``: the KL
  terms averaged over clips *and* the ``C`` classes, as CP-JKU's DCASE'23 training computes it
  (``KLDivLoss(reduction="none")(...).mean()``), so that its ``kd_lambda = 0.02``, ``T = 2`` keep their
  balance between label and teacher here (Hinton et al., 2015, for the ``T^2``, which keeps gradient
  magnitudes comparable across temperatures).
* ``tagging`` (multi label): ``p = sigmoid(t / T)``; soft loss ``BCE(s, p)`` averaged over classes and clips,
  as EfficientAT distils PaSST ensembles.
* ``sed`` (frame-wise multi label): the same BCE over frames ``[B, T, C]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["TASKS", "DistillLoss", "LossTerms", "hard_loss", "soft_loss", "soft_targets"]

Task = Literal["asc", "tagging", "sed"]
TASKS: tuple[Task, ...] = ("asc", "tagging", "sed")


def soft_targets(task: Task, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Teacher probabilities at ``temperature``: softmax over classes for ``asc``, sigmoid otherwise."""
    scaled = teacher_logits.float() / temperature
    return scaled.softmax(dim=-1) if task == "asc" else scaled.sigmoid()


def hard_loss(task: Task, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against (possibly mixed) one-hot targets for ``asc``, BCE for ``tagging``/``sed``.

    ``targets`` has the shape of ``logits``: one-hot or mixed label distributions ``[B, C]`` for ``asc``,
    multi-hot ``[B, C]`` for ``tagging`` and ``[B, T, C]`` for ``sed``.
    """
    _check_shapes(logits, targets)
    logits = logits.float()
    if task == "asc":
        return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
    return F.binary_cross_entropy_with_logits(logits, targets)


def soft_loss(task: Task, logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Distillation loss of student ``logits`` against teacher probabilities ``targets`` (see module doc)."""
    _check_shapes(logits, targets)
    logits = logits.float()
    if task == "asc":
        log_q = (logits / temperature).log_softmax(dim=-1)
        kl = torch.xlogy(targets, targets) - targets * log_q
        return kl.mean() * temperature**2
    return F.binary_cross_entropy_with_logits(logits, targets)


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")


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

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if not 0.0 <= self.kd_lambda <= 1.0:
            raise ValueError(f"kd_lambda must lie in [0, 1], got {self.kd_lambda}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def targets(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        return soft_targets(self.task, teacher_logits, self.temperature)

    def __call__(
        self, logits: torch.Tensor, hard_targets: torch.Tensor, teacher_targets: torch.Tensor | None = None
    ) -> LossTerms:
        hard = hard_loss(self.task, logits, hard_targets)
        if teacher_targets is None:
            return LossTerms(hard, hard, None)
        soft = soft_loss(self.task, logits, teacher_targets, self.temperature)
        return LossTerms(self.kd_lambda * hard + (1.0 - self.kd_lambda) * soft, hard, soft)
