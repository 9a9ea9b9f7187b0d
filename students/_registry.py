"""The student registry, filled by each family file on import, and building students by name."""
from __future__ import annotations

from typing import Any

from layers import Checkpoint, Registry, build_model

from ._base import Student

__all__ = ["STUDENTS", "create_student", "list_students", "register_student", "student_cfg"]

STUDENTS: Registry[Student] = Registry("student")
register_student = STUDENTS.register


def list_students(pattern: str | None = None) -> list[str]:
    """Registered student names, sorted, optionally filtered by a shell-style pattern (``"mn*"``)."""
    return STUDENTS.names(pattern)


def student_cfg(name: str) -> dict[str, Any]:
    """The registry metadata of ``name`` (paper, sample rate, published params/MACs) without building it."""
    return dict(STUDENTS.get(name).cfg)


def create_student(name: str, num_classes: int, checkpoint: Checkpoint | None = None, **kwargs: Any) -> Student:
    """Build the student ``name`` with ``num_classes`` outputs, optionally from a checkpoint.

    Args:
        checkpoint: a local checkpoint (official release file or one saved from this model) or a state dict,
            loaded strictly through the family's ``checkpoint_filter_fn``. When its class count differs from
            ``num_classes``, only the classifier layers (``classifier_names``) keep their fresh initialisation.
        **kwargs: constructor overrides of the entrypoint (strides, width, frontend settings, ...).
    """
    model = build_model(STUDENTS.get(name), checkpoint, fresh_classifiers="resized", num_classes=num_classes, **kwargs)
    model.student_name = name
    return model
