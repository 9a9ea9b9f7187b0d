"""The teacher registry: one ``layers.Registry`` instance, filled by each family file on import."""
from __future__ import annotations

from layers import Registry

__all__ = ["TEACHERS", "register_teacher"]

TEACHERS: Registry = Registry("teacher")
register_teacher = TEACHERS.register
