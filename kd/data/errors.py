"""The two ways reading a dataset goes wrong: the dataset as a whole (a bad spec or layout) or one clip."""
from __future__ import annotations

from kd_errors import KdError

__all__ = ["AudioError", "DatasetError"]


class DatasetError(KdError):
    """A dataset spec, folder layout or metadata file is wrong; the message names the file and column."""


class AudioError(KdError):
    """One clip cannot be used: missing, empty, corrupt, unreadable, silent or non-finite audio.

    Callers record ``(clip_id, reason)`` and skip the clip; a clip that raised this must never be replaced
    by a row of zeros.
    """

    def __init__(self, clip_id: str, reason: str) -> None:
        self.clip_id = clip_id
        self.reason = reason
        super().__init__(f"clip {clip_id}: {reason}" if clip_id else reason)

    def __reduce__(self):  # keep both fields when the error crosses a process boundary (dask, DataLoader)
        return type(self), (self.clip_id, self.reason)
