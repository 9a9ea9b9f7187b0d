"""What training a teacher and distilling a student share: the forward with augmentations, loaders, evaluation.

A model here is any teacher or student of the registries: it has ``sample_rate``, ``frames_per_second``
(None for clip-level models), a ``frontend`` (waveform -> spectrogram, augmenting in training mode) and
``forward_spectrogram``. Teachers return ``TeacherOutput(clip, frame)``, students a tensor; :func:`logits_of`
picks what a task trains on.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from kd import metrics
from kd.augment import MixupParams, freq_mixstyle, mix
from kd.dataset import ClipDataset, DistributedWeightedSampler, TeacherTargets, balanced_sample_weights

__all__ = [
    "PRIMARY_METRIC",
    "AugmentedForward",
    "evaluate",
    "logits_of",
    "make_loader",
    "model_frames",
]

PRIMARY_METRIC = {"asc": "accuracy", "tagging": "mAP", "sed": "frame_mAP"}


def logits_of(output: Any, frame_level: bool) -> torch.Tensor:
    """The tensor a task trains on: frame logits for SED, clip logits otherwise."""
    if isinstance(output, torch.Tensor):
        return output
    return output.frame if frame_level else output.clip


@torch.no_grad()
def model_frames(model: nn.Module, seconds: float) -> int | None:
    """How many output frames ``model`` gives for ``seconds`` of audio (None for clip-level models)."""
    if not model.frames_per_second:
        return None
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    out = model(torch.zeros(1, int(round(seconds * model.sample_rate)), device=param.device))
    model.train(was_training)
    return logits_of(out, True).shape[1]


class AugmentedForward(nn.Module):
    """Frontend, spectrogram augmentations (Freq-MixStyle, mixup) and model as one forward.

    One module, so that DistributedDataParallel sees every use of the parameters in a single call.
    """

    def __init__(self, model: nn.Module, frame_level: bool, mixstyle_p: float = 0.0, mixstyle_alpha: float = 0.3):
        super().__init__()
        self.model, self.frame_level = model, frame_level
        self.mixstyle_p, self.mixstyle_alpha = mixstyle_p, mixstyle_alpha

    def forward(self, waveform: torch.Tensor, mixup: MixupParams | None = None) -> torch.Tensor:
        spec = self.model.frontend(waveform)
        if self.mixstyle_p > 0:
            spec = freq_mixstyle(spec, alpha=self.mixstyle_alpha, p=self.mixstyle_p)
        if mixup is not None:
            spec = mix(spec, mixup)
        return logits_of(self.model.forward_spectrogram(spec), self.frame_level)


def make_dataset(
    data, clips, model: nn.Module, seconds: float, teacher: TeacherTargets | None = None
) -> ClipDataset:
    frame_level = data.task == "sed"
    return ClipDataset(
        data, clips, sample_rate=model.sample_rate, seconds=seconds,
        frames_per_second=model.frames_per_second if frame_level else None,
        num_frames=model_frames(model, seconds) if frame_level else None,
        teacher=teacher,
    )


def make_loader(
    dataset: ClipDataset, batch_size: int, *, train: bool, num_workers: int = 0, balanced: bool = False,
    dist_rank: int = 0, dist_world: int = 1, seed: int = 0,
) -> DataLoader:
    """Shuffled (or class-balanced, the AudioSet way) batches for training; ordered batches for evaluation.

    Under ``torchrun`` (``dist_world > 1``) each rank gets its share of every epoch's draw.
    """
    sampler = None
    weights = balanced_sample_weights([c.labels for c in dataset.clips], dataset.data.num_classes) if balanced else None
    if train and balanced and dist_world > 1:
        sampler = DistributedWeightedSampler(weights, len(dataset), dist_rank, dist_world, seed=seed)
    elif train and dist_world > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=dist_world, rank=dist_rank, shuffle=True,
                                                      seed=seed)
    elif train and balanced:
        sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
    elif train:
        sampler = RandomSampler(dataset)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=train and len(dataset) > batch_size,
        num_workers=num_workers, persistent_workers=False, pin_memory=torch.cuda.is_available(),
    )


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Scores (softmax for ASC, sigmoid otherwise is left to the caller) and the clip indices they belong to."""
    frame_level = loader.dataset.frames_per_second is not None
    model.eval()
    outputs, indices = [], []
    for batch in loader:
        out = logits_of(model(batch["audio"].to(device)), frame_level)
        outputs.append(out.float().cpu().numpy())
        indices.append(batch["index"].numpy())
    return np.concatenate(outputs), np.concatenate(indices)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """The task's metrics on the loader's clips: accuracy per device (ASC), mAP (tagging), frame mAP + PSDS (SED)."""
    dataset: ClipDataset = loader.dataset
    data = dataset.data
    logits, indices = predict(model, loader, device)
    clips = [dataset.clips[i] for i in indices]
    if data.task == "asc":
        labels = np.array([c.labels[0] for c in clips])
        return metrics.asc_metrics(logits, labels, [c.device or "" for c in clips], seen_devices=data.seen_devices)
    probs = 1.0 / (1.0 + np.exp(-logits))
    if data.task == "tagging":
        return metrics.tagging_metrics(probs, np.stack([data.targets(c) for c in clips]))
    return sed_metrics(data, clips, probs, dataset.frames_per_second)


def sed_metrics(data, clips: Sequence[Any], probs: np.ndarray, fps: float) -> dict[str, float]:
    targets = np.stack([data.frame_targets(c, fps, probs.shape[1]) for c in clips])
    out = {"frame_mAP": metrics.frame_map(probs, targets)}
    truth = {c.id: merge_overlapping([(e.onset, e.offset, data.classes[e.label]) for e in c.events]) for c in clips}
    durations = {c.id: c.duration or probs.shape[1] / fps for c in clips}
    out.update(metrics.psds({c.id: p for c, p in zip(clips, probs)}, fps, truth, durations, data.classes))
    return out


def merge_overlapping(events: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Join overlapping or touching events of one class (PSDS counts each ground-truth event once)."""
    merged: list[tuple[float, float, str]] = []
    for onset, offset, name in sorted(events, key=lambda e: (e[2], e[0])):
        if merged and merged[-1][2] == name and onset <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], offset), name)
        else:
            merged.append((onset, offset, name))
    return merged
