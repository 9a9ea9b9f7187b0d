"""Torch datasets over ``kd.data`` clips, joined with stored teacher logits by clip id.

Design (after lhotse): the sampler only sees indices; the dataset does the I/O once per batch through
``__getitems__`` (which torch's DataLoader calls with a whole batch of indices): each clip's audio is
decoded, and the stored logits of the whole batch are read with **one** ``LogitStore.read``. The store is
opened lazily inside each DataLoader worker process, never in the parent before forking.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kd.align import align_frames

__all__ = ["ClipDataset", "DistributedWeightedSampler", "TeacherTargets", "balanced_sample_weights"]


@dataclass(frozen=True)
class TeacherTargets:
    """Which stored logits a dataset attaches: an ensemble view over ``teachers`` of one store."""

    store_url: str
    teachers: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    space: str = "logit"
    activation: str = "sigmoid"
    level: str = "clip"
    frames_per_second: float | None = None  # of the stored frame logits, for alignment


class ClipDataset(torch.utils.data.Dataset):
    """Clips at a model's sample rate and length, with hard targets and, optionally, teacher logits.

    Each item is a dict: ``audio`` ``[N]``, ``target`` (one-hot/multi-hot ``[C]``, or ``[T, C]`` frame
    labels at ``frames_per_second`` for SED), ``index``, ``device`` (recording device or ``""``) and, with
    ``teacher`` set, ``teacher`` logits (``[C]``, or ``[T, C]`` aligned to the model's frames).

    A clip whose audio cannot be decoded is left out of its batch with a warning (``kd teach`` already
    recorded such clips, and ``kd distill`` drops clips without logits before training).
    """

    def __init__(
        self,
        data: Any,
        clips: Sequence[Any],
        *,
        sample_rate: int,
        seconds: float,
        frames_per_second: float | None = None,
        num_frames: int | None = None,
        teacher: TeacherTargets | None = None,
    ) -> None:
        self.data, self.clips = data, list(clips)
        self.sample_rate, self.seconds = sample_rate, seconds
        self.frames_per_second, self.num_frames = frames_per_second, num_frames
        self.teacher = teacher
        self.ids = np.array([c.id for c in self.clips])  # a NumPy id array takes the store's vectorised lookup
        self._store = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None  # each worker process opens its own handle
        return state

    @property
    def store(self):
        if self._store is None:
            from logit_store import LogitStore

            self._store = LogitStore.open(self.teacher.store_url, mode="r")
        return self._store

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        items = self.__getitems__([index])
        if not items:
            raise IndexError(f"clip {self.clips[index].id} could not be decoded")
        return items[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        from kd.data import AudioError

        items = []
        for i in indices:
            clip = self.clips[i]
            try:
                audio = self.data.load_audio(clip, self.sample_rate, self.seconds)
            except AudioError as e:
                warnings.warn(f"skipping clip {clip.id}: {e}", stacklevel=2)
                continue
            items.append({
                "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
                "target": torch.from_numpy(self._target(clip)),
                "index": i,
                "device": clip.device or "",
            })
        if self.teacher is not None and items:
            logits = self.teacher_logits(self.ids[[item["index"] for item in items]])
            for item, row in zip(items, logits):
                item["teacher"] = row
        return items

    def _target(self, clip) -> np.ndarray:
        if self.frames_per_second is not None:
            return np.asarray(self.data.frame_targets(clip, self.frames_per_second, self.num_frames), np.float32)
        return np.asarray(self.data.targets(clip), dtype=np.float32)

    def teacher_logits(self, ids: np.ndarray) -> torch.Tensor:
        """The stored (ensemble) logits of ``ids`` in one store read, frame logits aligned to the model's frames."""
        t = self.teacher
        logits = torch.from_numpy(
            self.store.read(ids, teachers=list(t.teachers), weights=None if t.weights is None else list(t.weights),
                            space=t.space, activation=t.activation, level=t.level)
        )
        if t.level == "frame":
            logits = align_frames(logits, t.frames_per_second, self.frames_per_second, self.num_frames)
        return logits


def balanced_sample_weights(label_sets: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """EfficientAT's AudioSet balancing: class weight ``1000 / (count + 100)``, clip weight = sum over its labels.

    Clips without any label get the smallest class weight, so they are still drawn now and then.
    """
    counts = np.zeros(num_classes)
    for labels in label_sets:
        counts[list(labels)] += 1
    class_weight = 1000.0 / (counts + 100.0)
    floor = class_weight.min()
    weights = [class_weight[list(labels)].sum() if len(labels) else floor for labels in label_sets]
    return torch.tensor(weights, dtype=torch.double)


class DistributedWeightedSampler(torch.utils.data.Sampler[int]):
    """Weighted sampling with replacement shared out over ``torchrun`` ranks.

    Every rank draws the same epoch-seeded sample for the whole job and keeps every ``world``-th index of it,
    so the ranks together see what one process with a ``WeightedRandomSampler`` would, without overlap.
    """

    def __init__(self, weights: torch.Tensor, num_samples: int, rank: int, world: int, seed: int = 0) -> None:
        self.weights, self.rank, self.world, self.seed = weights, rank, world, seed
        self.per_rank = -(-num_samples // world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.world, replacement=True, generator=generator)
        return iter(draw[self.rank::self.world].tolist())
