"""The one base class of every error a user can cause in kd, below every package so that all can derive from it.

``logit_store``, ``layers``, ``teachers``, ``students`` and ``kd`` each raise their own subclasses (a store
built for other classes, a checkpoint whose keys do not fit, a corrupt clip, a bad option); the command line
shows any :class:`KdError` as one line and lets every other exception, a bug, keep its traceback. It is not
a ``ValueError``, so that catching a library's ``ValueError`` never swallows a user's mistake, nor the reverse.
"""
from __future__ import annotations

__all__ = ["KdError"]


class KdError(Exception):
    """A problem with what the user asked for or gave: options, files, data, checkpoints, stores."""
