"""The training engine shared by ``kd train-teacher`` and ``kd distill``.

It owns what every run needs and nothing task-specific: AdamW with the warm-up/ramp-down schedule of
EfficientAT, gradient clipping, AMP on CUDA, one checkpoint per epoch (plus the best one), an exact
``--resume`` and DistributedDataParallel when started by ``torchrun``. The task-specific parts arrive as
two functions: ``step(model, batch) -> LossTerms`` and ``evaluate(model) -> metrics``.

Exact resume: every epoch starts by seeding torch, NumPy and Python from ``(seed, epoch)``, so shuffling,
DataLoader worker seeds and augmentation draws of epoch ``e`` do not depend on whether epochs ``< e``
ran in this process or in an earlier one that was killed; with the optimizer, scheduler and AMP-scaler
states restored from the checkpoint, a resumed run continues bit for bit (on CPU).

Checkpoint averaging (``average_from``): the mean of the weights after each epoch from that one to the last
(stochastic weight averaging with one snapshot per epoch, Izmailov et al. 2018, as PaSST's recipe and the top
DCASE Task 1 systems of 2024-25 use it for teachers and students). The running mean is part of every epoch's
checkpoint, so a resumed run averages alike; after the last epoch the averaged weights get their own BatchNorm
statistics (the running ones belong to no averaged model), are evaluated and saved as ``averaged.pt``, the
checkpoint the run hands on.
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kd.core.devices import DistEnv
from kd.core.memory import keep_freed_memory
from kd.train.loss import LossTerms
from kd_errors import KdError
from layers import read_checkpoint

__all__ = ["OptimConfig", "Trainer", "WarmupRampDown"]


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule: AdamW, exponential warm-up, then a linear ramp-down to ``final_lr_factor``.

    The ramp-down starts at ``rampdown_start`` (a fraction of all steps) and ends with the last step, the
    shape EfficientAT uses (warm-up 8 of 200 epochs, ramp-down over the second half).

    ``bn_recalibration_batches``: before each evaluation, BatchNorm statistics are re-estimated with the
    final weights of the epoch over this many training batches ("precise BN", Wu & Johnson, 2021). The
    running averages lag behind weights that change quickly; in short runs (few steps per epoch, as on
    small datasets) that lag compounds through deep stacks of BatchNorm layers and wrecks eval-mode
    predictions. 0 keeps the running averages.
    """

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    rampdown_start: float = 0.5
    final_lr_factor: float = 0.01
    grad_clip: float = 5.0
    amp: bool = True
    bn_recalibration_batches: int = 32
    eval_every: int = 1
    average_from: int = 0  # the first epoch (from 1) whose weights the averaged model takes; 0: no averaging

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0:
            raise KdError(f"epochs must be >= 1 and lr > 0, got epochs={self.epochs}, lr={self.lr}")
        if self.eval_every < 1:
            raise KdError(f"eval_every must be >= 1, got {self.eval_every}")
        if not 0 <= self.average_from <= self.epochs:
            raise KdError(f"averaging must start at an epoch from 1 to {self.epochs}, got {self.average_from}")

    @property
    def averaged_epochs(self) -> int:
        """How many epochs' weights the averaged model is the mean of (0: none)."""
        return 0 if not self.average_from else self.epochs - self.average_from + 1

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the run evaluates after its ``epoch``-th epoch (counted from 1)."""
        return epoch % self.eval_every == 0 or epoch == self.epochs


class WarmupRampDown:
    """Learning-rate factor per optimiser step (a picklable callable, so the scheduler state round-trips)."""

    def __init__(self, total_steps: int, warmup_steps: int, rampdown_start: float, final_factor: float) -> None:
        self.total, self.warmup = max(total_steps, 1), warmup_steps
        self.start, self.final = int(rampdown_start * total_steps), final_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return math.exp(-5.0 * (1.0 - step / self.warmup) ** 2)
        if step < self.start:
            return 1.0
        progress = min(1.0, (step - self.start) / max(self.total - self.start, 1))
        return 1.0 - (1.0 - self.final) * progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


StepFn = Callable[[nn.Module, Mapping[str, Any]], LossTerms]
EvalFn = Callable[[nn.Module], dict[str, float]]
EpochEnd = Callable[[int, dict[str, float]], None]


def settings_as_of_now(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``OptimConfig`` with the settings added since it was written at their defaults: the run
    behaved as those defaults do, so it resumes under them."""
    return {**{f.name: f.default for f in fields(OptimConfig)}, **saved}


class Trainer:
    """Runs epochs of ``step`` over a loader, evaluates, checkpoints, resumes.

    Args:
        model: the trainable model; its state dict is what checkpoints hold.
        train_module: what ``step`` calls (default ``model``): a wrapper running frontend, augmentations and
            model in one ``forward``, so that DistributedDataParallel (applied here when several processes
            run) sees every parameter use in one call.
        out_dir: where ``last.pt`` and ``best.pt`` go.
        primary_metric: the evaluation metric that decides ``best.pt`` (higher is better).
        meta: JSON-like description saved into every checkpoint (what to rebuild the model from).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: OptimConfig,
        *,
        steps_per_epoch: int,
        out_dir: str | os.PathLike,
        primary_metric: str,
        meta: Mapping[str, Any],
        seed: int = 0,
        device: torch.device | None = None,
        dist: DistEnv | None = None,
        train_module: nn.Module | None = None,
    ) -> None:
        self.cfg, self.seed, self.meta = cfg, seed, dict(meta)
        self.device = device or torch.device("cpu")
        self.dist = dist or DistEnv()
        self.model = model.to(self.device)
        self.train_model: nn.Module = (train_module or model).to(self.device)
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.train_model, device_ids=ids)
        self.out_dir, self.primary_metric = Path(out_dir), primary_metric
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        total = cfg.epochs * steps_per_epoch
        schedule = WarmupRampDown(total, int(cfg.warmup_epochs * steps_per_epoch), cfg.rampdown_start, cfg.final_lr_factor)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch = 0
        self.best: float | None = None
        self.history: list[dict[str, float]] = []
        self.average: dict[str, torch.Tensor] | None = None  # running mean of the weights since average_from
        self.averaged_metrics: dict[str, float] | None = None

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "seed": self.seed,
            "optim_config": asdict(self.cfg),
            "meta": self.meta,
            "average": self.average,
            "averaged_metrics": self.averaged_metrics,
        }

    def save(self, name: str) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / name
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)  # a run killed while saving keeps the previous checkpoint intact
        return path

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Continue from ``path`` (default ``out_dir/last.pt``); returns False when there is nothing to resume."""
        path = Path(path) if path else self.out_dir / "last.pt"
        if not path.is_file():
            return False
        state = read_checkpoint(path, map_location=self.device)
        saved = settings_as_of_now(state["optim_config"]) if "optim_config" in state else {}  # not a run's
        changed = [k for k, v in asdict(self.cfg).items() if saved.get(k) != v]
        changed += ["seed"] if state.get("seed") != self.seed else []
        if changed:
            raise KdError(f"{path} was written with other training settings ({', '.join(changed)}); resume needs "
                          "the same options")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], list(state["history"])
        self.average, self.averaged_metrics = state.get("average"), state.get("averaged_metrics")
        return True

    # --- loop -----------------------------------------------------------------------------------------------------
    def fit(
        self,
        loader: Iterable[Mapping[str, Any]],
        step: StepFn,
        evaluate: EvalFn,
        on_epoch_end: EpochEnd | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train from ``self.epoch`` to ``cfg.epochs``; returns the per-epoch history (train loss + eval metrics)."""
        keep_freed_memory()
        while self.epoch < self.cfg.epochs:
            seed_everything(epoch_seed(self.seed, self.epoch))
            for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self.epoch)
            record = self.train_epoch(loader, step, on_batch)
            if self.cfg.evaluates_after(self.epoch + 1):
                self._recalibrate_batchnorm(loader, step)
                self.model.eval()
                with torch.inference_mode():
                    record.update(evaluate(self.model))
            self.epoch += 1
            record["epoch"] = float(self.epoch)
            self.history.append(record)
            improved = self._update_best(record)
            self._accumulate_average()
            if self.dist.is_main:
                self.save("last.pt")
                if improved:
                    self.save("best.pt")
                if on_epoch_end:
                    on_epoch_end(self.epoch, record)
        if self.cfg.average_from and self.averaged_metrics is None:
            self._finish_average(loader, step, evaluate)
        return self.history

    # --- checkpoint averaging ---------------------------------------------------------------------------------------
    def _accumulate_average(self) -> None:
        """Fold this epoch's weights into the running mean, from epoch ``average_from`` on."""
        start = self.cfg.average_from
        if not start or self.epoch < start:
            return
        n = self.epoch - start  # epochs already in the mean
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.average is None:
            self.average = current
            return
        for key, value in current.items():
            if value.is_floating_point():
                self.average[key] += (value - self.average[key]) / (n + 1)
            else:
                self.average[key] = value  # counters (BatchNorm's num_batches_tracked)

    def _finish_average(self, loader, step: StepFn, evaluate: EvalFn) -> None:
        """The averaged weights with their own BatchNorm statistics, evaluated, saved as ``averaged.pt``."""
        self.model.load_state_dict(self.average)
        self._recalibrate_batchnorm(loader, step, batches=self.cfg.bn_recalibration_batches or 32)
        self.model.eval()
        with torch.inference_mode():
            self.averaged_metrics = dict(evaluate(self.model))
        self.average = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.dist.is_main:
            self.save("averaged.pt")  # its "model": the averaged weights; "averaged_metrics": their scores
            self.save("last.pt")  # a resumed finished run finds the average done

    def _update_best(self, record: dict[str, float]) -> bool:
        score = record.get(self.primary_metric)
        improved = score is not None and (self.best is None or score > self.best)
        if improved:
            self.best = score
        return improved

    @torch.no_grad()
    def _recalibrate_batchnorm(self, loader, step: StepFn, batches: int | None = None) -> None:
        batches = self.cfg.bn_recalibration_batches if batches is None else batches
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or batches <= 0:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        self.train_model.train()
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            with torch.autocast(self.device.type, enabled=self.use_amp):
                step(self.train_model, batch)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum

    def train_epoch(self, loader, step: StepFn, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """One pass of optimiser steps over ``loader``; returns the mean losses and the last learning rate.

        ``on_batch(done, batches_per_epoch)`` follows every step (progress bars).
        """
        total = len(loader)
        self.train_model.train()
        sums: dict[str, float] = {"loss": 0.0, "hard_loss": 0.0}
        batches = 0
        for batch in loader:
            with torch.autocast(self.device.type, enabled=self.use_amp):
                terms = step(self.train_model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms.total).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            sums["loss"] += terms.total.item()
            sums["hard_loss"] += terms.hard.item()
            if terms.soft is not None:
                sums["soft_loss"] = sums.get("soft_loss", 0.0) + terms.soft.item()
            batches += 1
            if on_batch:
                on_batch(batches, total)
        if batches == 0:
            raise KdError("the training split yielded no batch (is it empty, or smaller than the batch size?)")
        out = {f"train_{k}": v / batches for k, v in sums.items()}
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out
