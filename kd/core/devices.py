"""Which torch device a process runs on, and the process group ``torchrun`` starts: shared by teaching (its
workers), training and the predictors of ``kd eval`` and ``kd predict``."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed

from kd_errors import KdError

__all__ = ["DistEnv", "init_distributed", "select_device"]


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a user error, not a silent fallback.

    A bare ``cuda`` means the process's own GPU: ``cuda:LOCAL_RANK`` under ``torchrun``, else ``cuda:0``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise KdError("--device cuda was asked for, but torch sees no CUDA device")
    if device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
