"""``kd teach``: run teachers once over a dataset and write their logits into a logit store, on dask.

Work is sharded on the store's chunk boundaries: one dask task per chunk decodes each clip of the chunk
once (at the highest sample rate any teacher needs), runs every teacher that has not finished that chunk
(resampled once per distinct rate), writes the chunk and marks it done. Because a chunk is the unit of both work
and storage, writers never share a chunk and need no lock, a killed job loses at most the chunks in flight, and
a rerun of the same command skips finished chunks.

**Inside a worker** a chunk passes three stages, and a worker holds :data:`CHUNKS_PER_WORKER` chunks at once,
so that one chunk decodes (or is written) while the other is on the device:

* decode: a pool of ``decode_workers`` threads per worker decodes, resamples and checks the clips (soundfile
  and soxr release the GIL, so the threads decode in parallel); the chunk's batches are handed to the device
  as soon as their clips are ready;
* device: the teachers run batch by batch under the worker's device lock (one chunk on the device at a time),
  with autocast (``precision``: ``auto`` is fp16 on tensor-core GPUs, see :func:`resolve_precision`); each
  batch is staged in pinned memory on CUDA and copied without blocking, and the next batch is launched before
  the previous one's logits are copied back;
* write: q8 encoding and the chunk's objects, outside the device lock.

A local cluster on a machine with GPUs starts one worker per visible GPU, each pinned to its GPU through
``CUDA_VISIBLE_DEVICES`` and declaring the dask resource ``GPU=1`` (see :func:`plan_workers`); on a
``--scheduler`` cluster whose workers declare ``GPU`` resources, each chunk asks for ``1 / CHUNKS_PER_WORKER``
of one.

**Clip length**: with ``--seconds``, every clip is cropped or padded to it, as the student will see it. Without
it, the dataset's policy chooses (:meth:`kd.data.Dataset.clip_lengths`: metadata durations, else the 90th
percentile of a decoded sample); when the lengths vary and every teacher is clip-level, each clip is fed at its
own length, cropped to the chosen one, in batches of similar length (no clip padded by more than
``LENGTH_TOLERANCE``); otherwise every clip is cropped or padded to it. Either way no clip is fed shorter than the
longest of the teachers' shortest inputs (:meth:`teachers.Teacher.min_input_samples`: a CNN's pooling stack, a
transformer's patch): a short clip is padded with zeros up to it, and the store records that length
(``clip_lengths.pad_to_seconds``) for ``kd distill``. A clip shorter than :attr:`~kd.data.ClipLengths.min_seconds`
(half the dataset's short end: too short to be one of its recordings), or silent, is flagged, never padded into a
target.

**Views** (``--views K --augment dir,roll,gain,speed``, see :mod:`kd.core.views`): every clip is decoded once and
turned into its ``K`` views in the decode thread (view 0 the clip itself), each view a row of the chunk for the
teachers; the store keeps the logits ``[N, K, ...]`` and each clip's view parameters, which ``kd distill``
replays. A clip fails (for a teacher) if any of its views does.

**Transfer sets** (``--transfer FORMAT:PATH``, e.g. ``folder:DIR``): their clips join the store beside the
split's, taught like any other; their labels, if any, are ignored (the store's vocabulary is the labelled
dataset's). One store so covers a distillation's labelled clips and its transfer sets.

**Failures** are per clip only where the clip is at fault, recorded (clip id and reason) in the store and never
stored as logits (:mod:`kd.core.failures` sorts them into kinds); everything else ends the job with its traceback:

* decoding: :class:`kd.data.AudioError` (missing, empty, unreadable, silent, non-finite, too short) always;
  any other :data:`DATA_ERRORS` raised while reading, decoding or resampling one clip is recorded as
  ``decode error: Type: message``; all other exception types (TypeError, KeyError, ...) are bugs;
* teachers: an error a teacher raises is never the clip's (it decoded fine and was padded to what every teacher
  takes): it stops the job as :class:`TeacherFailed`, with the teacher's own error and traceback as its cause.
  A clip whose logits are not finite in fp16/bf16 is run again in fp32, and recorded if they still are not;
* a stage that has not worked on a single clip in this worker (every clip failing to decode, a teacher's logits
  never finite) is broken, not fed bad data: its first error propagates.

A job whose failed clips exceed ``max_failed_fraction`` (``--max-failed``) of the store still keeps everything it
wrote, but :func:`check_failed_share` then refuses it, so ``kd teach`` exits non-zero.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import logging
import math
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from dask.distributed import Client, Nanny, Scheduler, SpecCluster, as_completed
from distributed.system import MEMORY_LIMIT

from kd.core.checkpoints import TeacherSpec, build_teacher
from kd.core.devices import select_device
from kd.core.failures import FAILURE_KINDS, describe_failures, failure_kind
from kd.core.views import PARAMS as VIEW_PARAMS
from kd.core.views import ImpulseResponses, ViewConfig, apply_view, draw_views
from kd.data import AudioError, ClipLengths, Dataset, open_dataset
from kd.data.base import LENGTH_TOLERANCE
from kd.tasks.metrics import UndefinedMetric
from kd.track.tracking import DatasetInput, RunLogger, tracked_run
from kd_errors import KdError
from layers import sha256_file
from layers.resample import resample
from logit_store import LogitStore, StoreNotFound
from teachers import Teacher

__all__ = [
    "CHUNKS_PER_WORKER",
    "DATA_ERRORS",
    "PRECISIONS",
    "ChunkResult",
    "TeachConfig",
    "TeachSummary",
    "TeacherFailed",
    "TooManyFailedClips",
    "WorkerPlan",
    "check_failed_share",
    "chunk_resources",
    "failure_kind",
    "length_batches",
    "plan_workers",
    "resolve_precision",
    "run_teach",
    "teach_chunk",
]

CHUNKS_PER_WORKER = 2  # chunks a worker holds at once: one on the device while the next decodes
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What one bad file makes decoders raise while reading, decoding, resampling or cutting it: soundfile
# (LibsndfileError is a RuntimeError), soxr and numpy (ValueError), h5py (OSError). These subclasses of them are
# bugs, never data:
DATA_ERRORS = (AudioError, OSError, EOFError, RuntimeError, ValueError, ArithmeticError, IndexError)
_NEVER_DATA = (NotImplementedError, RecursionError)
MAX_FAILED_FRACTION = 0.05  # kd teach's default --max-failed


def _is_data_error(error: BaseException) -> bool:
    return isinstance(error, DATA_ERRORS) and not isinstance(error, _NEVER_DATA)


class TeacherFailed(RuntimeError):
    """A teacher raised on clips that decoded fine: not the clips' fault, so the job stops (the teacher's own
    error, with its traceback, is the ``__cause__``)."""


class TooManyFailedClips(KdError):
    """More of a store's clips failed than ``--max-failed`` allows; what was taught is kept."""


@dataclass(frozen=True)
class TeachConfig:
    dataset: str
    store: str
    teachers: tuple[TeacherSpec, ...]
    split: str | None = None
    codec: str = "q8"
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    seconds: float | None = None
    chunk_size: int = 256
    workers: int | None = None
    decode_workers: int | None = None
    scheduler: str | None = None
    dashboard: bool = False
    tracking_uri: str | None = None
    views: int = 1
    augment: tuple[str, ...] = ()
    dir_folder: str | None = None
    view_seed: int = 0
    transfer: tuple[str, ...] = ()
    max_failed_fraction: float = MAX_FAILED_FRACTION

    def __post_init__(self) -> None:
        if not self.teachers:
            raise KdError("name at least one --teacher")
        keys = [t.key for t in self.teachers]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise KdError(f"teacher names must be unique in a store; repeated: {', '.join(repeated)} (use ALIAS:NAME)")
        if self.batch_size < 1 or self.chunk_size < 1 or (self.workers is not None and self.workers < 1):
            raise KdError("batch size, chunk size and workers must be >= 1")
        if self.decode_workers is not None and self.decode_workers < 1:
            raise KdError("--decode-workers must be >= 1")
        if self.seconds is not None and not self.seconds > 0:
            raise KdError(f"--seconds must be positive, got {self.seconds}")
        if self.precision not in PRECISIONS:
            raise KdError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.views > 1 and not self.augment:
            raise KdError(f"--views {self.views} needs augmentations to draw views from (--augment dir,roll,gain,speed)")
        if self.views < 1:
            raise KdError(f"--views must be >= 1, got {self.views}")
        if self.scheduler and self.workers is not None:
            raise KdError("--workers starts a local cluster; with --scheduler the cluster's own workers run the job")
        if not 0 <= self.max_failed_fraction <= 1:
            raise KdError(f"--max-failed is a fraction of the clips, from 0 to 1; got {self.max_failed_fraction:g}")


@dataclass(frozen=True)
class _Job:
    """What the client decided for every worker: the clip length, how clips are fed (``pad_samples``: the fewest
    samples at the decode rate that every teacher takes), the device and precision."""

    seconds: float
    min_seconds: float
    variable: bool
    pad_samples: int
    device: str
    precision: str
    decode_workers: int | None
    views: ViewConfig | None = None


@dataclass
class ChunkResult:
    chunk: int
    clips: int
    written: dict[str, int]
    failures: dict[str, str]
    seconds: float
    device: str = ""
    precision: str = ""
    decode_seconds: float = 0.0  # wall seconds of the decode threads on this chunk's clips, summed
    decode_threads: int = 0


@dataclass
class TeachSummary:
    store: str
    clips: int
    chunks_run: int
    chunks_skipped: int
    written: dict[str, int]
    failures: dict[str, str]
    wall_seconds: float
    store_info: dict[str, Any]
    clip_lengths: dict[str, Any] = field(default_factory=dict)
    fed_as: str = ""
    failure_kinds: dict[str, int] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    decode_threads: int = 0  # per worker
    decode_clips_per_s_per_thread: float | None = None  # wall clock, under the run's load
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def failed_fraction(self) -> float:
        """The share of the store's clips without logits (for any teacher)."""
        return len(self.failures) / self.clips if self.clips else 0.0


# --- precision and workers ------------------------------------------------------------------------------------------
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


# --- the per-process context of a worker --------------------------------------------------------------------------
class _Context:
    """What a worker process builds once per job: the dataset, the store handle, the teachers and the decode pool."""

    def __init__(self, cfg: TeachConfig, job: _Job) -> None:
        self.job = job
        self.data = open_dataset(cfg.dataset, split=cfg.split)
        self.sources = {c.id: (data, c) for data in taught_datasets(cfg, self.data) for c in data.clips}
        self.irs = ImpulseResponses(cfg.dir_folder) if job.views and job.views.impulse_responses else None
        self.store = LogitStore.open(cfg.store, mode="r+")
        self.device = select_device(job.device)
        self.precision = resolve_precision(job.precision, self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the client already warned about random weights
            self.teachers: dict[str, Teacher] = {
                s.key: build_teacher(s, len(self.data.classes)).to(self.device).eval() for s in cfg.teachers}
        self.sample_rate = max(t.sample_rate for t in self.teachers.values())
        self.decode_threads = job.decode_workers or torch.get_num_threads()
        self.decode_pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="kd-decode")
        self.device_lock = threading.Lock()  # one chunk on the device at a time
        self.write_lock = threading.Lock()  # one store handle per process; its writes one at a time
        self.successes: Counter[str] = Counter()  # per stage ("decode" or a teacher): clips it has handled
        self._staging = threading.local()

    def decode(self, clip_id: str) -> tuple[list[np.ndarray] | BaseException, float]:
        """The clip's views (the clip alone without views) at the teachers' rate and the job's length, or the
        data error that makes it unusable; and the wall seconds it took (what a decode thread delivers under the
        machine's actual load)."""
        job, start = self.job, time.perf_counter()
        data, clip = self.sources[clip_id]
        try:
            audio = data.load_audio(clip, self.sample_rate, job.seconds, pad=not job.variable,
                                    min_seconds=job.min_seconds)
            views = [audio] if job.views is None else [apply_view(audio, p, self.sample_rate, self.irs)
                                                       for p in self.view_params(clip_id)]
        except Exception as e:  # sorted into data problems and bugs by _is_data_error
            if not _is_data_error(e):
                raise
            return e, time.perf_counter() - start
        return [_padded_to(view, job.pad_samples) for view in views], time.perf_counter() - start

    def view_params(self, clip_id: str) -> np.ndarray:
        """The ``[K, P]`` parameters of a clip's views (drawn from its id: the same in every process and rerun)."""
        return draw_views(self.job.views, clip_id, self.sources[clip_id][1].device)

    def stage(self, audio: Sequence[np.ndarray]) -> torch.Tensor:
        """A zero-padded ``[B, N]`` host batch: pinned on CUDA (torch's pinned-memory cache reuses a block only
        once its copy to the device is done), else a buffer reused by the calling thread (a CPU forward is done
        with it before the thread stages again; a fresh 20 MB buffer per batch costs more in page faults than
        the copy). Rows are written through NumPy, several times faster than torch's row copies."""
        b, n = len(audio), max(len(a) for a in audio)
        if self.device.type == "cuda":
            host = torch.empty((b, n), dtype=torch.float32, pin_memory=True)
        else:
            flat = getattr(self._staging, "flat", None)
            if flat is None or flat.numel() < b * n:
                flat = self._staging.flat = torch.empty(b * n, dtype=torch.float32)
            host = flat[: b * n].view(b, n)
        rows = host.numpy()
        for i, a in enumerate(audio):
            rows[i, : len(a)] = a
            rows[i, len(a):] = 0
        return host

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)


def _padded_to(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` with zeros appended up to ``samples`` (unchanged if it is that long already)."""
    return audio if len(audio) >= samples else np.pad(audio, (0, samples - len(audio)))


_CONTEXTS: dict[tuple[TeachConfig, _Job], _Context] = {}
_CONTEXT_LOCK = threading.Lock()


def _context(cfg: TeachConfig, job: _Job) -> _Context:
    with _CONTEXT_LOCK:  # a worker's threads share one context
        if (cfg, job) not in _CONTEXTS:
            for old in _CONTEXTS.values():
                old.close()
            _CONTEXTS.clear()
            _CONTEXTS[cfg, job] = _Context(cfg, job)
        return _CONTEXTS[cfg, job]


def shortest_inputs(models: dict[str, Teacher]) -> dict[str, float]:
    """Each teacher's shortest input in seconds (:meth:`teachers.Teacher.min_input_samples`)."""
    return {name: model.min_input_samples() / model.sample_rate for name, model in models.items()}


def teach_lengths(cfg: TeachConfig, data: Dataset, shortest: Mapping[str, float] | None = None) -> ClipLengths:
    """Audio length fed to the teachers: ``--seconds``, else the dataset's clip-length policy, raised to the
    longest of the teachers' ``shortest`` inputs (seconds by teacher, see :func:`shortest_inputs`) where the
    dataset's clips are shorter.

    Not the teachers' context: a 1 s TAU22 clip padded to PaSST's 10 s would be 90 % silence, which the
    teacher never saw in training. Shorter clips give fewer time tokens (as in the DCASE'23 fine-tuning on 1 s);
    clips longer than a teacher's context are windowed by the teacher itself.

    Raises:
        KdError: ``--seconds`` is shorter than a teacher takes.
    """
    lengths = data.clip_lengths(seconds=cfg.seconds)
    if not shortest:
        return lengths
    name, floor = max(shortest.items(), key=lambda item: item[1])
    if cfg.seconds is not None and cfg.seconds < floor:
        raise KdError(f"--seconds {cfg.seconds:g} is shorter than teacher {name} takes ({floor:.4g} s, what its "
                      f"frontend and network need); pass at least --seconds {math.ceil(floor * 1000) / 1000:g}")
    return replace(lengths, seconds=floor, chosen_by="shortest input") if lengths.seconds < floor else lengths


def _pad_samples(models: dict[str, Teacher]) -> int:
    """The fewest samples at the decode rate (the highest teacher rate) that every teacher takes once resampled
    (:func:`layers.resample.resample` returns ``ceil(n * new / orig)`` samples)."""
    rate = max(m.sample_rate for m in models.values())
    return max(math.ceil(m.min_input_samples() * rate / m.sample_rate) for m in models.values())


def length_batches(lengths: Sequence[int], batch_size: int, tolerance: float = LENGTH_TOLERANCE) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of at most ``batch_size`` whose longest member is at most
    ``1 + tolerance`` times the shortest, so no clip is padded by more than ``tolerance`` of its length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and lengths[i] <= (1 + tolerance) * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


# --- one chunk ------------------------------------------------------------------------------------------------------
@dataclass
class _ChunkState:
    """The rows of one chunk as the stages fill them in: ``views`` rows per clip (view ``k`` of clip ``i`` is row
    ``i * views + k``)."""

    ids: list[str]
    names: list[str]
    info: dict[str, dict[str, Any]]
    failures: dict[str, str] = field(default_factory=dict)  # decoding: every teacher loses the clip
    teacher_failures: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)  # first unexpected error per stage
    clip: dict[str, np.ndarray] = field(default_factory=dict)
    frame: dict[str, np.ndarray] = field(default_factory=dict)
    done: dict[str, np.ndarray] = field(default_factory=dict)
    decode_seconds: float = 0.0  # summed over the chunk's clips, in the decode threads
    views: int = 1

    def __post_init__(self) -> None:
        n = len(self.ids) * self.views
        for name in self.names:
            info = self.info[name]
            self.teacher_failures[name] = {}
            self.clip[name] = np.zeros((n, info["num_classes"]), np.float32)
            if info.get("frames"):
                self.frame[name] = np.zeros((n, info["frames"], info["num_classes"]), np.float32)
            self.done[name] = np.zeros(n, bool)

    def fail(self, stage: str, row: int, reason: str, error: BaseException | None = None) -> None:
        target = self.failures if stage == "decode" else self.teacher_failures[stage]
        target[self.ids[row // self.views]] = reason
        if error is not None:
            self.errors.setdefault(stage, error)


def _reason(error: BaseException) -> str:
    if isinstance(error, AudioError):
        return error.reason
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _batches(ctx: _Context, state: _ChunkState, decoded: list[Future], batch_size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Batches of ``(row, audio)`` as the decode pool finishes them, recording the clips that fail to decode.

    Fixed-length clips are batched in order, each as soon as its clips are ready; variable-length ones wait for
    the whole chunk and are batched by length.
    """
    def take(clip: int) -> list[tuple[int, np.ndarray]]:
        """The rows of a decoded clip's views, none if it failed."""
        result, seconds = decoded[clip].result()
        state.decode_seconds += seconds
        row = clip * state.views
        if isinstance(result, list):
            ctx.successes["decode"] += 1
            return [(row + k, view) for k, view in enumerate(result)]
        if isinstance(result, AudioError):
            state.fail("decode", row, result.reason)
        else:
            state.fail("decode", row, f"decode error: {_reason(result)}", result)
        return []

    if not ctx.job.variable:
        batch: list[tuple[int, np.ndarray]] = []
        for clip in range(len(decoded)):
            for row_audio in take(clip):
                batch.append(row_audio)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch
        return
    ready = [row_audio for clip in range(len(decoded)) for row_audio in take(clip)]
    for group in length_batches([len(a) for _, a in ready], batch_size):
        yield [ready[i] for i in group]


def _autocast(ctx: _Context, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=_DTYPES[precision])


def _launch(ctx: _Context, names: Sequence[str], audio: Sequence[np.ndarray],
            precision: str | None = None) -> dict[str, Any]:
    """Each teacher's outputs for a batch (on CUDA, launched and still being computed) at ``precision`` (default:
    the job's). The caller holds the device lock.

    Raises:
        TeacherFailed: a teacher raised; the clips decoded fine, so the error is never theirs.
    """
    wave = ctx.stage(audio).to(ctx.device, non_blocking=True)
    by_rate: dict[int, torch.Tensor] = {}
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for name in names:
            teacher = ctx.teachers[name]
            try:
                if teacher.sample_rate not in by_rate:  # once per distinct rate, in float32
                    by_rate[teacher.sample_rate] = resample(wave, ctx.sample_rate, teacher.sample_rate)
                with _autocast(ctx, precision or ctx.precision):
                    out[name] = teacher(by_rate[teacher.sample_rate])
            except Exception as e:
                shortest, longest = min(len(a) for a in audio), max(len(a) for a in audio)
                lengths = f"{shortest}" if shortest == longest else f"{shortest}-{longest}"
                raise TeacherFailed(
                    f"teacher {name} raised {type(e).__name__} on a batch of {len(audio)} clips that decoded fine "
                    f"({lengths} samples at {ctx.sample_rate} Hz, no fewer than the {ctx.job.pad_samples} every "
                    f"teacher takes): not the clips' fault, so the job stops: {e}"
                ) from e
    return out


def _collect(ctx: _Context, state: _ChunkState, rows: Sequence[int], outputs: dict[str, Any]) -> list[tuple[str, int]]:
    """Copy a batch's logits into the chunk's rows (waiting for the device); returns the (teacher, row) pairs
    whose logits are not finite, which are left unwritten."""
    bad = []
    for name, output in outputs.items():
        clip = output.clip.float().cpu().numpy()
        frame = output.frame.float().cpu().numpy() if name in state.frame else None
        finite = np.isfinite(clip).all(axis=1)
        if frame is not None:
            finite &= np.isfinite(frame).all(axis=(1, 2))
        for i, row in enumerate(rows):
            if not finite[i]:
                bad.append((name, row))
                continue
            state.clip[name][row] = clip[i]
            if frame is not None:
                state.frame[name][row] = frame[i]
            state.done[name][row] = True
        ctx.successes[name] += int(finite.sum())
    return bad


def _collect_or_retry(ctx: _Context, state: _ChunkState, batch: list[tuple[int, np.ndarray]],
                      outputs: dict[str, Any]) -> None:
    """Collect a batch; a clip whose logits overflowed in reduced precision is run again alone in fp32, and a
    clip whose logits are still not finite is a failure of that teacher."""
    audio = dict(batch)
    for name, row in _collect(ctx, state, [row for row, _ in batch], outputs):
        if ctx.precision != "fp32":
            again = _launch(ctx, [name], [audio[row]], precision="fp32")
            if not _collect(ctx, state, [row], again):
                continue
        state.fail(name, row, f"teacher {name} returned non-finite logits", KdError(
            f"teacher {name} returned non-finite logits on every clip so far (precision {ctx.precision})"))


def _run_device(ctx: _Context, state: _ChunkState, batches: Iterator[list[tuple[int, np.ndarray]]]) -> None:
    """Run the teachers batch by batch; batch ``k + 1`` is launched before batch ``k``'s logits are copied back
    (on CUDA the host stages the next batch while the device computes)."""
    previous: tuple[list[tuple[int, np.ndarray]], dict[str, Any]] | None = None
    for batch in batches:
        outputs = _launch(ctx, state.names, [a for _, a in batch])
        if previous is not None:
            _collect_or_retry(ctx, state, *previous)
        previous = (batch, outputs)
    if previous is not None:
        _collect_or_retry(ctx, state, *previous)


def teach_chunk(cfg: TeachConfig, job: _Job, chunk: int) -> ChunkResult:
    """Decode the clips of store chunk ``chunk``, run the teachers that have not finished it, write it."""
    start = time.perf_counter()
    ctx = _context(cfg, job)
    store = ctx.store
    names = [name for name in ctx.teachers if not store.done_chunks(name)[chunk]]
    ids = [str(i) for i in store.chunk_ids(chunk)]
    if not names:
        return ChunkResult(chunk, len(ids), {}, {}, time.perf_counter() - start, str(ctx.device), ctx.precision)
    views = job.views.count if job.views else 1
    state = _ChunkState(ids, names, {n: store.teacher_info(n) for n in names}, views=views)
    decoded = [ctx.decode_pool.submit(ctx.decode, clip_id) for clip_id in ids]
    batches = _batches(ctx, state, decoded, cfg.batch_size)
    first = next(batches, None)  # the device is taken once this chunk has a batch to run, and kept for the chunk
    if first is not None:
        with ctx.device_lock:
            _run_device(ctx, state, itertools.chain([first], batches))
    for stage, error in state.errors.items():
        if ctx.successes[stage] == 0:  # never worked on any clip in this worker: broken, not bad data
            raise error
    written = {}
    failures = dict(state.failures)
    with ctx.write_lock:
        for name in names:
            teacher_failures = {**state.failures, **state.teacher_failures[name]}
            clip, frame, valid = state.clip[name], state.frame.get(name), state.done[name]
            if views > 1:  # rows of views -> [clips, views, ...]; a clip counts only with all its views
                clip, valid = clip.reshape(len(ids), views, -1), valid.reshape(len(ids), views).all(axis=1)
                frame = None if frame is None else frame.reshape(len(ids), views, *frame.shape[1:])
            params = np.stack([ctx.view_params(i) for i in ids]) if job.views else None
            store.write_chunk(name, chunk, clip, frame, valid=valid, failures=teacher_failures, view_params=params)
            written[name] = int(valid.sum())
            failures.update(state.teacher_failures[name])
    return ChunkResult(chunk, len(ids), written, failures, time.perf_counter() - start, str(ctx.device),
                       ctx.precision, state.decode_seconds, ctx.decode_threads)


# --- the client side ----------------------------------------------------------------------------------------------
def taught_datasets(cfg: TeachConfig, data: Dataset) -> list[Dataset]:
    """The split to teach and the transfer sets (labels dropped) that join it in the store."""
    return [data, *(open_dataset(spec).unlabelled() for spec in cfg.transfer)]


def store_identity(cfg: TeachConfig, datasets: Sequence[Dataset]) -> tuple[str, str, list[str]]:
    """The store's dataset name and fingerprint, and its clip ids: the split's, then each transfer set's.

    Raises:
        KdError: a clip id occurs in two of the datasets (ids are the store's join key).
    """
    ids = [c.id for data in datasets for c in data.clips]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        twice = sorted({i for i in ids if i in seen or seen.add(i)})
        raise KdError(f"{len(twice)} clip id(s) occur in two of the taught datasets (e.g. {', '.join(twice[:3])}); "
                      "a store keys logits by clip id")
    name = f"{cfg.dataset}#{datasets[0].split}" + "".join(f"+{spec}" for spec in cfg.transfer)
    fingerprint = datasets[0].fingerprint()
    if len(datasets) > 1:
        joined = "+".join(d.fingerprint() for d in datasets)
        fingerprint = hashlib.sha256(joined.encode()).hexdigest()
    return name, fingerprint, ids


def view_config(cfg: TeachConfig) -> ViewConfig | None:
    """The views to draw (``--views K`` with ``--augment``), ``None`` for the clips as they are."""
    if cfg.views == 1:
        return None
    irs = ImpulseResponses(cfg.dir_folder) if cfg.dir_folder else None
    return ViewConfig.create(cfg.views, cfg.augment, irs, seed=cfg.view_seed)


def prepare_store(cfg: TeachConfig, on_warning: Callable[[str], None] | None = None):
    """Create or reopen the store and register the teachers; refuse a store built for other data or teachers.

    Returns:
        ``(dataset, store, teachers, clip lengths)``.
    """
    if not cfg.scheduler:
        select_device(cfg.device)  # the local workers share this machine's devices: say now if CUDA is missing
    data = open_dataset(cfg.dataset, split=cfg.split)
    if not data.clips:
        raise KdError(f"{cfg.dataset} (split {data.split}) holds no clips")
    if data.task is None:
        raise KdError(f"{cfg.dataset} has no labels, so no classes for the teachers to predict; teach it as a "
                      "transfer set of a labelled dataset: --dataset LABELLED --transfer " + cfg.dataset)
    name, fingerprint, ids = store_identity(cfg, taught_datasets(cfg, data))
    views = view_config(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = {s.key: build_teacher(s, len(data.classes)) for s in cfg.teachers}
    for w in caught:
        if on_warning:
            on_warning(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    try:
        store = LogitStore.open(cfg.store, mode="r+")
    except StoreNotFound:
        store = LogitStore.create(
            cfg.store, ids, data.classes, mids=data.mids, dataset=name, dataset_fingerprint=fingerprint,
            chunk_size=cfg.chunk_size, views=views and views.to_dict(), view_param_names=views and VIEW_PARAMS,
        )
    store.check_dataset(fingerprint)
    store.check_views(views and views.to_dict(), views and VIEW_PARAMS)
    store.check_classes(data.classes)
    lengths = teach_lengths(cfg, data, shortest_inputs(models))
    for spec in cfg.teachers:
        model = models[spec.key]
        frames = (model.num_output_frames(round(lengths.seconds * model.sample_rate))
                  if model.frames_per_second else None)
        store.add_teacher(
            spec.key, codec=cfg.codec, frames=frames, frames_per_second=model.frames_per_second,
            attrs={
                "model": spec.name,
                "num_classes": model.num_classes,
                "checkpoint": spec.checkpoint,
                "checkpoint_sha256": sha256_file(spec.checkpoint) if spec.checkpoint else "random-weights",
                "frontend": model.frontend_config(),
                "sample_rate": model.sample_rate,
                "clip_seconds": lengths.seconds,
            },
        )
    return data, store, models, lengths


def feeds_own_length(cfg: TeachConfig, lengths: ClipLengths, models: dict[str, Teacher]) -> bool:
    """Whether each clip is fed at its own length: lengths vary, no ``--seconds`` asks for one length as the
    student will see it, and every teacher is clip-level (frame-wise ones store a fixed number of frames)."""
    return cfg.seconds is None and lengths.variable and all(m.frames_per_second is None for m in models.values())


def _fed_as(lengths: ClipLengths, variable: bool, pad_to_seconds: float) -> str:
    if variable:
        return (f"each clip at its own length up to {lengths.seconds:.4g} s and at least {pad_to_seconds:.4g} s "
                f"(the teachers' shortest input), batched by length (padding <= {LENGTH_TOLERANCE:.0%})")
    return f"every clip cropped or padded to {lengths.seconds:.4g} s"


def run_teach(
    cfg: TeachConfig,
    on_progress: Callable[[int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> TeachSummary:
    """Teach every pending chunk on a dask cluster, then score the teachers on the dataset's labels.

    ``on_status`` receives one-line notes as the job goes: the clip length chosen and the dashboard's address.
    """
    start = time.perf_counter()
    _check_dashboard(cfg)  # before anything is created
    data, store, models, lengths = prepare_store(cfg, on_warning)
    variable = feeds_own_length(cfg, lengths, models)
    pad_to_seconds = max(shortest_inputs(models).values())
    fed_as = _fed_as(lengths, variable, pad_to_seconds)
    if on_status:
        on_status(f"clip length {lengths.describe()}; {fed_as}")
    names = [s.key for s in cfg.teachers]
    params, tags = _run_params(cfg, store, lengths, variable)
    with tracked_run("teach", run_name=f"teach {params['teachers']}", params=params, tags=tags,
                     tracking_uri=cfg.tracking_uri) as run:
        taught = taught_datasets(cfg, data)
        run.log_inputs([DatasetInput.of_dataset(taught[0], "taught"),
                        *(DatasetInput.of_dataset(t, "transfer") for t in taught[1:])])
        pending = [c for c in range(store.num_chunks) if not all(store.done_chunks(n)[c] for n in names)]
        job = _Job(seconds=lengths.seconds, min_seconds=lengths.min_seconds, variable=variable,
                   pad_samples=_pad_samples(models), device=cfg.device, precision=cfg.precision,
                   decode_workers=cfg.decode_workers, views=view_config(cfg))
        results = _run_on_dask(cfg, job, pending, on_progress, on_status, total_clips=len(store.clip_ids))
        store = type(store).open(cfg.store, mode="r+")
        failures = {k: v for n in names for k, v in store.failures(n).items()}
        kinds = Counter(failure_kind(r) for r in failures.values())
        written = {n: sum(r.written.get(n, 0) for r in results) for n in names}
        summary = TeachSummary(
            store=cfg.store, clips=len(store.clip_ids), chunks_run=len(pending),
            chunks_skipped=store.num_chunks - len(pending), written=written, failures=failures,
            wall_seconds=time.perf_counter() - start, store_info=store.info(), clip_lengths=lengths.as_dict(),
            fed_as=fed_as, failure_kinds={k: kinds[k] for k in FAILURE_KINDS if kinds[k]},
            devices=sorted({f"{r.device} {r.precision}" for r in results if r.device}),
            decode_threads=max((r.decode_threads for r in results), default=0),
        )
        decode_seconds = sum(r.decode_seconds for r in results)
        if decode_seconds > 0:
            summary.decode_clips_per_s_per_thread = sum(r.clips for r in results if r.decode_seconds) / decode_seconds
        store.set_attrs({"clip_lengths": {**lengths.as_dict(), "fed_as": fed_as, "pad_to_seconds": pad_to_seconds,
                                          "too_short": kinds["too short"], "silent": kinds["silent"]}})
        if summary.devices:
            store.set_attrs({"teach_devices": summary.devices})
        summary.metrics = score_teachers(store, data, names)
        for name in names:
            if name in summary.metrics:
                store.set_teacher_metrics(name, summary.metrics[name])
        if "ensemble" in summary.metrics:
            store.set_attrs({"ensemble_metrics": summary.metrics["ensemble"]})
        run.log_metrics(_run_metrics(summary))
        run.log_inputs([DatasetInput.of_store(store, "written")])
        _log_figures(run, summary, data)
        summary.run_id = run.run_id
    return summary


def check_failed_share(summary: TeachSummary, max_fraction: float = MAX_FAILED_FRACTION) -> None:
    """Refuse a job that lost more than ``max_fraction`` of its clips; the store keeps what was taught.

    Raises:
        TooManyFailedClips: one line with the failures by kind, an example of each and its fix.
    """
    if summary.failed_fraction <= max_fraction:
        return
    raise TooManyFailedClips(
        f"{len(summary.failures)} of {summary.clips} clips ({summary.failed_fraction:.1%}) have no logits, more than "
        f"--max-failed {max_fraction:g} allows: {describe_failures(summary.failures)}. The other clips' logits are "
        "stored: kd distill --missing drop trains without these"
    )


def _log_figures(run: RunLogger, summary: TeachSummary, data: Dataset) -> None:
    """The teachers' quality on the taught labels and the store's bytes per logit, as figures of the teach run."""
    from kd.evaluate import (
        figures,  # matplotlib: imported where a run draws, not by every dask worker importing kd.teach
    )

    if summary.metrics:
        run.log_figure(figures.teacher_quality_figure(summary.metrics, data.task.primary_metric),
                       "figures/teacher_quality.png")
    if any(t.get("bytes_per_logit") for t in summary.store_info.get("teachers", {}).values()):
        run.log_figure(figures.store_bytes_figure(summary.store_info), "figures/store_bytes.png")


def _check_dashboard(cfg: TeachConfig) -> None:
    if cfg.dashboard and importlib.util.find_spec("bokeh") is None:
        raise KdError("--dashboard needs bokeh: pip install 'bokeh>=3.1'")


def local_cluster(cfg: TeachConfig, *, preload: Sequence[str] = ()) -> tuple[SpecCluster, str]:
    """The local cluster of ``kd teach`` (see :func:`plan_workers`) and the device string its workers use.

    Everything listens on 127.0.0.1; the dashboard (``cfg.dashboard``) on port 8787 if free. ``preload``:
    modules every worker imports first (the benchmark's simulated accelerator registers itself this way).
    """
    _check_dashboard(cfg)
    cores = os.cpu_count() or 1
    plans = plan_workers(cfg.device, cfg.workers, visible_gpus() if cfg.device != "cpu" else [], cores)
    scheduler = {"cls": Scheduler, "options": {
        "host": "127.0.0.1", "port": 0, "dashboard": cfg.dashboard,
        "dashboard_address": "127.0.0.1:8787" if cfg.dashboard else "127.0.0.1:0"}}
    workers = {p.name: {"cls": Nanny, "options": {
        "host": "127.0.0.1", "nthreads": CHUNKS_PER_WORKER, "env": p.env, "resources": p.resources,
        "memory_limit": MEMORY_LIMIT // len(plans), "silence_logs": logging.ERROR, "preload": list(preload)}}
        for p in plans}
    cluster = SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR, name="kd-teach")
    return cluster, plans[0].device


def _run_on_dask(cfg: TeachConfig, job: _Job, chunks: list[int], on_progress, on_status,
                 total_clips: int) -> list[ChunkResult]:
    if not chunks:
        return []
    cluster = None
    if cfg.scheduler:
        client = Client(cfg.scheduler)
    else:
        cluster, device = local_cluster(cfg)
        job = replace(job, device=device)
        client = Client(cluster)
    try:
        if cfg.dashboard and on_status:
            on_status(f"dask dashboard: {client.dashboard_link}")
        resources = chunk_resources(client.scheduler_info())
        futures = [client.submit(teach_chunk, cfg, job, c, key=f"teach-chunk-{c}", pure=False, resources=resources)
                   for c in chunks]
        results, done_clips = [], total_clips - sum(_chunk_len(cfg, c, total_clips) for c in chunks)
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            done_clips += result.clips
            if on_progress:
                on_progress(done_clips, total_clips)
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def chunk_resources(scheduler_info: dict[str, Any]) -> dict[str, float] | None:
    """What each chunk task asks the scheduler for: ``1 / CHUNKS_PER_WORKER`` of a GPU when any worker declares
    ``GPU`` resources (so chunks go to GPU workers only, two at a time), else nothing."""
    declared = [w.get("resources") or {} for w in scheduler_info.get("workers", {}).values()]
    return {"GPU": 1 / CHUNKS_PER_WORKER} if any("GPU" in r for r in declared) else None


def _chunk_len(cfg: TeachConfig, chunk: int, total: int) -> int:
    return min(cfg.chunk_size, total - chunk * cfg.chunk_size)


# --- quality of the teachers on the dataset's labels ----------------------------------------------------------------
def score_teachers(store: LogitStore, data: Dataset, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each teacher's and the ensemble's metrics on the labels of the taught split, as the task scores a student.

    A view whose metric the labels leave undefined (e.g. no positive example) is left out; the others are kept.
    """
    failed = set().union(*(store.failures(n) for n in names))
    clips = [c for c in data.labelled_clips if c.id not in failed]
    if not clips or not data.has_labels:
        return {}
    task = data.task
    ids = [c.id for c in clips]
    views = {n: [n] for n in names}
    if len(names) > 1:
        views["ensemble"] = list(names)
    out: dict[str, dict[str, float]] = {}
    for view, members in views.items():
        rates = {store.teacher_info(m).get("frames_per_second") for m in members}
        if task.frame_level and (len(rates) != 1 or None in rates):
            continue  # frame logits at different rates (or none) make no frame-wise view
        logits = store.read(ids, teachers=members, level=task.level, activation=task.activation, views=0)  # clean
        try:
            out[view] = task.metrics(data, clips, logits, next(iter(rates)))
        except UndefinedMetric:
            continue
    return out


def _run_params(cfg: TeachConfig, store, lengths: ClipLengths,
                variable: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teach run's parameters (what decides the stored logits: teachers first) and tags (how the job ran)."""
    params = {
        "teachers": ",".join(t.key for t in cfg.teachers),
        **{f"teacher.{t.key}.model": t.name for t in cfg.teachers},
        **{f"teacher.{t.key}.checkpoint_sha256": store.teacher_info(t.key).get("checkpoint_sha256") for t in cfg.teachers},
        "dataset": cfg.dataset, "split": cfg.split, "codec": cfg.codec, "precision": cfg.precision,
        "clip_seconds": lengths.seconds, "clip_seconds_chosen_by": lengths.chosen_by, "variable_length": variable,
        "views": cfg.views, "augment": ",".join(cfg.augment) or "none", "transfer": ",".join(cfg.transfer) or "none",
    }
    tags = {"store": cfg.store, "workers": cfg.workers, "decode_workers": cfg.decode_workers,
            "batch_size": cfg.batch_size, "device": cfg.device}
    return params, tags


def _run_metrics(summary: TeachSummary) -> dict[str, float]:
    flat = {f"{view}.{k}": v for view, m in summary.metrics.items() for k, v in m.items()}
    flat.update({"clips": summary.clips, "failed_clips": len(summary.failures),
                 "failed_fraction": summary.failed_fraction, "wall_seconds": summary.wall_seconds})
    flat.update({f"failed_{kind.replace(' ', '_')}": n for kind, n in summary.failure_kinds.items()})
    bpl = summary.store_info.get("bytes_per_logit")
    if bpl is not None and math.isfinite(bpl):
        flat["bytes_per_logit"] = bpl
    return flat
