"""Teachers and students from registry names and checkpoints: what ``kd teach``, ``kd eval``, ``kd predict`` and
``kd export`` build their models with.

Checkpoints written by ``kd train-teacher`` and ``kd distill`` carry a ``meta`` dict (model name,
constructor arguments, class list, task), so a user passes only the file; official release files carry
no meta and are built from the registry name the user gives.

A clip-level student trained by ``kd distill`` can serve as a teacher too (``NAME=CHECKPOINT`` with the
student's registry name): CP-JKU's DCASE'23 teacher ensemble mixes CP-ResNets with PaSSTs, and a CNN
teacher trained on the task is often the better teacher where no pretrained transformer is at hand.

A device-specific checkpoint (``kd device-finetune``, :mod:`kd.train.devices`) is a student checkpoint whose
``"model"`` is the general model, so every reader loads that, and whose ``"device_models"`` hold each training
device's fine-tuned parameters (``meta["device_models"]`` lists the devices); :func:`load_student` with a
``device_id`` puts that device's on top of the general ones.

Files are read by :func:`layers.read_checkpoint` (``weights_only=True``), as every checkpoint of the project is.
"""
from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kd_errors import KdError
from layers import CheckpointError, load_state_dict_strict, read_checkpoint
from students import Student, create_student
from teachers import StudentAsTeacher, create_teacher, list_teachers

__all__ = ["DEVICE_MODELS", "TeacherSpec", "build_teacher", "checkpoint_meta", "load_student", "seeded"]


@dataclass(frozen=True)
class TeacherSpec:
    """``[ALIAS:]NAME[=CHECKPOINT]``: a registered teacher, optionally a checkpoint, stored under ``alias``."""

    name: str
    checkpoint: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        head, _, checkpoint = text.partition("=")
        alias, _, name = head.rpartition(":")
        if not name:
            raise KdError(f"teacher {text!r}: expected [ALIAS:]NAME[=CHECKPOINT]")
        return cls(name=name, checkpoint=checkpoint or None, alias=alias or None)

    @property
    def key(self) -> str:
        """The name the teacher's logits are stored under."""
        return self.alias or self.name

    def __str__(self) -> str:
        return f"{self.alias + ':' if self.alias else ''}{self.name}{'=' + self.checkpoint if self.checkpoint else ''}"


DEVICE_MODELS = "device_models"  # a device-specific checkpoint's key: {device: the tensors that differ from "model"}


def checkpoint_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``meta`` dict of a checkpoint written by kd, or None for other checkpoints (e.g. official releases)."""
    obj = read_checkpoint(path)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def load_student(checkpoint: str | os.PathLike, device_id: str | None = None) -> tuple[Student, dict[str, Any]]:
    """Rebuild a student saved by ``kd distill`` (its ``meta`` names the model and its classes), in eval mode.

    Args:
        device_id: a recording device: from a device-specific checkpoint (``kd device-finetune``), the model with
            that device's parameters; a device it has none for (one unseen in training) gets the general model, as
            does ``None``. The returned meta's ``device_model`` says which: the device, or None for the general one.

    Raises:
        KdError: ``device_id`` for a checkpoint without device-specific parameters.
    """
    state = read_checkpoint(checkpoint)
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != "student":
        raise CheckpointError(f"{checkpoint} is not a student checkpoint written by kd distill")
    weights = state["model"]
    devices = state.get(DEVICE_MODELS) or {}
    if device_id is not None and not devices:
        raise KdError(f"{checkpoint} holds no device-specific parameters (kd device-finetune writes them); "
                      "drop --device-id")
    if device_id in devices:
        weights = {**weights, **devices[device_id]}
    model = create_student(meta["name"], len(meta["classes"]))
    load_state_dict_strict(model, weights, source=str(checkpoint))
    return model.eval(), {**meta, "device_model": device_id if device_id in devices else None}


def seeded(name: str) -> int:
    """A seed derived from a model name: random-weight models are identical in every worker process."""
    return zlib.crc32(name.encode())


def build_teacher(spec: TeacherSpec, num_classes: int | None = None, **overrides: Any):
    """The teacher of ``spec``, in eval mode; random weights (after a loud warning) when no checkpoint is given.

    Args:
        num_classes: the dataset's class count, checked against the teacher's.
    """
    if spec.checkpoint is None:
        if spec.name not in list_teachers():
            raise KdError(f"unknown teacher {spec.name!r} (see `kd teachers`); a student trained by kd distill "
                          f"serves as a teacher with its checkpoint: {spec.name}=CHECKPOINT")
        warnings.warn(
            f"teacher {spec.key} has no checkpoint: it runs with RANDOM weights; its logits are useless as "
            "soft targets (fine for benchmarks and tests)",
            UserWarning,
            stacklevel=2,
        )
        kwargs = dict(overrides)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeded(spec.name))
            model = create_teacher(spec.name, **kwargs)
    else:
        if not Path(spec.checkpoint).is_file():
            raise KdError(f"checkpoint of teacher {spec.key} not found: {spec.checkpoint}")
        meta = checkpoint_meta(spec.checkpoint)
        if meta and meta.get("kind") == "teacher":
            if meta["name"] != spec.name:
                raise KdError(f"{spec.checkpoint} holds a {meta['name']} teacher, not {spec.name}")
            model = create_teacher(spec.name, checkpoint=spec.checkpoint, new_heads=False, **meta["kwargs"])
        elif meta and meta.get("kind") == "student":
            if meta["name"] != spec.name:
                raise KdError(f"{spec.checkpoint} holds a {meta['name']} student, not {spec.name}")
            student, meta = load_student(spec.checkpoint)
            model = StudentAsTeacher(student, meta["name"], meta["seconds"])
        else:
            model = create_teacher(spec.name, checkpoint=spec.checkpoint, **overrides)
    if num_classes is not None and model.num_classes != num_classes:
        raise KdError(
            f"teacher {spec.key} predicts {model.num_classes} classes but the dataset has {num_classes}; "
            "fine-tune it on this label set first (kd train-teacher)"
        )
    return model.eval()
