"""Which exceptions are the user's mistakes (shown as one line) rather than bugs (shown with a traceback)."""
from __future__ import annotations

__all__ = ["KdError", "is_user_error"]


class KdError(ValueError):
    """A problem with what the user asked for: bad options, a store that does not fit the dataset, ..."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from layers import CheckpointError, UnknownModelError
    from logit_store import StoreError

    from kd.data import AudioError, DatasetError

    return KdError, CheckpointError, UnknownModelError, StoreError, DatasetError, AudioError, FileNotFoundError


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, _user_error_types())
