"""Building students by name and loading official or saved checkpoints into them, strictly."""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import torch

from layers import CheckpointError, load_checkpoint, load_state_dict_strict
from layers.checkpoint import unwrap_state_dict

from ._base import Student
from ._registry import STUDENTS

__all__ = ["create_student", "list_students", "load_student_checkpoint", "student_cfg"]

Checkpoint = str | os.PathLike | Mapping[str, torch.Tensor]


def list_students(pattern: str | None = None) -> list[str]:
    """Registered student names, sorted, optionally filtered by a shell-style pattern (``"mn*"``)."""
    return STUDENTS.names(pattern)


def student_cfg(name: str) -> dict[str, Any]:
    """The registry metadata of ``name`` (paper, sample rate, published params/MACs) without building it."""
    return dict(STUDENTS.get(name).cfg)


def create_student(name: str, num_classes: int, pretrained: Checkpoint | None = None, **kwargs: Any) -> Student:
    """Build the student ``name`` with ``num_classes`` outputs, optionally from a checkpoint.

    Args:
        pretrained: a local checkpoint (official release file or one saved from this model) or a state dict,
            loaded strictly through the family's ``checkpoint_filter_fn``. When its class count differs from
            ``num_classes``, only the classifier layers (``classifier_names``) keep their fresh initialisation.
        **kwargs: constructor overrides of the entrypoint (strides, width, frontend settings, ...).
    """
    entry = STUDENTS.get(name)
    model = entry.fn(num_classes=num_classes, **kwargs)
    model.student_name = name
    model.cfg = dict(entry.cfg)
    if pretrained is not None:
        load_student_checkpoint(model, pretrained)
    return model


def load_student_checkpoint(model: Student, checkpoint: Checkpoint) -> None:
    """Map ``checkpoint`` through the family's filter and load it strictly; classifier layers may differ in size.

    Raises:
        CheckpointError: naming missing/unexpected keys and shape differences outside the classifier.
    """
    if isinstance(checkpoint, Mapping):
        state_dict, source = unwrap_state_dict(checkpoint), "state dict"
    else:
        state_dict, source = load_checkpoint(checkpoint), os.fspath(checkpoint)
    family_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if family_filter is None:
        raise CheckpointError(f"{type(model).__name__} has no checkpoint_filter_fn in {type(model).__module__}")

    def filter_fn(sd: dict[str, torch.Tensor], m: Student) -> dict[str, torch.Tensor]:
        return _fresh_classifier(m, family_filter(sd, m))

    load_state_dict_strict(model, state_dict, filter_fn=filter_fn, source=source)
    if hasattr(model, "on_pretrained_loaded"):
        model.on_pretrained_loaded()


def _fresh_classifier(model: Student, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the model's own (fresh) classifier entries where the checkpoint's have another shape."""
    prefixes = tuple(f"{p}." for p in model.classifier_names)
    out = dict(state_dict)
    for key, value in model.state_dict().items():
        if key.startswith(prefixes) and key in out and tuple(out[key].shape) != tuple(value.shape):
            out[key] = value
    return out
