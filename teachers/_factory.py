"""Building teachers by name and loading official or fine-tuned checkpoints into them, strictly."""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import torch

from layers import CheckpointError, load_checkpoint, load_state_dict_strict
from layers.checkpoint import unwrap_state_dict

from ._base import Teacher
from ._registry import TEACHERS

__all__ = ["create_teacher", "list_teachers", "load_teacher_checkpoint", "teacher_cfg"]

Checkpoint = str | os.PathLike | Mapping[str, torch.Tensor]


def list_teachers(pattern: str | None = None) -> list[str]:
    """Registered teacher names, sorted, optionally filtered by a shell-style pattern (``"passt_s_*"``)."""
    return TEACHERS.names(pattern)


def teacher_cfg(name: str) -> dict[str, Any]:
    """The registry metadata of ``name`` (release file, origin, published score) without building the model."""
    return dict(TEACHERS.get(name).cfg)


def create_teacher(
    name: str, checkpoint: Checkpoint | None = None, *, new_heads: bool | None = None, **kwargs: Any
) -> Teacher:
    """Build the teacher ``name`` and optionally load ``checkpoint`` into it with strict key matching.

    Args:
        checkpoint: a path (official release file or a checkpoint saved from this model) or a state dict.
        new_heads: what to do with classifier heads the checkpoint cannot fill. ``None`` (default): heads whose
            class count differs from the checkpoint's are freshly initialised when ``num_classes`` is passed
            (fine-tuning an official checkpoint on a new label set); everything else must match. ``True``: also
            initialise heads the checkpoint lacks (e.g. the frame head of a frame-wise teacher started from a
            clip-level release). ``False``: every key must match.
        **kwargs: constructor overrides of the entrypoint (``num_classes``, ``clip_seconds``, patchout, ...).
    """
    entry = TEACHERS.get(name)
    model = entry.fn(**kwargs)
    model.teacher_name = name
    model.cfg = dict(entry.cfg)
    if checkpoint is not None:
        fill_missing = bool(new_heads)
        refresh_changed = fill_missing or (new_heads is None and "num_classes" in kwargs)
        load_teacher_checkpoint(model, checkpoint, refresh_changed_heads=refresh_changed, fill_missing_heads=fill_missing)
    return model


def load_teacher_checkpoint(
    model: Teacher,
    checkpoint: Checkpoint,
    *,
    refresh_changed_heads: bool = False,
    fill_missing_heads: bool = False,
) -> None:
    """Map ``checkpoint`` through the family's ``checkpoint_filter_fn`` and load it strictly into ``model``.

    Raises:
        CheckpointError: naming the missing/unexpected keys and shape differences.
    """
    if isinstance(checkpoint, Mapping):
        state_dict, source = unwrap_state_dict(checkpoint), "state dict"
    else:
        state_dict, source = load_checkpoint(checkpoint), os.fspath(checkpoint)
    family_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if family_filter is None:
        raise CheckpointError(f"{type(model).__name__} has no checkpoint_filter_fn in {type(model).__module__}")

    def filter_fn(sd: dict[str, torch.Tensor], m: Teacher) -> dict[str, torch.Tensor]:
        sd = family_filter(sd, m)
        return _fresh_heads(m, sd, refresh_changed_heads, fill_missing_heads)

    load_state_dict_strict(model, state_dict, filter_fn=filter_fn, source=source)


def _fresh_heads(
    model: Teacher, state_dict: dict[str, torch.Tensor], refresh_changed: bool, fill_missing: bool
) -> dict[str, torch.Tensor]:
    """Replace head entries of ``state_dict`` by the model's own initial values where allowed."""
    if not (refresh_changed or fill_missing):
        return state_dict
    prefixes = tuple(f"{name}." for name in model.classifier_names)
    own = model.state_dict()
    out = dict(state_dict)
    for key, value in own.items():
        if not key.startswith(prefixes):
            continue
        if key not in out:
            if fill_missing:
                out[key] = value
        elif refresh_changed and tuple(out[key].shape) != tuple(value.shape):
            out[key] = value
    if fill_missing:
        out = {k: v for k, v in out.items() if not k.startswith(prefixes) or k in own}
    return out
