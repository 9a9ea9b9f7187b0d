"""Building teachers and students for kd's commands, from registry names and checkpoints.

Checkpoints written by ``kd train-teacher`` and ``kd distill`` carry a ``meta`` dict (model name,
constructor arguments, class list, task), so a user passes only the file; official release files carry
no meta and are built from the registry name the user gives.
"""
from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kd.errors import KdError

__all__ = ["TeacherSpec", "build_teacher", "checkpoint_meta", "seeded"]


@dataclass(frozen=True)
class TeacherSpec:
    """``[ALIAS:]NAME[=CHECKPOINT]``: a registered teacher, optionally a checkpoint, stored under ``alias``."""

    name: str
    checkpoint: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        head, _, checkpoint = text.partition("=")
        alias, _, name = head.rpartition(":")
        if not name:
            raise KdError(f"teacher {text!r}: expected [ALIAS:]NAME[=CHECKPOINT]")
        return cls(name=name, checkpoint=checkpoint or None, alias=alias or None)

    @property
    def key(self) -> str:
        """The name the teacher's logits are stored under."""
        return self.alias or self.name

    def __str__(self) -> str:
        return f"{self.alias + ':' if self.alias else ''}{self.name}{'=' + self.checkpoint if self.checkpoint else ''}"


def checkpoint_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``meta`` dict of a checkpoint written by kd, or None for other files (e.g. official releases)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KdError(f"checkpoint not found: {path}") from None
    except Exception:
        return None  # let the strict loader report what is wrong with the file
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def seeded(name: str) -> int:
    """A seed derived from a model name: random-weight models are identical in every worker process."""
    return zlib.crc32(name.encode())


def build_teacher(spec: TeacherSpec, num_classes: int | None = None, **overrides: Any):
    """The teacher of ``spec``, in eval mode; random weights (after a loud warning) when no checkpoint is given.

    Args:
        num_classes: the dataset's class count, checked against the teacher's.
    """
    from teachers import create_teacher

    if spec.checkpoint is None:
        warnings.warn(
            f"teacher {spec.key} has no checkpoint: it runs with RANDOM weights; its logits are useless as "
            "soft targets (fine for benchmarks and tests)",
            UserWarning,
            stacklevel=2,
        )
        kwargs = dict(overrides)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeded(spec.name))
            model = create_teacher(spec.name, **kwargs)
    else:
        if not Path(spec.checkpoint).is_file():
            raise KdError(f"checkpoint of teacher {spec.key} not found: {spec.checkpoint}")
        meta = checkpoint_meta(spec.checkpoint)
        if meta and meta.get("kind") == "teacher":
            if meta["name"] != spec.name:
                raise KdError(f"{spec.checkpoint} holds a {meta['name']} teacher, not {spec.name}")
            model = create_teacher(spec.name, checkpoint=spec.checkpoint, new_heads=False, **meta["kwargs"])
        else:
            model = create_teacher(spec.name, checkpoint=spec.checkpoint, **overrides)
    if num_classes is not None and model.num_classes != num_classes:
        raise KdError(
            f"teacher {spec.key} predicts {model.num_classes} classes but the dataset has {num_classes}; "
            "fine-tune it on this label set first (kd train-teacher)"
        )
    return model.eval()
