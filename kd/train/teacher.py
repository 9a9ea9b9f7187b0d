"""``kd train-teacher``: fine-tune (or train from scratch) a teacher on a labelled dataset.

The job is :mod:`kd.train.job`'s, as for students; the loss is the task's label loss alone (cross-entropy for
scenes, BCE for tags, frame-wise BCE on strong labels for SED, so that a frame-wise teacher exists), and
PaSST's patchout is active in training. The checkpoint it writes (``best.pt``) carries the model name and
constructor arguments, so ``kd teach --teacher NAME=best.pt`` rebuilds it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kd.tasks import Task
from kd.train.job import (
    BatchCallback,
    EpochCallback,
    TrainingJob,
    TrainingOptions,
    TrainingResult,
    build_job,
    open_splits,
)
from kd.train.loss import DistillLoss
from kd.train.run import run_job
from kd_errors import KdError
from teachers import Teacher, create_teacher

__all__ = ["TrainTeacherConfig", "prepare_teacher_training", "train_teacher"]


@dataclass(frozen=True, kw_only=True)
class TrainTeacherConfig(TrainingOptions):
    """A teacher training run: the shared training options, plus the teacher and the checkpoint it starts from.

    ``seconds`` also sets the teacher's context (the tiny teachers are built for the clip length they train on);
    by default a teacher trains on its own context.
    """

    teacher: str
    checkpoint: str | None = None
    batch_size: int = 16
    lr: float = 1e-4


def build_teacher_for_training(cfg: TrainTeacherConfig, num_classes: int, task: Task) -> tuple[Teacher, dict[str, Any]]:
    """The teacher with a classifier for ``num_classes`` (fresh heads over a release), and its constructor kwargs."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if cfg.seconds:
        kwargs["clip_seconds"] = cfg.seconds
    torch.manual_seed(cfg.seed)
    model = create_teacher(cfg.teacher, checkpoint=cfg.checkpoint, new_heads=True if cfg.checkpoint else None,
                           **kwargs)
    if task.frame_level and not model.frames_per_second:
        raise KdError(f"{cfg.teacher} is a clip-level teacher; {task} needs a frame-wise one (e.g. passt_tiny_frame)")
    return model, kwargs


def prepare_teacher_training(cfg: TrainTeacherConfig) -> TrainingJob:
    """Open the data, build the teacher and its job (resumed with ``cfg.resume``)."""
    train_data, eval_data = open_splits(cfg)
    task = train_data.task
    model, kwargs = build_teacher_for_training(cfg, train_data.num_classes, task)
    return build_job(
        cfg, model=model, train_data=train_data, eval_data=eval_data, seconds=model.clip_seconds,
        loss=DistillLoss(task, kd_lambda=1.0),
        meta={"kind": "teacher", "name": cfg.teacher, "kwargs": kwargs},
        experiment=f"train-teacher/{train_data.name}-{task}", run_name=f"{cfg.teacher} on {train_data.name}",
        params={"teacher": cfg.teacher, "checkpoint": cfg.checkpoint, "task": task.name},
    )


def train_teacher(cfg: TrainTeacherConfig, on_epoch: EpochCallback | None = None,
                  on_batch: BatchCallback | None = None) -> TrainingResult:
    """Train, evaluate every epoch, track in MLflow (experiment ``train-teacher/<dataset>-<task>``)."""
    return run_job(prepare_teacher_training(cfg), on_epoch, on_batch)
