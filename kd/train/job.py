"""The training job that ``kd distill`` and ``kd train-teacher`` share.

Both commands open a labelled dataset, build a model, and then run the same job: device and ``torchrun``
process group, datasets and loaders, the augmented training step (device impulse responses, time roll, gain,
mixup, Freq-MixStyle, and the frontends' SpecAugment masks), the :class:`~kd.train.engine.Trainer` with its exact
resume, one MLflow run (on rank 0) with per-epoch metrics, and the best checkpoint logged as an artifact.
They differ only in what they train and in the loss: a student against labels and stored teacher logits, a
teacher against labels alone.

The job reads top to bottom: :func:`build_job` (loaders, training step, trainer), :func:`train` (epochs, an
evaluation every ``eval_every`` of them, per-epoch metrics into MLflow), :func:`evaluate_best` (the best checkpoint's
logits on the eval split), then :func:`kd.train.report.report` (figures, agreement with the teachers, the MLflow
model); :func:`kd.train.run.run_job` runs the last three in one MLflow run, which also records the datasets the job
reads (its splits, transfer sets and store: MLflow's dataset tracking).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kd.core.complexity import Complexity
from kd.core.devices import init_distributed, select_device
from kd.core.views import ImpulseResponses
from kd.data import Dataset, open_dataset
from kd.evaluate.loop import predict, score
from kd.tasks import Task
from kd.track.tracking import DatasetInput, RunLogger
from kd.train.augment import DeviceImpulseResponses, mix, mixup_params, random_gain, time_roll
from kd.train.engine import OptimConfig, StepFn, Trainer
from kd.train.forward import AugmentedForward
from kd.train.loaders import ClipDataset, TeacherTargets, make_dataset, make_loader
from kd.train.loss import DistillLoss
from kd_errors import KdError
from layers import read_checkpoint

__all__ = ["Evaluation", "TrainingJob", "TrainingOptions", "TrainingResult", "build_job", "evaluate_best", "open_splits",
           "train"]

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
        eval_every: evaluate after every ``eval_every``-th epoch and the last (see :class:`kd.train.engine.OptimConfig`).
        average_last, swa_from: hand on the mean of the weights after the last ``average_last`` epochs, or after
            every epoch from ``swa_from`` on (one of the two; 0: the best epoch's weights).
        train_devices, eval_devices: train (evaluate) on the clips of these recording devices only (ASC); empty:
            every clip of the split. A device fine-tune (:mod:`kd.train.devices`) trains and selects its best epoch
            on one device's clips.
        resume: continue from ``out/last.pt`` with the same options.
    """

    dataset: str
    out: str
    train_split: str = "train"
    eval_split: str = "eval"
    seconds: float | None = None
    epochs: int = OptimConfig.epochs  # the schedule's defaults are the engine's
    eval_every: int = OptimConfig.eval_every
    batch_size: int = 32
    lr: float = OptimConfig.lr
    weight_decay: float = OptimConfig.weight_decay
    warmup_epochs: float = OptimConfig.warmup_epochs
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
    average_last: int = 0
    swa_from: int = 0
    train_devices: tuple[str, ...] = ()
    eval_devices: tuple[str, ...] = ()
    resume: bool = False

    def augmentations(self) -> dict[str, Any]:
        return {"mixup": self.mixup, "freq_mixstyle": self.mixstyle_p, "dir": self.dir_folder and self.dir_p,
                "roll_seconds": self.roll_seconds, "gain_db": self.gain_db, "masks": "frontend"}

    def optim(self) -> OptimConfig:
        return OptimConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                           warmup_epochs=self.warmup_epochs, eval_every=self.eval_every,
                           average_from=self.average_from())

    def average_from(self) -> int:
        """The first epoch whose weights the handed-on model averages (0: none)."""
        if self.average_last and self.swa_from:
            raise KdError("--average-last and --swa-from both say which epochs to average; give one")
        if not 0 <= self.average_last <= self.epochs:
            raise KdError(f"--average-last takes 1 to {self.epochs} epochs (the run's), got {self.average_last}")
        return self.swa_from or (self.epochs - self.average_last + 1 if self.average_last else 0)


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
    tags: dict[str, Any] = field(default_factory=dict)
    cost: Complexity | None = None
    inputs: list[DatasetInput] = field(default_factory=list)
    train_set: ClipDataset | None = None
    teacher: TeacherTargets | None = None
    log_model: bool = False
    # the weights evaluated last (their fingerprint) and their logits and clip indices: the checkpoint a run hands
    # on is mostly the state it evaluated last, whose predictions evaluate_best then reuses
    last_evaluation: tuple[str, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The task's metrics of ``model`` on the eval split, keeping its predictions for :func:`evaluate_best`."""
        logits, indices = predict(model, self.eval_loader, self.device)
        self.last_evaluation = (weights_fingerprint(model), logits, indices)
        return score(self.eval_loader, logits, indices)


def weights_fingerprint(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers: models with the same digest predict the same logits."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


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
    averaged_metrics: dict[str, float] | None = None  # the averaged weights' scores, with checkpoint averaging

    @property
    def final_metrics(self) -> dict[str, float]:
        """The scores of the model the run hands on: the averaged weights' where it averaged, else the last
        evaluation's (every run evaluates after its last epoch)."""
        return self.averaged_metrics or next(r for r in reversed(self.history) if self.metric in r)


def open_splits(options: TrainingOptions) -> tuple[Dataset, Dataset]:
    """The training and evaluation splits of ``options.dataset``, each kept to the clips of ``train_devices`` and
    ``eval_devices`` when given."""
    return (on_devices(open_dataset(options.dataset, split=options.train_split), options.train_devices),
            on_devices(open_dataset(options.dataset, split=options.eval_split), options.eval_devices))


def on_devices(data: Dataset, devices: Sequence[str]) -> Dataset:
    """The clips of ``data`` recorded by ``devices`` (all of them when empty).

    Raises:
        KdError: a device of which the split has no clip.
    """
    if not devices:
        return data
    unknown = [d for d in devices if d not in data.devices]
    if unknown:
        has = ", ".join(data.devices) or "no recording devices"
        raise KdError(f"the {data.split} split of {data.spec} has no clips of device {', '.join(unknown)} (it has: "
                      f"{has})")
    return data.subset([c for c in data.clips if c.device in devices])


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
    tags: Mapping[str, Any] | None = None,
    cost: Complexity | None = None,
    inputs: Sequence[DatasetInput] = (),
    log_model: bool = False,
) -> TrainingJob:
    """Loaders, training step and trainer (resumed with ``options.resume``) for ``model`` on the two splits.

    Args:
        seconds: clip length fed to the model.
        meta: what the checkpoints record to rebuild the model (``kind``, ``name``, ...); the classes, task,
            clip length and dataset are added here.
        params: the run's MLflow parameters beside the shared ones (schedule, augmentations, clip counts): what
            distinguishes runs, first. Bookkeeping (paths, fingerprints, counts of dropped clips) goes in ``tags``.
        train_clips: the labelled training clips (default: every clip of ``train_data``).
        teacher: stored logits to attach to each training batch.
        transfer: ``(dataset, clips)`` without labels, mixed into every batch at ``transfer_ratio`` transfer
            clips per labelled clip (soft loss only).
        impulse_responses: the set the stored views convolve in, for replaying them (``teacher.views``).
        inputs: datasets the run reads beside its splits and transfer sets (a distillation's store).
        log_model: log the trained model as an MLflow model (students).
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
    meta = {**meta, "classes": train_data.classes, "task": task.name, "seconds": seconds, "dataset": options.dataset,
            "train_split": options.train_split}
    devices = {k: ",".join(v) for k, v in (("train_devices", options.train_devices),
                                           ("eval_devices", options.eval_devices)) if v}
    meta.update(devices)
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
    datasets = [DatasetInput.of_dataset(train_data, "train", clips=len(clips)),
                DatasetInput.of_dataset(eval_data, "eval", clips=len(eval_data.labelled_clips)),
                *(DatasetInput.of_dataset(data, "transfer", clips=len(part)) for data, part in transfer), *inputs]
    return TrainingJob(options, task, model, trainer, train_loader, eval_loader,
                       training_step(options, task, model, loss, device), experiment, run_name,
                       {**params, **shared}, {"task": task.name, "primary_metric": task.primary_metric, **devices,
                                              **(tags or {})},
                       cost, datasets, train_set, teacher, log_model)


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


def train(job: TrainingJob, run: RunLogger, on_epoch: EpochCallback | None = None,
          on_batch: BatchCallback | None = None) -> list[dict[str, float]]:
    """Train, evaluating every ``eval_every`` epochs, and log each epoch's metrics (the model's cost once)."""
    primary = job.task.primary_metric
    cost = {} if job.cost is None else {"params": job.cost.params, "macs": job.cost.macs}

    def epoch_end(epoch: int, record: dict[str, float]) -> None:
        # the primary metric first: MLflow's compare view colours its parallel-coordinates plot by the first one
        run.log_metrics({primary: record[primary], **record} if primary in record else record, step=epoch)
        if cost:
            run.log_metrics(cost)
            cost.clear()
        if on_epoch:
            on_epoch(epoch, record)

    history = job.trainer.fit(job.train_loader, job.step, job.evaluate, on_epoch_end=epoch_end, on_batch=on_batch)
    if cost:  # no epoch left to train (a finished run resumed)
        run.log_metrics(cost)
    return history


@dataclass(frozen=True)
class Evaluation:
    """The best checkpoint's raw logits on the eval split: ``logits[i]`` belongs to ``clips[i]`` of ``dataset``."""

    dataset: ClipDataset
    clips: list[Any]
    logits: np.ndarray


def evaluate_best(job: TrainingJob, checkpoint: Path) -> Evaluation:
    """Load ``checkpoint`` (the best one) into ``job.model`` and run it over the eval split (or take the predictions
    of the training's last evaluation, where that evaluated these weights)."""
    job.model.load_state_dict(read_checkpoint(checkpoint, map_location=job.device)["model"])
    kept = job.last_evaluation
    if kept is not None and kept[0] == weights_fingerprint(job.model):
        logits, indices = kept[1:]
    else:
        logits, indices = predict(job.model, job.eval_loader, job.device)
    dataset: ClipDataset = job.eval_loader.dataset
    return Evaluation(dataset, [dataset.clips[i] for i in indices], logits)
