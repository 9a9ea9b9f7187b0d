"""Training and evaluation batches: ``kd.data`` clips joined with stored teacher logits by clip id, and their loaders.

Design (after lhotse): the sampler only sees indices; the dataset does the I/O once per batch through
``__getitems__`` (which torch's DataLoader calls with a whole batch of indices): each clip's audio is
decoded, and the stored logits of the whole batch are read with **one** ``LogitStore.read``. The store is
opened lazily inside each DataLoader worker process, never in the parent before forking.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler

from kd.core.views import ImpulseResponses, ViewConfig, apply_view, replay_params, view_events
from kd.data import AudioError
from kd.options import Space, ViewMode
from kd.train.align import align_frames
from kd.train.forward import model_frames
from kd_errors import KdError
from logit_store import LogitStore

__all__ = [
    "ClipDataset",
    "DistributedWeightedSampler",
    "MixedBatchSampler",
    "MixedDataset",
    "TeacherTargets",
    "balanced_sample_weights",
    "make_dataset",
    "make_loader",
]


@dataclass(frozen=True)
class TeacherTargets:
    """Which stored logits a dataset attaches: an ensemble view over ``teachers`` of one store."""

    store_url: str
    teachers: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    space: Space = "logit"
    activation: str = "sigmoid"
    level: str = "clip"
    frames_per_second: float | None = None  # of the stored frame logits, for alignment
    views: ViewMode = "clean"  # which stored view each clip trains on (see ClipDataset._views)
    num_views: int = 1


AUDIO_CACHE_BYTES = 1 << 30  # decoded clips a dataset keeps in the training process (see ClipDataset)


class ClipDataset(torch.utils.data.Dataset):
    """Clips at a model's sample rate and length, with hard targets and, optionally, teacher logits.

    Each item is a dict: ``audio`` ``[N]``, ``target`` (one-hot/multi-hot ``[C]``, or ``[T, C]`` frame
    labels at ``frames_per_second`` for SED), ``labelled`` (False for a transfer clip, whose ``target`` is a
    zero placeholder that no loss may read), ``index``, ``device`` (recording device or ``""``) and, with
    ``teacher`` set, ``teacher`` logits (``[C]``, or ``[T, C]`` aligned to the model's frames).

    A clip whose audio cannot be decoded is left out of its batch with a warning (``kd teach`` already
    recorded such clips, and ``kd distill`` drops clips without logits before training); indexing it alone
    raises its :class:`kd.data.AudioError`.

    Decoded clips are kept in memory, up to ``audio_cache_bytes``, when the training process decodes them itself
    (no DataLoader workers, whose copies would end with each epoch): every epoch, the precise-BN pass and every
    evaluation decode and resample the same clips again, a tenth of a small model's step on a CPU.
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
        num_classes: int | None = None,
        impulse_responses: ImpulseResponses | None = None,
        audio_cache_bytes: int = AUDIO_CACHE_BYTES,
    ) -> None:
        self.data, self.clips = data, list(clips)
        self.num_classes = data.num_classes if num_classes is None else num_classes
        self.sample_rate, self.seconds = sample_rate, seconds
        self.frames_per_second, self.num_frames = frames_per_second, num_frames
        self.teacher, self.impulse_responses = teacher, impulse_responses
        self.ids = np.array([c.id for c in self.clips])  # a NumPy id array takes the store's vectorised lookup
        self._store = None
        self.audio_cache_bytes = audio_cache_bytes
        self._audio_cache: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None  # each worker process opens its own handle
        state["_audio_cache"] = {}
        return state

    @property
    def store(self) -> LogitStore:
        if self._store is None:
            self._store = LogitStore.open(self.teacher.store_url, mode="r")
        return self._store

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        views = self._views([index])
        return self._with_teacher([self._item(index, *views[0])])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        items = []
        for i, (view, params) in zip(indices, self._views(indices)):
            try:
                items.append(self._item(i, view, params))
            except AudioError as e:
                warnings.warn(f"skipping clip {self.clips[i].id}: {e}", stacklevel=2)
        return self._with_teacher(items)

    def _views(self, indices: Sequence[int]) -> list[tuple[int, np.ndarray | None]]:
        """The stored view whose logits each clip trains on, and the parameters of the view to replay.

        ``consistent``: a random view, replayed, its logits the target. ``clean-targets``: a random view replayed
        with the clean view's logits (the consistent run's inputs with offline KD's targets: what matching the
        view's logits adds). ``random``: a random view's logits for the clean input. ``clean``: view 0.
        """
        t = self.teacher
        if t is None or t.views == "clean" or t.num_views == 1:
            return [(0, None)] * len(indices)
        picks = torch.randint(t.num_views, (len(indices),)).numpy()  # seeded per epoch: a resume draws alike
        if t.views == "random":
            return [(int(k), None) for k in picks]
        stored = self.store.view_params(self.ids[list(indices)], views=picks)
        config, names = ViewConfig.from_dict(self.store.views), self.store.view_param_names
        params = [replay_params(config, p, names, self.clips[i].device) for i, p in zip(indices, stored)]
        targets = picks if t.views == "consistent" else np.zeros_like(picks)
        return [(int(k), p) for k, p in zip(targets, params)]

    def _audio(self, index: int) -> np.ndarray:
        """The decoded clip (a copy of the cached one where the cache holds it)."""
        cached = self._audio_cache.get(index)
        if cached is not None:
            return cached.copy()
        audio = self.data.load_audio(self.clips[index], self.sample_rate, self.seconds)
        in_worker = torch.utils.data.get_worker_info() is not None
        if not in_worker and audio.nbytes * (len(self._audio_cache) + 1) <= self.audio_cache_bytes:
            self._audio_cache[index] = audio.copy()
        return audio

    def _item(self, index: int, view: int = 0, params: np.ndarray | None = None) -> dict[str, Any]:
        clip = self.clips[index]
        audio = self._audio(index)
        if params is not None:
            audio = apply_view(audio, params, self.sample_rate, self.impulse_responses)
            clip = replace(clip, events=tuple(view_events(clip.events, params, self.seconds)))
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
            "target": torch.from_numpy(self._target(clip)),
            "labelled": clip.labelled,
            "index": index,
            "view": view,
            "device": clip.device or "",
        }

    def _with_teacher(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.teacher is not None and items:
            views = np.array([item["view"] for item in items])
            logits = self.teacher_logits(self.ids[[item["index"] for item in items]], views)
            for item, row in zip(items, logits):
                item["teacher"] = row
        return items

    def _target(self, clip) -> np.ndarray:
        if not clip.labelled:
            shape = (self.num_classes,) if self.frames_per_second is None else (self.num_frames, self.num_classes)
            return np.zeros(shape, np.float32)
        if self.frames_per_second is not None:
            return np.asarray(self.data.frame_targets(clip, self.frames_per_second, self.num_frames), np.float32)
        return np.asarray(self.data.targets(clip), dtype=np.float32)

    def teacher_logits(self, ids: np.ndarray, views: np.ndarray | None = None) -> torch.Tensor:
        """The stored (ensemble) logits of ``ids`` (of each one's view) in one store read, frame logits aligned
        to the model's frames."""
        t = self.teacher
        logits = torch.from_numpy(
            self.store.read(ids, teachers=list(t.teachers), weights=None if t.weights is None else list(t.weights),
                            space=t.space, activation=t.activation, level=t.level,
                            views=np.zeros(len(ids), np.int64) if views is None else views)
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


def make_dataset(data: Any, clips: Sequence[Any], model: torch.nn.Module, seconds: float,
                 teacher: TeacherTargets | None = None, labels_from: Any = None,
                 impulse_responses: ImpulseResponses | None = None) -> ClipDataset:
    """The clips at ``model``'s sample rate, ``seconds`` long, with frame targets on its frame grid for SED.

    ``labels_from``: the labelled dataset whose task and classes the (unlabelled) ``data`` is trained for.
    """
    labels_from = labels_from or data
    frame_level = labels_from.task.frame_level
    return ClipDataset(
        data, clips, sample_rate=model.sample_rate, seconds=seconds,
        frames_per_second=model.frames_per_second if frame_level else None,
        num_frames=model_frames(model, seconds) if frame_level else None,
        teacher=teacher, num_classes=labels_from.num_classes, impulse_responses=impulse_responses,
    )


def make_loader(
    dataset: ClipDataset, batch_size: int, *, train: bool, decode_workers: int = 0, dist_rank: int = 0,
    dist_world: int = 1, seed: int = 0, transfer: Sequence[ClipDataset] = (), transfer_ratio: float = 1.0,
) -> DataLoader:
    """Batches for training (shuffled, or class-balanced where the task asks for it) or evaluation (in order).

    Under ``torchrun`` (``dist_world > 1``) each rank gets its share of every epoch's draw. With ``transfer``
    datasets, every training batch holds labelled clips and transfer clips in ``transfer_ratio`` (see
    :class:`MixedBatchSampler`).
    """
    options = {"num_workers": decode_workers, "persistent_workers": False, "pin_memory": torch.cuda.is_available()}
    sampler = training_sampler(dataset, dist_rank, dist_world, seed) if train else None
    if train and transfer:
        mixed = MixedDataset([dataset, *transfer])
        batches = MixedBatchSampler(sampler, len(mixed) - len(dataset), len(dataset), batch_size, transfer_ratio,
                                    dist_rank, dist_world)
        return DataLoader(mixed, batch_sampler=batches, **options)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      drop_last=train and len(dataset) > batch_size, **options)


def training_sampler(dataset: ClipDataset, rank: int = 0, world: int = 1, seed: int = 0) -> torch.utils.data.Sampler:
    """The draw of one training epoch: class-balanced with replacement (AudioSet) or a shuffle, shared over ranks."""
    if dataset.data.task.balanced_sampling:
        weights = balanced_sample_weights([c.labels for c in dataset.clips], dataset.data.num_classes)
        if world > 1:
            return DistributedWeightedSampler(weights, len(dataset), rank, world, seed=seed)
        return WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
    if world > 1:
        return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return RandomSampler(dataset)


class MixedDataset(torch.utils.data.Dataset):
    """Several :class:`ClipDataset` one after another, each batch's I/O done per part (one store read each)."""

    def __init__(self, parts: Sequence[ClipDataset]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        indices = np.asarray(indices)
        part_of = np.searchsorted(self.offsets, indices, side="right") - 1
        items = []
        for part in np.unique(part_of):
            local = (indices[part_of == part] - self.offsets[part]).tolist()
            items += self.parts[part].__getitems__(local)
        return items


class MixedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of labelled clips (the task's draw) and transfer clips in a fixed ratio.

    ``ratio`` transfer clips per labelled clip: ``round(batch_size * ratio / (1 + ratio))`` of each batch are
    transfer clips (at least one labelled clip stays). An epoch is one pass of the labelled draw; transfer
    clips follow shuffled passes of their own (drawn from torch's global generator, which the trainer seeds
    per epoch, so a resumed run draws the same), shared out over ``torchrun`` ranks like the labelled ones.
    Indices address a :class:`MixedDataset` of the labelled dataset followed by the transfer datasets.
    """

    def __init__(self, labelled: torch.utils.data.Sampler, transfer_size: int, labelled_size: int,
                 batch_size: int, ratio: float, rank: int = 0, world: int = 1) -> None:
        if ratio <= 0 or transfer_size < 1:
            raise KdError(f"a transfer set needs clips and a positive ratio, got {transfer_size} clips, ratio {ratio}")
        self.labelled, self.transfer_size, self.labelled_size = labelled, transfer_size, labelled_size
        self.num_transfer = min(batch_size - 1, round(batch_size * ratio / (1 + ratio)))
        self.num_labelled = batch_size - self.num_transfer
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.labelled, "set_epoch"):
            self.labelled.set_epoch(epoch)

    def __len__(self) -> int:
        return max(1, len(self.labelled) // self.num_labelled)

    def __iter__(self):
        labelled = list(self.labelled)
        transfer = self._transfer_stream()
        for b in range(len(self)):
            own = labelled[b * self.num_labelled:(b + 1) * self.num_labelled]
            yield own + [self.labelled_size + next(transfer) for _ in range(self.num_transfer)]

    def _transfer_stream(self):
        while True:
            order = torch.randperm(self.transfer_size)
            yield from (order[self.rank::self.world] if self.transfer_size >= self.world else order).tolist()
