"""Safe checkpoint loading with errors that name the keys that do not fit.

Checkpoints are read with ``torch.load(weights_only=True)`` only: a checkpoint is data, and unpickling
arbitrary objects from a file a user downloaded would run code. Loading is strict by default; every
mismatch (missing keys, unexpected keys, shape differences) is reported together, with shapes, so a
user can see at once whether they passed the wrong file or the wrong model name.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_errors import KdError

__all__ = [
    "CheckpointError",
    "CheckpointFilter",
    "load_checkpoint",
    "load_state_dict_strict",
    "read_checkpoint",
    "sha256_file",
    "unwrap_state_dict",
]

# A family's ``checkpoint_filter_fn(state_dict, model)``: maps a checkpoint's keys and tensors to the model's.
CheckpointFilter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_MAX_LISTED = 8


class CheckpointError(KdError):
    """A checkpoint that cannot be read or does not match the model."""


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Return the tensor mapping inside common checkpoint wrappers (``{"state_dict": ...}``, ``{"model": ...}``)."""
    while isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_mapping(obj):
        raise CheckpointError("checkpoint holds no state dict (a mapping of parameter names to tensors)")
    return dict(obj)


def _is_tensor_mapping(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The object a checkpoint file holds, read without unpickling code (``weights_only=True``): the one place the
    project reads a checkpoint (kd's training state, students, teachers, official releases alike).

    Raises:
        CheckpointError: the file is missing, or not a torch checkpoint of plain tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types (pickle, zip, weights-only) for one problem
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line}") from e


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (unwrapped from ``{"model": ...}`` and the like) without unpickling code."""
    return unwrap_state_dict(read_checkpoint(path))


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    filter_fn: CheckpointFilter | None = None,
    source: str = "checkpoint",
) -> None:
    """Load ``state_dict`` into ``model`` with ``strict=True`` semantics and a readable error.

    Args:
        filter_fn: the family's ``checkpoint_filter_fn``, mapping an official checkpoint's keys to the model's.
        source: how to name the checkpoint in error messages (usually its path).
    """
    sd = filter_fn(dict(state_dict), model) if filter_fn else dict(state_dict)
    problems = describe_mismatch(model.state_dict(), sd)
    if problems:
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)


def describe_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> list[str]:
    """List missing keys, unexpected keys and shape differences, each with the shapes involved."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and tuple(expected[k].shape) != tuple(given[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + _listing(missing, expected))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + _listing(unexpected, given))
    if shapes:
        listed = ", ".join(
            f"{k} (model {tuple(expected[k].shape)}, checkpoint {tuple(given[k].shape)})" for k in shapes[:_MAX_LISTED]
        )
        more = f" and {len(shapes) - _MAX_LISTED} more" if len(shapes) > _MAX_LISTED else ""
        problems.append(f"{len(shapes)} shape mismatch(es): {listed}{more}")
    return problems


def _listing(keys: list[str], tensors: Mapping[str, torch.Tensor]) -> str:
    listed = ", ".join(f"{k} {tuple(tensors[k].shape)}" for k in keys[:_MAX_LISTED])
    return listed + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")
