"""The one loop that runs a model over a loader of clips, and the scores of what it returns.

Training scores its model's logits (:func:`predict`, then :func:`score`) when it evaluates and reports, and
``kd eval`` and ``kd export``'s int8 check run a :class:`kd.deploy.predict.Predictor` (PyTorch or ONNX Runtime)
through the same :func:`run_loader` (a device-specific checkpoint: each clip through its device's model), so every
number kd reports comes from one loop and one scoring call. A loader here is a ``DataLoader`` over a
:class:`kd.train.loaders.ClipDataset` (batches with ``audio``, ``index`` and ``device``; ``loader.dataset`` knows its
clips, their dataset and its ``frames_per_second``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kd.tasks import Task

__all__ = ["LogitsOf", "predict", "run_loader", "score"]

LogitsOf = Callable[[torch.Tensor], np.ndarray]  # a batch of waveforms [B, N] -> its logits as float32 NumPy


def run_loader(logits_of: LogitsOf, loader: DataLoader,
               by_device: Mapping[str, LogitsOf] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``logits_of`` each batch of the loader: the logits of its clips and the clip indices they belong to.

    Args:
        by_device: models of single recording devices (a device-specific checkpoint): a clip recorded by one of
            them gets its logits from that device's model, every other clip from ``logits_of``.
    """
    outputs, indices = [], []
    for batch in loader:
        audio = batch["audio"]
        if by_device:
            devices = np.asarray(batch["device"], dtype=object)
            logits = None
            for device in dict.fromkeys(devices):
                rows = np.flatnonzero(devices == device)
                part = by_device.get(device, logits_of)(audio[torch.from_numpy(rows)])
                if logits is None:
                    logits = np.empty((len(audio), *part.shape[1:]), part.dtype)
                logits[rows] = part
            outputs.append(logits)
        else:
            outputs.append(logits_of(audio))
        indices.append(batch["index"].numpy())
    return np.concatenate(outputs), np.concatenate(indices)


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits of the loader's clips (frame logits for frame-level tasks) and the clip indices they belong to."""
    task: Task = loader.dataset.data.task
    model.eval()
    return run_loader(lambda audio: task.logits(model(audio.to(device, non_blocking=True))).float().cpu().numpy(),
                      loader)


def score(loader: DataLoader, logits: np.ndarray, indices: np.ndarray) -> dict[str, Any]:
    """The task's metrics of ``logits`` of the loader's clips ``indices``: accuracy per device (ASC), mAP (tagging),
    frame mAP + PSDS (SED)."""
    dataset = loader.dataset
    clips = [dataset.clips[i] for i in indices]
    return dataset.data.task.metrics(dataset.data, clips, logits, dataset.frames_per_second)
