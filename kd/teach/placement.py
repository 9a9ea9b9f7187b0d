"""Where ``kd teach`` runs and at what precision: the workers of a local dask cluster (one per visible GPU, each
pinned to it through ``CUDA_VISIBLE_DEVICES`` and declaring the dask resource ``GPU=1``; :func:`plan_workers`), what
each chunk asks a ``--scheduler`` cluster for (:func:`chunk_resources`), and the autocast precision of a device
(``auto`` is fp16 on tensor-core GPUs; :func:`resolve_precision`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from dask.distributed import Nanny, Scheduler, SpecCluster
from distributed.system import MEMORY_LIMIT

from kd.teach.config import TeachConfig
from kd_errors import KdError

__all__ = [
    "CHUNKS_PER_WORKER",
    "WorkerPlan",
    "autocast",
    "check_dashboard",
    "chunk_resources",
    "local_cluster",
    "plan_workers",
    "resolve_precision",
    "visible_gpus",
    "worker_cluster",
]

CHUNKS_PER_WORKER = 2  # chunks a worker holds at once: one on the device while the next decodes
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --- precision ------------------------------------------------------------------------------------------
def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is fp16 on GPUs with tensor cores (compute capability 7.0 and up), else fp32; an explicit
    precision is checked against the device.

    fp16 rather than bf16: both run at the same tensor-core rate, and fp16's 10-bit mantissa keeps the logits
    about eight times closer to fp32's (BENCHMARKS.md: bf16's max |Δσ| is of the order of the q8 codec's, fp16's
    a tenth of it). fp16's narrower range is covered: a clip whose logits overflow is run again in fp32.
    """
    if precision == "auto":
        tensor_cores = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0)
        return "fp16" if tensor_cores else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise KdError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; use fp16")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved ``precision`` (see :func:`resolve_precision`) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


# --- workers ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerPlan:
    """One local dask worker: its name, the device string its chunks use, its environment and dask resources."""

    name: str
    device: str
    env: dict[str, str]
    resources: dict[str, float]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (indices or UUIDs)."""
    count = torch.cuda.device_count()
    listed = [s.strip() for s in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if s.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def plan_workers(device: str, workers: int | None, gpus: Sequence[str], cores: int) -> list[WorkerPlan]:
    """The workers of a local cluster: one per visible GPU (or ``workers`` of them, round-robin over the GPUs),
    each seeing only its GPU, which it then calls ``cuda``; without GPUs (or with ``--device cpu``) ``workers``
    processes (default 1). Each worker gets ``cores // workers`` torch threads.

    Raises:
        KdError: ``cuda:N`` names a GPU that is not visible.
    """
    wants_gpu = device.startswith("cuda") or (device == "auto" and bool(gpus))
    if wants_gpu and not gpus:
        raise KdError(f"--device {device} was asked for, but torch sees no CUDA device")
    targets: list[str | None] = [None]
    if wants_gpu:
        index = device.partition(":")[2]
        if index:
            if not index.isdigit() or int(index) >= len(gpus):
                raise KdError(f"--device {device}: this machine has {len(gpus)} visible GPU(s) (cuda:0..cuda:{len(gpus) - 1})")
            targets = [gpus[int(index)]]
        else:
            targets = list(gpus)
    n = workers or len(targets)
    threads = str(max(1, cores // n))
    plans = []
    for i in range(n):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        gpu = targets[i % len(targets)]
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        plans.append(WorkerPlan(name=f"teach-{i}" + (f"-gpu{gpu}" if gpu is not None else ""),
                                device="cuda" if gpu is not None else "cpu" if device == "auto" else device,
                                env=env, resources={"GPU": 1.0} if gpu is not None else {}))
    return plans


def check_dashboard(cfg: TeachConfig) -> None:
    if cfg.dashboard and importlib.util.find_spec("bokeh") is None:
        raise KdError("--dashboard needs bokeh: pip install 'bokeh>=3.1'")


def local_cluster(cfg: TeachConfig, *, preload: Sequence[str] = ()) -> tuple[SpecCluster, str]:
    """The local cluster of ``kd teach`` (see :func:`plan_workers`) and the device string its workers use.

    Everything listens on 127.0.0.1; the dashboard (``cfg.dashboard``) on port 8787 if free. ``preload``:
    modules every worker imports first (the benchmark's simulated accelerator registers itself this way).
    """
    check_dashboard(cfg)
    cores = os.cpu_count() or 1
    plans = plan_workers(cfg.device, cfg.workers, visible_gpus() if cfg.device != "cpu" else [], cores)
    cluster = worker_cluster(plans, nthreads=CHUNKS_PER_WORKER, name="kd-teach", dashboard=cfg.dashboard,
                             preload=preload)
    return cluster, plans[0].device


def worker_cluster(plans: Sequence[WorkerPlan], *, nthreads: int, name: str, dashboard: bool = False,
                   preload: Sequence[str] = ()) -> SpecCluster:
    """A local dask cluster of one worker process per plan (its environment and resources), ``nthreads`` tasks at a
    time each, sharing this machine's memory; everything on 127.0.0.1 (the dashboard on port 8787 if asked)."""
    scheduler = {"cls": Scheduler, "options": {
        "host": "127.0.0.1", "port": 0, "dashboard": dashboard,
        "dashboard_address": "127.0.0.1:8787" if dashboard else "127.0.0.1:0"}}
    workers = {p.name: {"cls": Nanny, "options": {
        "host": "127.0.0.1", "nthreads": nthreads, "env": p.env, "resources": p.resources,
        "memory_limit": MEMORY_LIMIT // len(plans), "silence_logs": logging.ERROR, "preload": list(preload)}}
        for p in plans}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR, name=name)


def chunk_resources(scheduler_info: dict[str, Any]) -> dict[str, float] | None:
    """What each chunk task asks the scheduler for: ``1 / CHUNKS_PER_WORKER`` of a GPU when any worker declares
    ``GPU`` resources (so chunks go to GPU workers only, two at a time), else nothing."""
    declared = [w.get("resources") or {} for w in scheduler_info.get("workers", {}).values()]
    return {"GPU": 1 / CHUNKS_PER_WORKER} if any("GPU" in r for r in declared) else None
