"""``kd train-teacher``: fine-tune (or train from scratch) a teacher on a labelled dataset.

The three tasks: single-label cross-entropy for scenes (``asc``), multi-label BCE for tagging, frame-wise BCE
on strong labels for SED (so that a frame-wise teacher exists). Augmentations: mixup of spectrograms and
labels, SpecAugment-style masks (inside the teacher's frontend), Freq-MixStyle, and PaSST's patchout in
training. The checkpoint it writes (``best.pt``) carries the model name and constructor arguments, so
``kd teach --teacher NAME=best.pt`` rebuilds it exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kd.augment import mixup_params, mix
from kd.errors import KdError
from kd.losses import DistillLoss
from kd.task import PRIMARY_METRIC, AugmentedForward, evaluate, make_dataset, make_loader
from kd.train import OptimConfig, Trainer, init_distributed, select_device

__all__ = ["TrainTeacherConfig", "train_teacher"]


@dataclass(frozen=True)
class TrainTeacherConfig:
    dataset: str
    teacher: str
    out: str
    checkpoint: str | None = None
    train_split: str = "train"
    eval_split: str = "eval"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    mixup: float = 0.3
    mixstyle_p: float = 0.0
    clip_seconds: float | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    tracking_uri: str | None = None
    resume: bool = False


def _build(cfg: TrainTeacherConfig, num_classes: int, frame_level: bool):
    from teachers import create_teacher

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if cfg.clip_seconds:
        kwargs["clip_seconds"] = cfg.clip_seconds
    torch.manual_seed(cfg.seed)
    model = create_teacher(cfg.teacher, checkpoint=cfg.checkpoint, new_heads=True if cfg.checkpoint else None,
                           **kwargs)
    if frame_level and not model.frames_per_second:
        raise KdError(f"{cfg.teacher} is a clip-level teacher; SED needs a frame-wise one (e.g. passt_tiny_frame)")
    return model, kwargs


def train_teacher(cfg: TrainTeacherConfig, on_epoch: Callable[[int, dict], None] | None = None,
                  on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train, evaluate every epoch, track in MLflow (experiment ``train-teacher/<dataset>``); returns a summary.

    ``on_epoch(epoch, metrics)`` follows each evaluation, ``on_batch(done, batches_per_epoch)`` each step.
    """
    from kd.data import open_dataset
    from kd.tracking import tracked_run

    device = select_device(cfg.device)
    dist = init_distributed(device)
    train_data = open_dataset(cfg.dataset, split=cfg.train_split)
    eval_data = open_dataset(cfg.dataset, split=cfg.eval_split)
    task, frame_level = train_data.task, train_data.task == "sed"
    model, kwargs = _build(cfg, train_data.num_classes, frame_level)
    seconds = model.clip_seconds
    train_loader = make_loader(
        make_dataset(train_data, train_data.clips, model, seconds), cfg.batch_size, train=True,
        num_workers=cfg.num_workers, balanced=task == "tagging", dist_rank=dist.rank, dist_world=dist.world_size,
        seed=cfg.seed,
    )
    eval_loader = make_loader(make_dataset(eval_data, eval_data.clips, model, seconds), cfg.batch_size, train=False,
                              num_workers=cfg.num_workers)
    loss = DistillLoss(task, kd_lambda=1.0)
    optim = OptimConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs)
    meta = {"kind": "teacher", "name": cfg.teacher, "kwargs": kwargs, "classes": train_data.classes, "task": task,
            "dataset": cfg.dataset}
    trainer = Trainer(
        model, optim, steps_per_epoch=len(train_loader), out_dir=cfg.out, primary_metric=PRIMARY_METRIC[task],
        meta=meta, seed=cfg.seed, device=device, dist=dist,
        train_module=AugmentedForward(model, frame_level, mixstyle_p=cfg.mixstyle_p),
    )
    if cfg.resume:
        trainer.resume()

    def step(module, batch):
        wave, target = batch["audio"].to(device), batch["target"].to(device)
        params = mixup_params(len(wave), cfg.mixup, device) if cfg.mixup > 0 else None
        logits = module(wave, params)
        return loss(logits, mix(target, params) if params is not None else target)

    params = {**asdict(cfg), "task": task, "train_clips": len(train_data), "eval_clips": len(eval_data)}
    with tracked_run(f"train-teacher/{train_data.name}-{task}", run_name=f"{cfg.teacher} on {train_data.name}",
                     params=params, tracking_uri=cfg.tracking_uri, enabled=dist.is_main) as run:

        def epoch_end(epoch: int, record: dict) -> None:
            run.log_metrics(record, step=epoch)
            if on_epoch:
                on_epoch(epoch, record)

        history = trainer.fit(train_loader, step, lambda m: evaluate(m, eval_loader, device), on_epoch_end=epoch_end,
                              on_batch=on_batch)
        best = Path(cfg.out) / "best.pt"
        if dist.is_main and best.is_file():
            run.log_artifact(best, "checkpoint")
        return {"history": history, "best": trainer.best, "checkpoint": str(best), "metric": PRIMARY_METRIC[task],
                "run_id": run.run_id, "main_process": dist.is_main}
