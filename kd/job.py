"""The training job that ``kd distill`` and ``kd train-teacher`` share.

Both commands open a labelled dataset, build a model, and then run the same job: device and ``torchrun``
process group, datasets and loaders, the augmented training step (device impulse responses, time roll, gain,
mixup, Freq-MixStyle, and the frontends' SpecAugment masks), the :class:`~kd.train.Trainer` with its exact
resume, one MLflow run (on rank 0) with per-epoch metrics, and the best checkpoint logged as an artifact.
They differ only in what they train and in the loss: a student against labels and stored teacher logits, a
teacher against labels alone.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kd.augment import DeviceImpulseResponses, mix, mixup_params, random_gain, time_roll
from kd.complexity import Complexity
from kd.data import Dataset, open_dataset
from kd.forward import AugmentedForward, evaluate
from kd.loaders import TeacherTargets, make_dataset, make_loader
from kd.losses import DistillLoss
from kd.tasks import Task
from kd.tracking import tracked_run
from kd.train import OptimConfig, StepFn, Trainer, init_distributed, select_device
from kd.views import ImpulseResponses

__all__ = ["TrainingJob", "TrainingOptions", "TrainingResult", "build_job", "open_splits", "run_job"]

EpochCallback = Callable[[int, dict[str, float]], None]
BatchCallback = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """What every training run takes: data, schedule, augmentations, where it runs and where it reports.

    Attributes:
        seconds: clip length fed to the model (default: the command's, e.g. the store's or the teacher's).
        mixstyle_p: probability of Freq-MixStyle per batch.
        dir_folder: device impulse responses convolved into clips of the reference device with probability ``dir_p``.
        roll_seconds: maximum circular time shift; ``gain_db``: maximum random gain.
        decode_workers: DataLoader worker processes that decode audio (and read stored logits) for the model.
        resume: continue from ``out/last.pt`` with the same options.
    """

    dataset: str
    out: str
    train_split: str = "train"
    eval_split: str = "eval"
    seconds: float | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    mixup: float = 0.3
    mixstyle_p: float = 0.0
    dir_folder: str | None = None
    dir_p: float = 0.4
    roll_seconds: float = 0.0
    gain_db: float = 0.0
    seed: int = 0
    device: str = "auto"
    decode_workers: int = 0
    tracking_uri: str | None = None
    resume: bool = False

    def augmentations(self) -> dict[str, Any]:
        return {"mixup": self.mixup, "freq_mixstyle": self.mixstyle_p, "dir": self.dir_folder and self.dir_p,
                "roll_seconds": self.roll_seconds, "gain_db": self.gain_db, "masks": "frontend"}

    def optim(self) -> OptimConfig:
        return OptimConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                           warmup_epochs=self.warmup_epochs)


@dataclass
class TrainingJob:
    """Everything a run trains with, built and checked before the first step."""

    options: TrainingOptions
    task: Task
    model: nn.Module
    trainer: Trainer
    train_loader: DataLoader
    eval_loader: DataLoader
    step: StepFn
    experiment: str
    run_name: str
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    cost: Complexity | None = None

    @property
    def device(self) -> torch.device:
        return self.trainer.device


@dataclass(frozen=True)
class TrainingResult:
    """What a finished run reports. ``main_process`` is False on the other ranks of a ``torchrun`` job."""

    checkpoint: str
    metric: str
    best: float | None
    history: list[dict[str, float]]
    run_id: str | None
    main_process: bool
    cost: Complexity | None = None


def open_splits(options: TrainingOptions) -> tuple[Dataset, Dataset]:
    """The training and evaluation splits of ``options.dataset``."""
    return (open_dataset(options.dataset, split=options.train_split),
            open_dataset(options.dataset, split=options.eval_split))


def build_job(
    options: TrainingOptions,
    *,
    model: nn.Module,
    train_data: Dataset,
    eval_data: Dataset,
    seconds: float,
    loss: DistillLoss,
    meta: Mapping[str, Any],
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    train_clips: Sequence[Any] | None = None,
    teacher: TeacherTargets | None = None,
    transfer: Sequence[tuple[Dataset, Sequence[Any]]] = (),
    transfer_ratio: float = 1.0,
    impulse_responses: ImpulseResponses | None = None,
    tags: Mapping[str, str] | None = None,
    cost: Complexity | None = None,
) -> TrainingJob:
    """Loaders, training step and trainer (resumed with ``options.resume``) for ``model`` on the two splits.

    Args:
        seconds: clip length fed to the model.
        meta: what the checkpoints record to rebuild the model (``kind``, ``name``, ...); the classes, task,
            clip length and dataset are added here.
        params: the run's MLflow parameters beside the shared ones (schedule, augmentations, clip counts).
        train_clips: the labelled training clips (default: every clip of ``train_data``).
        teacher: stored logits to attach to each training batch.
        transfer: ``(dataset, clips)`` without labels, mixed into every batch at ``transfer_ratio`` transfer
            clips per labelled clip (soft loss only).
        impulse_responses: the set the stored views convolve in, for replaying them (``teacher.views``).
    """
    device = select_device(options.device)
    dist = init_distributed(device)
    task = train_data.task
    clips = list(train_data.labelled_clips if train_clips is None else train_clips)
    train_set = make_dataset(train_data, clips, model, seconds, teacher=teacher, impulse_responses=impulse_responses)
    transfer_sets = [make_dataset(data, part, model, seconds, teacher=teacher, labels_from=train_data,
                                  impulse_responses=impulse_responses) for data, part in transfer]
    train_loader = make_loader(train_set, options.batch_size, train=True, decode_workers=options.decode_workers,
                               dist_rank=dist.rank, dist_world=dist.world_size, seed=options.seed,
                               transfer=transfer_sets, transfer_ratio=transfer_ratio)
    eval_loader = make_loader(make_dataset(eval_data, eval_data.labelled_clips, model, seconds), options.batch_size,
                              train=False, decode_workers=options.decode_workers)
    meta = {**meta, "classes": train_data.classes, "task": task.name, "seconds": seconds, "dataset": options.dataset}
    trainer = Trainer(
        model, options.optim(), steps_per_epoch=len(train_loader), out_dir=options.out,
        primary_metric=task.primary_metric, meta=meta, seed=options.seed, device=device, dist=dist,
        train_module=AugmentedForward(model, task, mixstyle_p=options.mixstyle_p),
    )
    if options.resume:
        trainer.resume()
    shared = {"epochs": options.epochs, "batch_size": options.batch_size, "lr": options.lr, "seed": options.seed,
              "seconds": seconds, "train_clips": len(clips), "eval_clips": len(eval_data.labelled_clips),
              "aug": options.augmentations()}
    return TrainingJob(options, task, model, trainer, train_loader, eval_loader,
                       training_step(options, task, model, loss, device), experiment, run_name,
                       {**params, **shared}, dict(tags or {}), cost)


def training_step(options: TrainingOptions, task: Task, model: nn.Module, loss: DistillLoss,
                  device: torch.device) -> StepFn:
    """The loss of one batch: waveform augmentations, teacher targets, mixup, then the augmented forward."""
    fps = model.frames_per_second if task.frame_level else None
    dirs = DeviceImpulseResponses(options.dir_folder, model.sample_rate, p=options.dir_p) if options.dir_folder else None

    def step(module: nn.Module, batch: Mapping[str, Any]):
        wave, hard = batch["audio"].to(device, non_blocking=True), batch["target"].to(device, non_blocking=True)
        teacher = batch["teacher"].to(device, non_blocking=True) if "teacher" in batch else None
        labelled = batch["labelled"].to(device) if not batch["labelled"].all() else None
        if dirs is not None:
            wave = dirs(wave, batch["device"])
        if options.roll_seconds > 0:
            frames = [t for t in (hard, teacher) if task.frame_level and t is not None]
            wave, rolled = time_roll(wave, options.roll_seconds, model.sample_rate, frames, fps)
            if task.frame_level:
                hard, teacher = rolled[0], (rolled[1] if teacher is not None else None)
        if options.gain_db > 0:
            wave = random_gain(wave, options.gain_db)
        soft = loss.targets(teacher) if teacher is not None else None
        params = mixup_params(len(wave), options.mixup, device, groups=labelled) if options.mixup > 0 else None
        if params is not None:
            hard, soft = mix(hard, params), (mix(soft, params) if soft is not None else None)
        return loss(module(wave, params), hard, soft, labelled)

    return step


def run_job(job: TrainingJob, on_epoch: EpochCallback | None = None,
            on_batch: BatchCallback | None = None) -> TrainingResult:
    """Train, evaluate every epoch and track the run in MLflow (from rank 0 only).

    ``on_epoch(epoch, metrics)`` follows each evaluation, ``on_batch(done, batches_per_epoch)`` each step.
    """
    trainer, options = job.trainer, job.options
    main = trainer.dist.is_main
    with tracked_run(job.experiment, run_name=job.run_name, params=job.params, tags=job.tags,
                     tracking_uri=options.tracking_uri, enabled=main) as run:
        if job.cost is not None:
            run.log_metrics({"params": job.cost.params, "macs": job.cost.macs})

        def epoch_end(epoch: int, record: dict[str, float]) -> None:
            run.log_metrics(record, step=epoch)
            if on_epoch:
                on_epoch(epoch, record)

        history = trainer.fit(job.train_loader, job.step, lambda m: evaluate(m, job.eval_loader, job.device),
                              on_epoch_end=epoch_end, on_batch=on_batch)
        best = Path(options.out) / "best.pt"
        if main and best.is_file():
            run.log_artifact(best, "checkpoint")
            run.log_metrics({f"best_{job.task.primary_metric}": trainer.best})
        return TrainingResult(str(best), job.task.primary_metric, trainer.best, history, run.run_id, main, job.cost)
