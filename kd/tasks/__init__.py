"""The three tasks kd trains, one :class:`Task` object each: everything that differs between them lives here.

* ``asc``: one scene per clip; softmax; KD lambda 0.02 at temperature 2; shuffled batches; accuracy (per device).
* ``tagging``: multi-label tags ``[C]``; sigmoid; KD lambda 0.1 at temperature 1; class-balanced batches; mAP.
* ``sed``: multi-label frames ``[T, C]``; sigmoid per frame; KD lambda 0.1 at temperature 1; shuffled batches;
  frame mAP (and PSDS1/PSDS2).

The defaults are the papers': CP-JKU's DCASE'23 system for scenes (KL at T = 2, ``kd_lambda = 0.02``),
EfficientAT for AudioSet tagging (BCE against the teachers' sigmoids, ``kd_lambda = 0.1``, EfficientAT's
class-balanced draw) and EfficientSED for frame-wise detection. Callers ask the task (``task.frame_level``,
``task.hard_loss(...)``, ``task.metrics(...)``) instead of comparing names.

The package is the bottom of kd: the task's loss terms (:mod:`kd.tasks.losses`) and metrics
(:mod:`kd.tasks.metrics`) sit below :class:`Task`, which chooses among them, and none of it imports another part
of kd. Dataset readers (:mod:`kd.data`) build datasets with a task and stay free of torch and scikit-learn, which
``kd demo-data``, dask workers and every DataLoader worker would otherwise import for nothing; so the loss and
metric code is imported when a task first computes one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit

from kd.options import TaskName
from kd_errors import KdError

if TYPE_CHECKING:
    import torch

__all__ = ["ASC", "SED", "TAGGING", "TASKS", "Task", "get_task"]


@dataclass(frozen=True)
class Task:
    """What one task trains on and how it is scored.

    Attributes:
        name: ``asc``, ``tagging`` or ``sed``.
        single_label: one class per clip (softmax, cross-entropy, KL) rather than independent classes (sigmoid, BCE).
        frame_level: targets and outputs per frame ``[T, C]`` rather than per clip ``[C]``.
        kd_lambda: default weight of the label loss (the soft loss gets ``1 - kd_lambda``).
        temperature: default distillation temperature.
        balanced_sampling: draw training clips class-balanced (AudioSet's long tail) rather than shuffled.
        primary_metric: the metric that picks the best checkpoint (higher is better).
    """

    name: TaskName
    single_label: bool
    frame_level: bool
    kd_lambda: float
    temperature: float
    balanced_sampling: bool
    primary_metric: str

    def __str__(self) -> str:
        return self.name

    def __reduce__(self):  # a task is one of three singletons, also after crossing a process boundary
        return get_task, (self.name,)

    @property
    def activation(self) -> str:
        """``softmax`` or ``sigmoid``: how logits become probabilities (and how ensembles mix in probability space)."""
        return "softmax" if self.single_label else "sigmoid"

    @property
    def level(self) -> str:
        """``clip`` or ``frame``: which stored logits and model outputs the task trains on."""
        return "frame" if self.frame_level else "clip"

    # --- model outputs and losses (torch) ---------------------------------------------------------------------
    def logits(self, output: Any) -> torch.Tensor:
        """The tensor the task trains on: a student's output as is, a teacher's frame or clip logits."""
        if isinstance(output, tuple):  # a TeacherOutput(clip, frame)
            return output.frame if self.frame_level else output.clip
        return output

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1) if self.single_label else logits.sigmoid()

    def hard_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against (mixed) one-hot targets, or BCE against multi-hot clip or frame targets."""
        from kd.tasks import losses

        if self.single_label:
            return losses.soft_cross_entropy(logits, targets)
        return losses.binary_cross_entropy(logits, targets)

    def soft_targets(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Teacher probabilities at ``temperature``: what the soft loss matches and mixup mixes."""
        return self.probabilities(teacher_logits.float() / temperature)

    def soft_loss(self, logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
        """T²-scaled KL for single-label tasks, BCE against the teacher's sigmoids otherwise (see :mod:`kd.tasks.losses`)."""
        from kd.tasks import losses

        if self.single_label:
            return losses.tempered_kl(logits, targets, temperature)
        return losses.binary_cross_entropy(logits, targets)

    # --- scores (NumPy) ---------------------------------------------------------------------------------------
    def metrics(self, data: Any, clips: Sequence[Any], logits: np.ndarray,
                frames_per_second: float | None = None) -> dict[str, float]:
        """The task's metrics of raw ``logits`` (``[N, C]``, or ``[N, T, C]`` at ``frames_per_second``) on ``clips``.

        Raises:
            kd.tasks.metrics.UndefinedMetric: the clips' labels leave the metric undefined (e.g. no positive at all).
        """
        from kd.tasks import metrics

        if self.single_label:
            labels = np.array([c.labels[0] for c in clips])
            return metrics.asc_metrics(logits, labels, [c.device or "" for c in clips], seen_devices=data.seen_devices)
        probs = expit(np.asarray(logits, np.float64))  # 1 / (1 + e^-x) without overflow warnings
        if self.frame_level:
            return metrics.sed_metrics(data, clips, probs, frames_per_second)
        return metrics.tagging_metrics(probs, np.stack([data.targets(c) for c in clips]))


ASC = Task("asc", single_label=True, frame_level=False, kd_lambda=0.02, temperature=2.0, balanced_sampling=False,
           primary_metric="accuracy")
TAGGING = Task("tagging", single_label=False, frame_level=False, kd_lambda=0.1, temperature=1.0,
               balanced_sampling=True, primary_metric="mAP")
SED = Task("sed", single_label=False, frame_level=True, kd_lambda=0.1, temperature=1.0, balanced_sampling=False,
           primary_metric="frame_mAP")
TASKS: dict[str, Task] = {t.name: t for t in (ASC, TAGGING, SED)}


def get_task(task: str | Task) -> Task:
    """The task of that name (a :class:`Task` is returned as is)."""
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise KdError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}") from None
