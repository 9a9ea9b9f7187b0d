"""``kd distill``, ``kd eval`` and ``kd predict``: train a student from stored teacher logits, then use it.

Each training batch joins the clips' audio with their stored logits (one store read per batch, see
:mod:`kd.dataset`); the loss is ``kd_lambda * hard + (1 - kd_lambda) * soft`` (:mod:`kd.losses`). Without
teachers (``--teachers none``) the same loop trains on labels alone: the baseline to compare against.

Task defaults follow the papers: ASC distils with KL at T = 2 and kd_lambda = 0.02 (CP-JKU DCASE'23);
tagging and SED with BCE at T = 1 and kd_lambda = 0.1 (EfficientAT, EfficientSED).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.augment import DeviceImpulseResponses, mix, mixup_params, random_gain, time_roll
from kd.complexity import Complexity, complexity
from kd.dataset import TeacherTargets
from kd.errors import KdError
from kd.losses import DistillLoss
from kd.task import PRIMARY_METRIC, AugmentedForward, evaluate, logits_of, make_dataset, make_loader
from kd.train import OptimConfig, StepFn, Trainer, init_distributed, select_device

__all__ = [
    "DistillConfig",
    "Distillation",
    "TeacherChoice",
    "distill",
    "evaluate_checkpoint",
    "load_student",
    "predict_files",
    "prepare_distillation",
]

TASK_DEFAULTS = {"asc": (0.02, 2.0), "tagging": (0.1, 1.0), "sed": (0.1, 1.0)}


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


@dataclass(frozen=True)
class DistillConfig:
    dataset: str
    student: str
    out: str
    store: str | None = None
    teachers: TeacherChoice = field(default_factory=TeacherChoice)
    space: str = "logit"
    pretrained: str | None = None
    kd_lambda: float | None = None
    temperature: float | None = None
    train_split: str = "train"
    eval_split: str = "eval"
    seconds: float | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    mixup: float = 0.3
    mixstyle_p: float = 0.0
    dir_folder: str | None = None
    dir_p: float = 0.4
    roll_seconds: float = 0.0
    gain_db: float = 0.0
    missing: str = "error"
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    tracking_uri: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.teachers.names and not self.store:
            raise KdError("--teachers needs --store (or use --teachers none for the label-only baseline)")
        if self.missing not in ("error", "drop"):
            raise KdError(f"--missing must be error or drop, got {self.missing}")

    def with_task_defaults(self, task: str) -> DistillConfig:
        kd_lambda, temperature = TASK_DEFAULTS[task]
        return replace(self, kd_lambda=kd_lambda if self.kd_lambda is None else self.kd_lambda,
                       temperature=temperature if self.temperature is None else self.temperature)

    def augmentations(self) -> dict[str, Any]:
        return {"mixup": self.mixup, "freq_mixstyle": self.mixstyle_p, "dir": self.dir_folder and self.dir_p,
                "roll_seconds": self.roll_seconds, "gain_db": self.gain_db, "masks": "frontend"}


# --- the join between dataset and store ------------------------------------------------------------------------------
def join_store(cfg: DistillConfig, data, clips: Sequence[Any]) -> tuple[list[Any], TeacherTargets, dict[str, Any]]:
    """Check that the store fits the dataset and covers its clips; returns the clips to train on."""
    from logit_store import LogitStore

    store = LogitStore.open(cfg.store, mode="r")
    unknown = [t for t in cfg.teachers.names if t not in store.teachers]
    if unknown:
        raise KdError(f"store {cfg.store} has no teacher {', '.join(unknown)} (it has: {', '.join(store.teachers)})")
    store.check_classes(data.classes)
    infos = {t: store.teacher_info(t) for t in cfg.teachers.names}
    level = "frame" if data.task == "sed" else "clip"
    fps = None
    if level == "frame":
        rates = {t: i.get("frames_per_second") for t, i in infos.items()}
        if not all(rates.values()) or len(set(rates.values())) != 1:
            raise KdError(f"SED distillation needs frame-wise teachers with one frame rate; got {rates}")
        fps = next(iter(rates.values()))
    stored = set(store.clip_ids)
    failed = set().union(*(store.failures(t) for t in cfg.teachers.names))
    missing = [c.id for c in clips if c.id not in stored or c.id in failed]
    if missing and cfg.missing == "error":
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise KdError(
            f"{len(missing)} of {len(clips)} {data.split} clips have no logits in {cfg.store} ({shown}); "
            "teach them first, or pass --missing drop"
        )
    keep = [c for c in clips if c.id in stored and c.id not in failed]
    if not keep:
        raise KdError(f"no {data.split} clip of {cfg.dataset} has logits in {cfg.store}")
    targets = TeacherTargets(
        store_url=cfg.store, teachers=cfg.teachers.names, weights=cfg.teachers.weights, space=cfg.space,
        activation="softmax" if data.task == "asc" else "sigmoid", level=level, frames_per_second=fps,
    )
    provenance = {"store_fingerprint": store.info().get("dataset_fingerprint"), "dropped_clips": len(missing),
                  "teacher_checkpoints": {t: i.get("checkpoint_sha256") for t, i in infos.items()}}
    return keep, targets, provenance


# --- students -------------------------------------------------------------------------------------------------------
def build_student(cfg: DistillConfig, num_classes: int):
    from students import create_student

    torch.manual_seed(cfg.seed)
    return create_student(cfg.student, num_classes, pretrained=cfg.pretrained)


def load_student(checkpoint: str | Path):
    """Rebuild a student saved by ``kd distill`` (its ``meta`` names the model and its classes)."""
    from students import create_student

    from kd.models import checkpoint_meta

    meta = checkpoint_meta(checkpoint)
    if not meta or meta.get("kind") != "student":
        raise KdError(f"{checkpoint} is not a student checkpoint written by kd distill")
    model = create_student(meta["name"], len(meta["classes"]))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    from layers import load_state_dict_strict

    load_state_dict_strict(model, state["model"], source=str(checkpoint))
    return model.eval(), meta


def _clip_seconds(cfg: DistillConfig, data, store_seconds: float | None) -> float:
    if cfg.seconds:
        return cfg.seconds
    if store_seconds:
        return float(store_seconds)
    return data.clip_seconds()


# --- training -------------------------------------------------------------------------------------------------------
@dataclass
class Distillation:
    """Everything a distillation run trains with, built and checked before the first step."""

    cfg: DistillConfig
    task: str
    data_name: str
    trainer: Trainer
    train_loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader
    step: StepFn
    cost: Complexity
    params: dict[str, Any]
    device: torch.device


def prepare_distillation(cfg: DistillConfig) -> Distillation:
    """Open the data, join the store, build student, loaders, loss and trainer (resumed with ``cfg.resume``)."""
    from kd.data import open_dataset

    device = select_device(cfg.device)
    dist = init_distributed(device)
    train_data = open_dataset(cfg.dataset, split=cfg.train_split)
    eval_data = open_dataset(cfg.dataset, split=cfg.eval_split)
    task = train_data.task
    cfg = cfg.with_task_defaults(task)
    clips, targets, provenance = list(train_data.clips), None, {}
    if cfg.teachers.names:
        clips, targets, provenance = join_store(cfg, train_data, clips)
    student = build_student(cfg, train_data.num_classes)
    seconds = _clip_seconds(cfg, train_data, _store_seconds(cfg))
    train_set = make_dataset(train_data, clips, student, seconds, teacher=targets)
    train_loader = make_loader(train_set, cfg.batch_size, train=True, num_workers=cfg.num_workers,
                               balanced=task == "tagging", dist_rank=dist.rank, dist_world=dist.world_size, seed=cfg.seed)
    eval_loader = make_loader(make_dataset(eval_data, eval_data.clips, student, seconds), cfg.batch_size,
                              train=False, num_workers=cfg.num_workers)
    loss = DistillLoss(task, kd_lambda=cfg.kd_lambda if targets else 1.0, temperature=cfg.temperature)
    meta = {"kind": "student", "name": cfg.student, "classes": train_data.classes, "task": task,
            "seconds": seconds, "dataset": cfg.dataset, "teachers": str(cfg.teachers)}
    optim = OptimConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs)
    trainer = Trainer(
        student, optim, steps_per_epoch=len(train_loader), out_dir=cfg.out, primary_metric=PRIMARY_METRIC[task],
        meta=meta, seed=cfg.seed, device=device, dist=dist,
        train_module=AugmentedForward(student, task == "sed", mixstyle_p=cfg.mixstyle_p),
    )
    if cfg.resume:
        trainer.resume()
    params = {
        "student": cfg.student, "teachers": str(cfg.teachers), "store": cfg.store, "space": cfg.space,
        "kd_lambda": cfg.kd_lambda, "temperature": cfg.temperature, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed, "pretrained": cfg.pretrained,
        "seconds": seconds, "train_clips": len(clips), "aug": cfg.augmentations(), **provenance,
    }
    return Distillation(cfg, task, train_data.name, trainer, train_loader, eval_loader,
                        _training_step(cfg, task, student, loss, device), complexity(student, seconds=seconds),
                        params, device)


def _training_step(cfg: DistillConfig, task: str, student, loss: DistillLoss, device: torch.device):
    """The loss of one batch: waveform augmentations, teacher targets, mixup, then the augmented forward."""
    frame_level = task == "sed"
    fps = student.frames_per_second if frame_level else None
    dirs = DeviceImpulseResponses(cfg.dir_folder, student.sample_rate, p=cfg.dir_p) if cfg.dir_folder else None

    def step(module, batch):
        wave, hard = batch["audio"].to(device), batch["target"].to(device)
        teacher = batch["teacher"].to(device) if "teacher" in batch else None
        if dirs is not None:
            wave = dirs(wave, batch["device"])
        if cfg.roll_seconds > 0:
            frames = [t for t in (hard, teacher) if frame_level and t is not None]
            wave, rolled = time_roll(wave, cfg.roll_seconds, student.sample_rate, frames, fps)
            if frame_level:
                hard, teacher = rolled[0], (rolled[1] if teacher is not None else None)
        if cfg.gain_db > 0:
            wave = random_gain(wave, cfg.gain_db)
        soft = loss.targets(teacher) if teacher is not None else None
        params = mixup_params(len(wave), cfg.mixup, device) if cfg.mixup > 0 else None
        if params is not None:
            hard, soft = mix(hard, params), (mix(soft, params) if soft is not None else None)
        return loss(module(wave, params), hard, soft)

    return step


def distill(cfg: DistillConfig, on_epoch: Callable[[int, dict], None] | None = None,
            on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Distil (or, without teachers, train) a student; evaluate each epoch; track the run in MLflow.

    ``on_epoch(epoch, metrics)`` follows each evaluation, ``on_batch(done, batches_per_epoch)`` each step.
    """
    from kd.tracking import tracked_run

    job = prepare_distillation(cfg)
    cfg, task, trainer = job.cfg, job.task, job.trainer
    experiment = f"distill/{job.data_name}-{task}"
    run_name = f"{cfg.student} from {cfg.teachers}"
    with tracked_run(experiment, run_name=run_name, params=job.params, tracking_uri=cfg.tracking_uri,
                     tags={"store": cfg.store or "none", "teachers": str(cfg.teachers)},
                     enabled=trainer.dist.is_main) as run:
        run.log_metrics({"params": job.cost.params, "macs": job.cost.macs})

        def epoch_end(epoch: int, record: dict) -> None:
            run.log_metrics(record, step=epoch)
            if on_epoch:
                on_epoch(epoch, record)

        history = trainer.fit(job.train_loader, job.step, lambda m: evaluate(m, job.eval_loader, job.device),
                              on_epoch_end=epoch_end, on_batch=on_batch)
        best_path = Path(cfg.out) / "best.pt"
        if trainer.dist.is_main and best_path.is_file():
            run.log_artifact(best_path, "checkpoint")
            run.log_metrics({f"best_{PRIMARY_METRIC[task]}": trainer.best})
        return {"history": history, "best": trainer.best, "metric": PRIMARY_METRIC[task], "checkpoint": str(best_path),
                "run_id": run.run_id, "params": job.cost.params, "macs": job.cost.macs, "config": asdict(cfg),
                "main_process": trainer.dist.is_main}


def _store_seconds(cfg: DistillConfig) -> float | None:
    if not cfg.teachers.names:
        return None
    from logit_store import LogitStore

    return LogitStore.open(cfg.store, mode="r").teacher_info(cfg.teachers.names[0]).get("clip_seconds")


# --- using a trained student ----------------------------------------------------------------------------------------
def evaluate_checkpoint(checkpoint: str, dataset: str, split: str = "eval", device: str = "auto",
                        batch_size: int = 32) -> dict[str, float]:
    """The task metrics of a saved student on ``split`` of ``dataset`` (what ``kd distill`` reports per epoch)."""
    from kd.data import open_dataset

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
    from kd.data import load_audio

    model, meta = load_student(checkpoint)
    dev = select_device(device)
    model.to(dev)
    classes, results = list(meta["classes"]), []
    for path in files:
        audio = load_audio(path, model.sample_rate, None, clip_id=str(path))
        with torch.inference_mode():
            out = logits_of(model(torch.from_numpy(audio)[None].to(dev)), meta["task"] == "sed")[0].float().cpu()
        if meta["task"] == "sed":
            results.append({"file": str(path), "events": _events(out.sigmoid().numpy(), model.frames_per_second,
                                                                  classes, threshold)})
            continue
        probs = out.softmax(-1) if meta["task"] == "asc" else out.sigmoid()
        best = torch.topk(probs, min(top, len(classes)))
        results.append({"file": str(path), "top": [(classes[i], float(p)) for p, i in zip(best.values, best.indices)]})
    return results


def _events(probs: np.ndarray, fps: float, classes: Sequence[str], threshold: float) -> list[tuple[float, float, str]]:
    """Runs of frames above ``threshold``, as ``(onset, offset, class)`` sorted by onset."""
    events = []
    for c, name in enumerate(classes):
        active = np.concatenate([[False], probs[:, c] > threshold, [False]])
        edges = np.flatnonzero(active[1:] != active[:-1])
        events += [(on / fps, off / fps, name) for on, off in zip(edges[::2], edges[1::2])]
    return sorted(events)
