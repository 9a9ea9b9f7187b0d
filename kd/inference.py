"""``kd eval`` and ``kd predict``: a trained student's metrics on a dataset split, its predictions for audio files."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kd.checkpoints import load_student
from kd.data import load_audio, open_dataset
from kd.forward import evaluate
from kd.loaders import make_dataset, make_loader
from kd.tasks import get_task
from kd.train import select_device
from kd_errors import KdError

__all__ = ["detect_events", "evaluate_checkpoint", "predict_files"]


def evaluate_checkpoint(checkpoint: str, dataset: str, split: str = "eval", device: str = "auto",
                        batch_size: int = 32) -> dict[str, float]:
    """The task metrics of a saved student on ``split`` of ``dataset`` (what ``kd distill`` reports per epoch)."""
    model, meta = load_student(checkpoint)
    data = open_dataset(dataset, split=split)
    if data.classes != list(meta["classes"]):
        raise KdError(f"{checkpoint} was trained on other classes than {dataset} has")
    dev = select_device(device)
    loader = make_loader(make_dataset(data, data.clips, model.to(dev), meta["seconds"]), batch_size, train=False)
    return evaluate(model, loader, dev)


def predict_files(checkpoint: str, files: Sequence[str], top: int = 3, threshold: float = 0.5,
                  device: str = "auto") -> list[dict[str, Any]]:
    """Top classes per file (clip students) or detected events with onsets/offsets (frame-wise students)."""
    model, meta = load_student(checkpoint)
    task = get_task(meta["task"])
    dev = select_device(device)
    model.to(dev)
    classes, results = list(meta["classes"]), []
    for path in files:
        audio = load_audio(path, model.sample_rate, None, clip_id=str(path))
        with torch.inference_mode():
            logits = task.logits(model(torch.from_numpy(audio)[None].to(dev)))[0].float().cpu()
        probs = task.probabilities(logits)
        if task.frame_level:
            results.append({"file": str(path),
                            "events": detect_events(probs.numpy(), model.frames_per_second, classes, threshold)})
            continue
        best = torch.topk(probs, min(top, len(classes)))
        results.append({"file": str(path), "top": [(classes[i], float(p)) for p, i in zip(best.values, best.indices)]})
    return results


def detect_events(probs: np.ndarray, fps: float, classes: Sequence[str],
                  threshold: float) -> list[tuple[float, float, str]]:
    """Runs of frames above ``threshold``, as ``(onset, offset, class)`` sorted by onset."""
    events = []
    for c, name in enumerate(classes):
        active = np.concatenate([[False], probs[:, c] > threshold, [False]])
        edges = np.flatnonzero(active[1:] != active[:-1])
        events += [(on / fps, off / fps, name) for on, off in zip(edges[::2], edges[1::2])]
    return sorted(events)
