"""Exceptions of the logit store: every user-facing problem is a one-line :class:`StoreError`.

``StoreError`` is a :class:`kd_errors.KdError` (the base of every error a user can cause in kd), not a
``ValueError``: code that catches a library's ``ValueError`` does not swallow a store that does not fit.
"""
from __future__ import annotations

from collections.abc import Sequence

from kd_errors import KdError

__all__ = [
    "DatasetMismatch",
    "IncompatibleStore",
    "InvalidLogits",
    "MissingIds",
    "StoreError",
    "StoreNotFound",
    "TeacherConflict",
    "UnknownTeacher",
    "UnwrittenRows",
    "UnwrittenViews",
    "ViewMismatch",
    "VocabularyMismatch",
]


def preview(items: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b', 'c' and 7 more`` -- the first few items of a long list, for one-line messages."""
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


class StoreError(KdError):
    """Base class: a store that does not exist, does not fit, or was asked for something it does not hold."""


class StoreNotFound(StoreError):
    """No logit store at the URL."""


class IncompatibleStore(StoreError):
    """The URL holds something that is not a logit store of a format version this code reads."""


class UnknownTeacher(StoreError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown teacher {name!r}; the store holds: {', '.join(known) or '(no teachers)'}")
        self.name = name


class TeacherConflict(StoreError):
    """A teacher re-added with settings that differ from the stored ones (other checkpoint, frontend, ...)."""


class MissingIds(StoreError):
    def __init__(self, missing: Sequence[str], total: int) -> None:
        super().__init__(f"{len(missing)} of {total} clip ids are not in the store: {preview(list(missing))}")
        self.ids = list(missing)


class UnwrittenRows(StoreError):
    def __init__(self, teacher: str, ids: Sequence[str], reasons: dict[str, str] | None = None) -> None:
        reasons = reasons or {}
        first = ids[0]
        why = f" (first: {reasons[first]})" if first in reasons else ""
        super().__init__(
            f"teacher {teacher!r} has no logits for {len(ids)} requested clip(s): {preview(list(ids))}{why}; "
            "their chunks are not done or the clips failed"
        )
        self.teacher, self.ids = teacher, list(ids)


class VocabularyMismatch(StoreError):
    """The store's class vocabulary differs from the one asked for (names the first differing class)."""


class DatasetMismatch(StoreError):
    """The store was built from other data (its dataset fingerprint differs)."""


class InvalidLogits(StoreError):
    """Logits (or view parameters) handed to ``write_chunk`` with a wrong shape, NaN/inf, or rows outside the chunk."""


class ViewMismatch(StoreError):
    """A view configuration, or the view parameters of a chunk, that differ from the ones the store holds."""


class UnwrittenViews(StoreError):
    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(f"no view parameters for {len(ids)} requested clip(s): {preview(list(ids))}; "
                         "no teacher has written their chunks yet")
        self.ids = list(ids)
