"""The student registry: one ``layers.Registry`` instance, filled by each family file on import."""
from __future__ import annotations

from layers import Registry

__all__ = ["STUDENTS", "register_student"]

STUDENTS: Registry = Registry("student")
register_student = STUDENTS.register
