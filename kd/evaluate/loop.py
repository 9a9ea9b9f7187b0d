"""The one loop that runs a model over a loader of clips, and the scores of what it returns.

Training evaluates its model each epoch (:func:`evaluate`), reporting draws from its logits (:func:`predict`), and
``kd eval`` and ``kd export``'s int8 check run a :class:`kd.deploy.predict.Predictor` (PyTorch or ONNX Runtime)
through the same :func:`run_loader`, so every number kd reports comes from one loop and one scoring call. A
loader here is a ``DataLoader`` over a :class:`kd.train.loaders.ClipDataset` (batches with ``audio`` and
``index``; ``loader.dataset`` knows its clips, their dataset and its ``frames_per_second``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kd.tasks import Task

__all__ = ["LogitsOf", "evaluate", "predict", "run_loader", "score"]

LogitsOf = Callable[[torch.Tensor], np.ndarray]  # a batch of waveforms [B, N] -> its logits as float32 NumPy


def run_loader(logits_of: LogitsOf, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """``logits_of`` each batch of the loader: the logits of its clips and the clip indices they belong to."""
    outputs, indices = [], []
    for batch in loader:
        outputs.append(logits_of(batch["audio"]))
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


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """The task's metrics of ``model`` on the loader's clips (see :func:`score`)."""
    return score(loader, *predict(model, loader, device))
