"""``kd distill``: train a student from stored teacher logits.

Each training batch joins the clips' audio with their stored logits (one store read per batch, see
:mod:`kd.loaders`); the loss is ``kd_lambda * hard + (1 - kd_lambda) * soft`` (:mod:`kd.losses`) with the
task's defaults (:mod:`kd.tasks`). Without teachers (``--teachers none``) the same job trains on labels
alone: the baseline to compare against.

Transfer sets (Hinton et al.'s term): clips without labels that the teachers have labelled in the store
(``kd teach --transfer``), mixed into every training batch (``--transfer FORMAT:PATH``, ``--transfer-ratio``)
with the soft loss only. The unlabelled clips of the training split itself (manifest rows with an empty label)
join them. Their labels, if a transfer set has any (an AudioSet split), are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kd.complexity import complexity
from kd.data import Dataset, open_dataset
from kd.job import (
    BatchCallback,
    EpochCallback,
    TrainingJob,
    TrainingOptions,
    TrainingResult,
    build_job,
    open_splits,
    run_job,
)
from kd.loaders import TeacherTargets
from kd.losses import DistillLoss
from kd.tasks import Task
from kd_errors import KdError
from logit_store import LogitStore
from students import Student, create_student

__all__ = ["DistillConfig", "TeacherChoice", "distill", "prepare_distillation"]


@dataclass(frozen=True)
class TeacherChoice:
    """``NAME[,NAME...][:W,W...]`` or ``none``: which stored teachers to distil from, with ensemble weights."""

    names: tuple[str, ...] = ()
    weights: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> TeacherChoice:
        text = text.strip()
        if text.lower() in ("", "none"):
            return cls()
        names_part, _, weights_part = text.partition(":")
        names = tuple(n.strip() for n in names_part.split(",") if n.strip())
        weights = None
        if weights_part:
            try:
                weights = tuple(float(w) for w in weights_part.split(","))
            except ValueError:
                raise KdError(f"--teachers {text!r}: weights must be numbers, e.g. a,b:0.7,0.3") from None
            if len(weights) != len(names):
                raise KdError(f"--teachers {text!r}: {len(names)} teachers but {len(weights)} weights")
        return cls(names, weights)

    def __str__(self) -> str:
        if not self.names:
            return "none"
        return ",".join(self.names) + (":" + ",".join(f"{w:g}" for w in self.weights) if self.weights else "")


@dataclass(frozen=True, kw_only=True)
class DistillConfig(TrainingOptions):
    """A distillation run: the shared training options, plus the student, the store and the KD loss.

    Attributes:
        kd_lambda, temperature: the KD loss; ``None`` takes the task's default (:mod:`kd.tasks`).
        space: ensemble members are averaged as ``logit``s or as probabilities (``prob``).
        missing: training clips without stored logits are an ``error`` or are ``drop``ped.
        transfer: ``FORMAT:PATH`` of datasets whose clips the store holds logits for, used without labels.
        transfer_ratio: transfer clips per labelled clip in each batch.
    """

    student: str
    store: str | None = None
    teachers: TeacherChoice = field(default_factory=TeacherChoice)
    space: str = "logit"
    pretrained: str | None = None
    kd_lambda: float | None = None
    temperature: float | None = None
    missing: str = "error"
    transfer: tuple[str, ...] = ()
    transfer_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.teachers.names and not self.store:
            raise KdError("--teachers needs --store (or use --teachers none for the label-only baseline)")
        if self.missing not in ("error", "drop"):
            raise KdError(f"--missing must be error or drop, got {self.missing}")
        if self.space not in ("logit", "prob"):
            raise KdError(f"--space must be logit or prob, got {self.space}")
        if self.transfer and not self.teachers.names:
            raise KdError("--transfer clips have no labels: they need stored --teachers to learn from")
        if self.transfer_ratio <= 0:
            raise KdError(f"--transfer-ratio must be positive, got {self.transfer_ratio}")

    def with_task_defaults(self, task: Task) -> DistillConfig:
        return replace(self, kd_lambda=task.kd_lambda if self.kd_lambda is None else self.kd_lambda,
                       temperature=task.temperature if self.temperature is None else self.temperature)


@dataclass(frozen=True)
class StoreJoin:
    """The training clips that have stored logits, what to read for them, and where the logits came from."""

    clips: list[Any]
    transfer: list[tuple[Dataset, list[Any]]]
    targets: TeacherTargets
    clip_seconds: float | None
    provenance: dict[str, Any]


def transfer_sets(cfg: DistillConfig, data: Dataset) -> list[Dataset]:
    """The transfer sets of a run: ``--transfer`` datasets with labels dropped, and the split's own unlabelled clips."""
    sets = [open_dataset(spec).unlabelled() for spec in cfg.transfer]
    own = data.unlabelled_clips
    if own:
        sets.insert(0, data.subset(own))
    return sets


def join_store(cfg: DistillConfig, data: Dataset, transfer: list[Dataset]) -> StoreJoin:
    """Check that the store fits the dataset and covers its labelled and transfer clips; returns those to train on."""
    store = LogitStore.open(cfg.store, mode="r")
    unknown = [t for t in cfg.teachers.names if t not in store.teachers]
    if unknown:
        raise KdError(f"store {cfg.store} has no teacher {', '.join(unknown)} (it has: {', '.join(store.teachers)})")
    store.check_classes(data.classes)
    infos = {t: store.teacher_info(t) for t in cfg.teachers.names}
    task = data.task
    fps = None
    if task.frame_level:
        rates = {t: i.get("frames_per_second") for t, i in infos.items()}
        if not all(rates.values()) or len(set(rates.values())) != 1:
            raise KdError(f"{task} distillation needs frame-wise teachers with one frame rate; got {rates}")
        fps = next(iter(rates.values()))
    usable = set(store.clip_ids) - set().union(*(store.failures(t) for t in cfg.teachers.names))
    parts = [(data, data.labelled_clips), *((t, t.clips) for t in transfer)]
    missing = [c.id for _, clips in parts for c in clips if c.id not in usable]
    if missing and cfg.missing == "error":
        total = sum(len(clips) for _, clips in parts)
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise KdError(
            f"{len(missing)} of {total} training clips ({data.split} split and transfer sets) have no logits in "
            f"{cfg.store} ({shown}); teach them first, or pass --missing drop"
        )
    keep = [c for c in data.labelled_clips if c.id in usable]
    if not keep:
        raise KdError(f"no labelled {data.split} clip of {cfg.dataset} has logits in {cfg.store}")
    kept_transfer = [(t, [c for c in t.clips if c.id in usable]) for t in transfer]
    kept_transfer = [(t, clips) for t, clips in kept_transfer if clips]
    targets = TeacherTargets(
        store_url=cfg.store, teachers=cfg.teachers.names, weights=cfg.teachers.weights, space=cfg.space,
        activation=task.activation, level=task.level, frames_per_second=fps,
    )
    provenance = {"store_fingerprint": store.info().get("dataset_fingerprint"), "dropped_clips": len(missing),
                  "teacher_checkpoints": {t: i.get("checkpoint_sha256") for t, i in infos.items()},
                  "transfer_clips": sum(len(clips) for _, clips in kept_transfer),
                  "transfer_sets": {t.spec: t.fingerprint() for t, _ in kept_transfer}}
    return StoreJoin(keep, kept_transfer, targets, infos[cfg.teachers.names[0]].get("clip_seconds"), provenance)


def build_student(cfg: DistillConfig, num_classes: int) -> Student:
    torch.manual_seed(cfg.seed)
    return create_student(cfg.student, num_classes, pretrained=cfg.pretrained)


def prepare_distillation(cfg: DistillConfig) -> TrainingJob:
    """Open the data, join the store, build the student and its job (resumed with ``cfg.resume``)."""
    train_data, eval_data = open_splits(cfg)
    task = train_data.task
    cfg = cfg.with_task_defaults(task)
    join = join_store(cfg, train_data, transfer_sets(cfg, train_data)) if cfg.teachers.names else None
    student = build_student(cfg, train_data.num_classes)
    seconds = cfg.seconds or (join and join.clip_seconds) or train_data.clip_seconds()
    loss = DistillLoss(task, kd_lambda=cfg.kd_lambda if join else 1.0, temperature=cfg.temperature)
    params = {"student": cfg.student, "teachers": str(cfg.teachers), "store": cfg.store, "space": cfg.space,
              "kd_lambda": cfg.kd_lambda, "temperature": cfg.temperature, "pretrained": cfg.pretrained,
              "transfer": ",".join(cfg.transfer) or "none", "transfer_ratio": cfg.transfer_ratio,
              **(join.provenance if join else {})}
    return build_job(
        cfg, model=student, train_data=train_data, eval_data=eval_data, seconds=seconds, loss=loss,
        meta={"kind": "student", "name": cfg.student, "teachers": str(cfg.teachers)},
        experiment=f"distill/{train_data.name}-{task}", run_name=f"{cfg.student} from {cfg.teachers}",
        params=params, train_clips=join.clips if join else None, teacher=join.targets if join else None,
        transfer=join.transfer if join else (), transfer_ratio=cfg.transfer_ratio,
        tags={"store": cfg.store or "none", "teachers": str(cfg.teachers)},
        cost=complexity(student, seconds=seconds),
    )


def distill(cfg: DistillConfig, on_epoch: EpochCallback | None = None,
            on_batch: BatchCallback | None = None) -> TrainingResult:
    """Distil (or, without teachers, train) a student; evaluate each epoch; track the run in MLflow."""
    return run_job(prepare_distillation(cfg), on_epoch, on_batch)
