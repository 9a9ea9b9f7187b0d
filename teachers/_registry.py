"""The teacher registry, filled by each family file on import, and building teachers by name."""
from __future__ import annotations

from typing import Any

from layers import Checkpoint, Registry, build_model

from ._base import Teacher

__all__ = ["TEACHERS", "create_teacher", "list_teachers", "register_teacher", "teacher_cfg"]

TEACHERS: Registry[Teacher] = Registry("teacher")
register_teacher = TEACHERS.register


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
    if new_heads is None:
        fresh = "resized" if "num_classes" in kwargs else "never"
    else:
        fresh = "resized_or_missing" if new_heads else "never"
    model = build_model(TEACHERS.get(name), checkpoint, fresh_classifiers=fresh, **kwargs)
    model.teacher_name = name
    return model
