"""``kd device-finetune``: a distilled student fine-tuned per recording device, in one device-specific checkpoint.

Where the recording device is known at test time (DCASE'25 Task 1 gives it), the top systems fine-tune the general
student once per device seen in training, on that device's clips, and run each test clip through its device's model
(DCASE'25: +3.3 points). Each fine-tune here is a short ``kd distill`` run: it starts from the general checkpoint's
weights (``--pretrained``), trains on the device's clips of the training split against the same stored teachers
(still distilling), and keeps its best epoch as scored on the device's clips of the eval split (on all of it where it
has none). All its options are ``kd distill``'s; each is an MLflow run of its own in the student's distillation
experiment, and a run in ``device-finetune/DATASET-TASK`` compares the general model with the device-specific
checkpoint on the whole eval split (each clip through its device's model), logging the checkpoint.

The checkpoint (``OUT/device_specific.pt``) is the general one with the devices' parameters beside it:
``"model"`` and ``"meta"`` are the general model's, as ``kd distill`` wrote them, so every reader that knows
nothing of devices loads the general model; ``"device_models"`` maps each device to the tensors of its model that
differ from the general one, and ``meta["device_models"]`` lists the devices. Only differing tensors are stored
because a device's model is the general one with some tensors replaced, which the loader
(:func:`kd.core.checkpoints.load_student`) puts on top of the general ones: kd's fine-tunes train every tensor, so
the file holds about 1 + N models, but one that changes less (only the classifier, or only BatchNorm) costs only
that. At test time one device's model runs, so its complexity is the general model's.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kd.core.checkpoints import DEVICE_MODELS, checkpoint_meta, load_student
from kd.core.devices import select_device
from kd.data import Dataset, open_dataset
from kd.evaluate.loop import predict, run_loader, score
from kd.track.tracking import tracked_run
from kd.train.distill import DistillConfig, prepare_distillation
from kd.train.job import BatchCallback, EpochCallback, TrainingResult, on_devices
from kd.train.loaders import make_dataset, make_loader
from kd.train.run import run_job
from kd_errors import KdError
from layers import CheckpointError, read_checkpoint

__all__ = ["DeviceFinetuneConfig", "DeviceFinetuneResult", "finetune_devices", "write_device_checkpoint"]

CHECKPOINT_NAME = "device_specific.pt"


@dataclass(frozen=True)
class DeviceFinetuneConfig:
    """One ``kd device-finetune`` run.

    Attributes:
        checkpoint: the general student (a ``kd distill`` checkpoint).
        distill: the options of each device's fine-tune (its ``dataset``, ``store``, ``teachers``, schedule, ...);
            the student, its starting weights, the output folder and the devices are set per device.
        devices: the devices to fine-tune for (default: every device of the training split).
    """

    checkpoint: str
    distill: DistillConfig
    devices: tuple[str, ...] = ()

    @classmethod
    def create(cls, checkpoint: str, devices: Sequence[str] = (), **options: Any) -> DeviceFinetuneConfig:
        """A run from the general ``checkpoint`` and ``kd distill``'s options (the student and its clip length
        come from the checkpoint).

        Raises:
            KdError: ``checkpoint`` is not a student written by ``kd distill``, or already device-specific.
        """
        meta = checkpoint_meta(checkpoint)
        if not meta or meta.get("kind") != "student":
            raise KdError(f"{checkpoint} is not a student checkpoint written by kd distill")
        if meta.get(DEVICE_MODELS):
            raise KdError(f"{checkpoint} is device-specific already; fine-tune from the general student's checkpoint")
        if options.get("seconds") is None:
            options["seconds"] = meta["seconds"]
        return cls(checkpoint, DistillConfig(student=meta["name"], student_checkpoint=checkpoint, **options),
                   tuple(devices))


@dataclass(frozen=True)
class DeviceFinetuneResult:
    """The written checkpoint and what device-specific parameters gained on the eval split.

    Attributes:
        general, device_specific: the task's metrics of the general model and of the device-specific checkpoint
            (each clip through its device's model; devices without one through the general model).
        runs: each device's fine-tune (its ``kd distill`` result).
    """

    checkpoint: str
    devices: list[str]
    metric: str
    general: dict[str, float]
    device_specific: dict[str, float]
    runs: dict[str, TrainingResult] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def gain(self) -> float:
        return self.device_specific[self.metric] - self.general[self.metric]


def finetune_devices(cfg: DeviceFinetuneConfig, on_device: Callable[[str], None] | None = None,
                     on_epoch: EpochCallback | None = None,
                     on_batch: BatchCallback | None = None) -> DeviceFinetuneResult:
    """Fine-tune the general student once per device, write ``OUT/device_specific.pt``, score it against the general
    model on the eval split and track that in MLflow (see the module docstring).

    Args:
        on_device: called with each device before its fine-tune starts.

    Raises:
        KdError: a device of which the training split has no clip.
    """
    base = cfg.distill
    train_data = open_dataset(base.dataset, split=base.train_split)
    if train_data.task is None or not train_data.devices:
        raise KdError(f"the {base.train_split} split of {base.dataset} records no recording devices to fine-tune "
                      "for")
    devices = list(cfg.devices or train_data.devices)
    on_devices(train_data, devices)  # every device has training clips, or one line naming those the split has
    eval_data = open_dataset(base.dataset, split=base.eval_split)
    out = Path(base.out)
    runs: dict[str, TrainingResult] = {}
    for device in devices:
        if on_device:
            on_device(device)
        # the best epoch is the best on this device's eval clips (all of the eval split if it has none of them)
        eval_devices = (device,) if device in eval_data.devices else ()
        job = prepare_distillation(replace(base, out=str(out / "devices" / device), train_devices=(device,),
                                           eval_devices=eval_devices, log_model=False))
        job.run_name = f"{job.run_name}, fine-tuned on device {device}"
        job.tags.update({"general_checkpoint": cfg.checkpoint, "device_finetune": device})
        runs[device] = run_job(job, on_epoch, on_batch)
    path = write_device_checkpoint(cfg.checkpoint, {d: r.checkpoint for d, r in runs.items()}, out / CHECKPOINT_NAME)

    general, specific = compare_on_devices(path, eval_data, base)
    metric = eval_data.task.primary_metric
    params = {"student": base.student, "teachers": str(base.teachers), "devices": ",".join(devices),
              "epochs": base.epochs, "lr": base.lr, "checkpoint": cfg.checkpoint}
    with tracked_run(f"device-finetune/{train_data.name}-{train_data.task}", run_name=f"{base.student} per device",
                     params=params, tags={"runs": ",".join(f"{d}:{r.run_id}" for d, r in runs.items())},
                     tracking_uri=base.tracking_uri) as run:
        run.log_metrics({**{f"general_{k}": v for k, v in general.items()}, **specific,
                         f"{metric}_gain": specific[metric] - general[metric]})
        run.log_artifact(path, "checkpoint")
    return DeviceFinetuneResult(str(path), devices, metric, general, specific, runs, run.run_id)


def write_device_checkpoint(general: str | Path, device_checkpoints: Mapping[str, str | Path], out: str | Path) -> Path:
    """One checkpoint holding the general student of ``general`` and, per device, the tensors of its fine-tuned
    checkpoint that differ from it (see the module docstring); written atomically.

    Raises:
        CheckpointError: a device's checkpoint holds another model than the general one.
    """
    state = read_checkpoint(general)
    shared, meta = state["model"], dict(state["meta"])
    devices: dict[str, dict[str, torch.Tensor]] = {}
    for device, path in device_checkpoints.items():
        weights = read_checkpoint(path)["model"]
        if weights.keys() != shared.keys() or any(weights[k].shape != shared[k].shape for k in shared):
            raise CheckpointError(f"{path} (device {device}) holds another model than {general}")
        devices[device] = {k: v for k, v in weights.items() if not torch.equal(v, shared[k])}
    meta[DEVICE_MODELS] = list(devices)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"model": shared, "meta": meta, DEVICE_MODELS: devices}, tmp)
    tmp.replace(out)
    return out


def compare_on_devices(path: Path, eval_data: Dataset,
                       options: DistillConfig) -> tuple[dict[str, float], dict[str, float]]:
    """The task's metrics on the eval split of the general model in ``path`` and of the device-specific checkpoint
    (each clip through its device's model)."""
    device = select_device(options.device)
    general, meta = load_student(path)
    models = {d: load_student(path, d)[0].to(device) for d in meta[DEVICE_MODELS]}
    general.to(device)
    dataset = make_dataset(eval_data, eval_data.labelled_clips, general, meta["seconds"])
    loader = make_loader(dataset, options.batch_size, train=False, decode_workers=options.decode_workers)
    task = eval_data.task

    def logits_of(model: torch.nn.Module):
        return lambda audio: task.logits(model(audio.to(device))).float().cpu().numpy()

    with torch.inference_mode():
        specific = score(loader, *run_loader(logits_of(general), loader, {d: logits_of(m) for d, m in models.items()}))
    return score(loader, *predict(general, loader, device)), specific
