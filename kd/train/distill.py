"""``kd distill``: train a student from stored teacher logits.

Each training batch joins the clips' audio with their stored logits (one store read per batch, see
:mod:`kd.train.loaders`); the loss is ``kd_lambda * hard + (1 - kd_lambda) * soft`` (:mod:`kd.tasks.losses`) with the
task's defaults (:mod:`kd.tasks`). Without teachers (``--teachers none``) the same job trains on labels
alone: the baseline to compare against.

Stores taught on views (``kd teach --views K``): each time a clip is drawn, the student trains on one of its
stored views, by default ``consistent``ly (the view's augmentation replayed on the waveform, the view's
logits as the target: the teachers' exact input, see :mod:`kd.core.views`); ``clean``, ``random`` and
``clean-targets`` (the same replayed inputs, the clean clip's logits) are the baselines (see
:class:`kd.train.loaders.ClipDataset`). A distillation whose options contradict the stored views
(another impulse-response set, online roll or gain on top of replayed views) is refused.

Transfer sets (Hinton et al.'s term): clips without labels that the teachers have labelled in the store
(``kd teach --transfer``), mixed into every training batch (``--transfer FORMAT:PATH``, ``--transfer-ratio``)
with the soft loss only. The unlabelled clips of the training split itself (manifest rows with an empty label)
join them. Their labels, if a transfer set has any (an AudioSet split), are ignored.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kd.core.complexity import complexity
from kd.core.failures import describe_failures
from kd.core.views import ImpulseResponses, ViewConfig
from kd.data import Dataset, open_dataset
from kd.options import (
    MISSING_POLICIES,
    REPLAYED_VIEWS,
    SPACES,
    VIEW_MODES,
    MissingPolicy,
    SoftLoss,
    Space,
    ViewMode,
)
from kd.tasks import Task
from kd.track.tracking import DatasetInput
from kd.train.job import (
    BatchCallback,
    EpochCallback,
    TrainingJob,
    TrainingOptions,
    TrainingResult,
    build_job,
    open_splits,
)
from kd.train.loaders import TeacherTargets
from kd.train.loss import DistillLoss
from kd.train.run import run_job
from kd_errors import KdError
from logit_store import LogitStore
from students import Student, create_student

__all__ = ["DistillConfig", "TeacherChoice", "distill", "patience_hint", "prepare_distillation"]


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
        student_checkpoint: a checkpoint the student starts from (``kd distill --pretrained``, e.g. an official
            EfficientAT release), loaded by :func:`students.create_student`.
        kd_lambda, temperature: the KD loss; ``None`` takes the task's default (:mod:`kd.tasks`).
        soft_loss: the soft term matches the teacher's ``probs`` (the task's loss at ``temperature``) or its
            ``logits`` (mean squared error; every logit, so a ``topk`` store is refused).
        space: ensemble members are averaged as ``logit``s or as probabilities (``prob``).
        missing: training clips without stored logits are an ``error`` or are ``drop``ped.
        transfer: ``FORMAT:PATH`` of datasets whose clips the store holds logits for, used without labels.
        transfer_ratio: transfer clips per labelled clip in each batch.
        views: which stored view a clip trains on (``consistent``, ``clean``, ``random``, ``clean-targets``);
            default ``consistent`` for stores with views, ``clean`` otherwise.
        log_model: log the student as an MLflow model (PyTorch flavour, about 2 s per run on a CPU).
    """

    student: str
    store: str | None = None
    teachers: TeacherChoice = field(default_factory=TeacherChoice)
    space: Space = "logit"
    student_checkpoint: str | None = None
    kd_lambda: float | None = None
    temperature: float | None = None
    soft_loss: SoftLoss = "probs"
    missing: MissingPolicy = "error"
    transfer: tuple[str, ...] = ()
    transfer_ratio: float = 1.0
    views: ViewMode | None = None
    log_model: bool = True

    def __post_init__(self) -> None:
        if self.teachers.names and not self.store:
            raise KdError("--teachers needs --store (or use --teachers none for the label-only baseline)")
        if self.missing not in MISSING_POLICIES:
            raise KdError(f"--missing must be one of {', '.join(MISSING_POLICIES)}, got {self.missing}")
        if self.space not in SPACES:
            raise KdError(f"--space must be one of {', '.join(SPACES)}, got {self.space}")
        if self.transfer and not self.teachers.names:
            raise KdError("--transfer clips have no labels: they need stored --teachers to learn from")
        if self.transfer_ratio <= 0:
            raise KdError(f"--transfer-ratio must be positive, got {self.transfer_ratio}")
        if self.views is not None and self.views not in VIEW_MODES:
            raise KdError(f"--views must be one of {', '.join(VIEW_MODES)}, got {self.views}")
        if self.views not in (None, "clean") and not self.teachers.names:
            raise KdError(f"--views {self.views} picks stored views: it needs --teachers")

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
    impulse_responses: ImpulseResponses | None = None
    pad_to_seconds: float = 0.0  # kd teach padded shorter clips with zeros up to this (its teachers' shortest input)


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
    if cfg.soft_loss == "logits":
        check_every_logit_kept(cfg.store, infos)
    task = data.task
    fps = None
    if task.frame_level:
        rates = {t: i.get("frames_per_second") for t, i in infos.items()}
        if not all(rates.values()) or len(set(rates.values())) != 1:
            raise KdError(f"{task} distillation needs frame-wise teachers with one frame rate; got {rates}")
        fps = next(iter(rates.values()))
    failures = {k: v for t in cfg.teachers.names for k, v in store.failures(t).items()}
    usable = set(store.clip_ids) - set(failures)
    parts = [(data, data.labelled_clips), *((t, t.clips) for t in transfer)]
    missing = [c.id for _, clips in parts for c in clips if c.id not in usable]
    if missing and cfg.missing == "error":
        total = sum(len(clips) for _, clips in parts)
        raise KdError(f"{len(missing)} of {total} training clips ({data.split} split and transfer sets) have no "
                      f"logits in {cfg.store}: {why_missing(store, missing, failures)}; or pass --missing drop to "
                      "train without them")
    keep = [c for c in data.labelled_clips if c.id in usable]
    if not keep:
        raise KdError(f"no labelled {data.split} clip of {cfg.dataset} has logits in {cfg.store}")
    kept_transfer = [(t, [c for c in t.clips if c.id in usable]) for t in transfer]
    kept_transfer = [(t, clips) for t, clips in kept_transfer if clips]
    mode, irs = choose_views(cfg, store)
    targets = TeacherTargets(
        store_url=cfg.store, teachers=cfg.teachers.names, weights=cfg.teachers.weights, space=cfg.space,
        activation=task.activation, level=task.level, frames_per_second=fps, views=mode,
        num_views=store.num_views,
    )
    provenance = {"store_fingerprint": store.info().get("dataset_fingerprint"), "dropped_clips": len(missing),
                  "teacher_checkpoints": {t: i.get("checkpoint_sha256") for t, i in infos.items()},
                  "transfer_clips": sum(len(clips) for _, clips in kept_transfer),
                  "transfer_sets": {t.spec: t.fingerprint() for t, _ in kept_transfer},
                  "views": {"mode": mode, "count": store.num_views, **(store.views or {})}}
    return StoreJoin(keep, kept_transfer, targets, infos[cfg.teachers.names[0]].get("clip_seconds"), provenance,
                     irs, store.user_attrs.get("clip_lengths", {}).get("pad_to_seconds", 0.0))


def check_every_logit_kept(store: str, infos: Mapping[str, Mapping[str, Any]]) -> None:
    """Logit matching reads every logit: refuse teachers whose store keeps only the largest ones per view."""
    for name, info in infos.items():
        if info.get("codec") == "topk":
            kept = info["codec_config"]["k"]
            raise KdError(f"--soft-loss logits matches every logit, but {store} keeps only the {kept} largest of "
                          f"teacher {name}'s {info['num_classes']} per view (codec topk); distil with --soft-loss "
                          "probs, or teach a store with --codec q8")


def why_missing(store: LogitStore, missing: Sequence[str], failures: Mapping[str, str]) -> str:
    """Why ``missing`` clips have no logits: the store's failure records grouped by kind (each with an example and
    its fix), and the clips the store does not hold."""
    held = set(store.clip_ids)
    recorded = {i: failures[i] for i in missing if i in failures}
    outside = [i for i in missing if i not in held]
    parts = [describe_failures(recorded)] if recorded else []
    if outside:
        parts.append(f"{len(outside)} not in the store (e.g. {outside[0]}): it was taught without them (another "
                     "split, or without this --transfer set); teach a store that holds them")
    return "; ".join(parts)


def choose_views(cfg: DistillConfig, store: LogitStore) -> tuple[str, ImpulseResponses | None]:
    """How the run uses the store's views, and the impulse responses to replay them with; refuses options that
    contradict the stored views."""
    stored = store.views
    mode = cfg.views or ("consistent" if stored else "clean")
    if stored is None:
        if mode != "clean":
            raise KdError(f"--views {mode}: {cfg.store} holds one view per clip (teach with --views K first)")
        return mode, None
    views = ViewConfig.from_dict(stored)
    irs = ImpulseResponses(cfg.dir_folder) if cfg.dir_folder else None
    if irs is not None and "dir" in views.kinds and irs.fingerprint != views.ir_fingerprint:
        raise KdError(f"--dir {cfg.dir_folder} is not the impulse-response set the store's views were drawn from "
                      f"({len(views.impulse_responses)} files, sha256 {views.ir_fingerprint[:12]}...); pass that "
                      "folder, or distil with --views clean")
    if mode in REPLAYED_VIEWS:
        if "dir" in views.kinds and irs is None:
            raise KdError("the store's views convolve impulse responses: pass the folder they came from with --dir")
        if cfg.roll_seconds or cfg.gain_db:
            raise KdError(f"--views {mode} replays the stored views exactly; --roll/--gain would change the "
                          "input the teachers heard (drop them, or distil with --views clean)")
    return mode, irs


def build_student(cfg: DistillConfig, num_classes: int) -> Student:
    torch.manual_seed(cfg.seed)
    return create_student(cfg.student, num_classes, checkpoint=cfg.student_checkpoint)


def student_seconds(cfg: DistillConfig, join: StoreJoin | None, data: Dataset, student: Student) -> float:
    """The clip length the student trains and is evaluated at: ``--seconds``, else the store's (padded as
    ``kd teach`` padded short clips), else the dataset's; every clip is cropped or padded to it, and it is never
    shorter than the student takes (:meth:`students.Student.min_input_samples`).

    Raises:
        KdError: ``--seconds`` is shorter than the student takes.
    """
    shortest = student.min_input_samples() / student.sample_rate
    if cfg.seconds is not None:
        if cfg.seconds < shortest:
            raise KdError(f"--seconds {cfg.seconds:g} is shorter than {cfg.student} takes ({shortest:.4g} s, what "
                          f"its frontend and network need); pass at least --seconds {_milliseconds_up(shortest):g}")
        return cfg.seconds
    if join is not None and join.clip_seconds:
        return max(join.clip_seconds, join.pad_to_seconds, shortest)
    return max(data.clip_seconds(), shortest)


def _milliseconds_up(seconds: float) -> float:
    return math.ceil(seconds * 1000) / 1000


def prepare_distillation(cfg: DistillConfig) -> TrainingJob:
    """Open the data, join the store, build the student and its job (resumed with ``cfg.resume``)."""
    train_data, eval_data = open_splits(cfg)
    task = train_data.task
    cfg = cfg.with_task_defaults(task)
    join = join_store(cfg, train_data, transfer_sets(cfg, train_data)) if cfg.teachers.names else None
    student = build_student(cfg, train_data.num_classes)
    replayed = join is not None and join.targets.views in REPLAYED_VIEWS and join.targets.num_views > 1
    options = replace(cfg, dir_folder=None) if replayed else cfg  # the stored views bring their impulse responses
    seconds = student_seconds(cfg, join, train_data, student)
    loss = DistillLoss(task, kd_lambda=cfg.kd_lambda if join else 1.0, temperature=cfg.temperature,
                       soft_loss=cfg.soft_loss)
    # parameters: the choices that distinguish runs, the same keys for every run (MLflow's parallel-coordinates plot
    # opens on the first parameters, in name order, whose values differ); bookkeeping goes in tags
    provenance = dict(join.provenance) if join else {}
    params = {"student": cfg.student, "teachers": str(cfg.teachers), "kd_lambda": loss.kd_lambda,
              "temperature": cfg.temperature, "soft_loss": cfg.soft_loss, "space": cfg.space,
              "views": join.targets.views if join else "clean",
              "pretrained": cfg.student_checkpoint, "transfer": ",".join(cfg.transfer) or "none",
              "transfer_ratio": cfg.transfer_ratio, "transfer_clips": provenance.pop("transfer_clips", 0)}
    if "views" in provenance:
        provenance["view_config"] = provenance.pop("views")
    tags = {"store": cfg.store or "none", "teachers": str(cfg.teachers), **provenance}
    store_input = [DatasetInput.of_store(LogitStore.open(cfg.store, mode="r"), "teacher logits")] if join else []
    return build_job(
        options, model=student, train_data=train_data, eval_data=eval_data, seconds=seconds, loss=loss,
        meta={"kind": "student", "name": cfg.student, "teachers": str(cfg.teachers)},
        experiment=f"distill/{train_data.name}-{task}", run_name=f"{cfg.student} from {cfg.teachers}",
        params=params, train_clips=join.clips if join else None, teacher=join.targets if join else None,
        transfer=join.transfer if join else (), transfer_ratio=cfg.transfer_ratio,
        impulse_responses=join.impulse_responses if join else None,
        tags=tags, cost=complexity(student, seconds=seconds), inputs=store_input, log_model=cfg.log_model,
    )


def distill(cfg: DistillConfig, on_epoch: EpochCallback | None = None,
            on_batch: BatchCallback | None = None) -> TrainingResult:
    """Distil (or, without teachers, train) a student; evaluate each epoch; track the run in MLflow."""
    return run_job(prepare_distillation(cfg), on_epoch, on_batch)


SOFT_LOSS_PATIENCE = 0.5


def patience_hint(history: Sequence[Mapping[str, float]]) -> str | None:
    """A hint when a distillation run ended before its soft targets could pay off; None otherwise.

    Distilled students overtake label-only ones only with a patient schedule (BENCHMARKS.md, ``kd_gain``: within
    10 epochs the soft targets slowed the student down, by 30 it was ahead on every seed). What shows a run cut
    short is its soft loss: the student has not caught up with its teachers while the last epoch's soft loss is
    still above ``SOFT_LOSS_PATIENCE`` times the first epoch's. Label-only runs have no soft loss and no hint.
    """
    soft = [record["train_soft_loss"] for record in history if "train_soft_loss" in record]
    if len(soft) < 2 or soft[-1] <= SOFT_LOSS_PATIENCE * soft[0]:
        return None
    return (f"the soft loss ended at {soft[-1]:.3g}, {soft[-1] / soft[0]:.0%} of the first epoch's {soft[0]:.3g}: "
            f"the student had not caught up with its teachers after {len(history)} epochs; distilled students "
            "usually overtake label-only ones only with a longer schedule (try about 3x the --epochs)")
