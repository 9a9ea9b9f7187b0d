"""One chunk of ``kd teach`` inside a dask worker (:func:`teach_chunk`): decode, device, write.

**Inside a worker** a chunk passes three stages, and a worker holds :data:`~kd.teach.placement.CHUNKS_PER_WORKER` chunks at once,
so that one chunk decodes (or is written) while the other is on the device:

* decode: a pool of ``decode_workers`` threads per worker decodes, resamples and checks the clips (soundfile
  and soxr release the GIL, so the threads decode in parallel); the chunk's batches are handed to the device
  as soon as their clips are ready;
* device: the teachers run batch by batch under the worker's device lock (one chunk on the device at a time),
  with autocast (``precision``: ``auto`` is fp16 on tensor-core GPUs, see :func:`kd.teach.placement.resolve_precision`); each
  batch is staged in pinned memory on CUDA and copied without blocking, and the next batch is launched before
  the previous one's logits are copied back;
* write: q8 encoding and the chunk's objects, outside the device lock.

**Failures** are per clip only where the clip is at fault, recorded (clip id and reason) in the store and never
stored as logits (:mod:`kd.core.failures` sorts them into kinds); everything else ends the job with its traceback:

* decoding: :class:`kd.data.AudioError` (missing, empty, unreadable, silent, non-finite, too short) always;
  any other :data:`~kd.teach.config.DATA_ERRORS` raised while reading, decoding or resampling one clip is recorded as
  ``decode error: Type: message``; all other exception types (TypeError, KeyError, ...) are bugs;
* teachers: an error a teacher raises is never the clip's (it decoded fine and was padded to what every teacher
  takes): it stops the job as :class:`~kd.teach.config.TeacherFailed`, with the teacher's own error and traceback as its cause.
  A clip whose logits are not finite in fp16/bf16 is run again in fp32, and recorded if they still are not;
* a stage that has not worked on a single clip in this worker (every clip failing to decode, a teacher's logits
  never finite) is broken, not fed bad data: its first error propagates.

A job whose failed clips exceed ``max_failed_fraction`` (``--max-failed``) of the store still keeps everything it
wrote, but :func:`kd.teach.run.check_failed_share` then refuses it, so ``kd teach`` exits non-zero.
"""
from __future__ import annotations

import itertools
import math
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from kd.core.checkpoints import build_teacher
from kd.core.devices import select_device
from kd.core.memory import keep_freed_memory
from kd.core.views import ImpulseResponses, apply_view, draw_views, view_seeds
from kd.data import AudioError, ClipLengths, Dataset, open_dataset
from kd.data.base import LENGTH_TOLERANCE
from kd.teach.config import ChunkResult, TeachConfig, TeacherFailed, WorkerJob, is_data_error, taught_datasets
from kd.teach.placement import autocast, resolve_precision
from kd_errors import KdError
from layers.resample import resample
from logit_store import LogitStore
from teachers import Teacher

__all__ = ["length_batches", "pad_samples", "shortest_inputs", "teach_chunk", "teach_lengths"]


# --- the per-process context of a worker --------------------------------------------------------------------------
class _Context:
    """What a worker process builds once per job: the dataset, the store handle, the teachers and the decode pool."""

    def __init__(self, cfg: TeachConfig, job: WorkerJob) -> None:
        keep_freed_memory()  # every batch frees and retakes the same activations (dask's workers trim at 64 KiB)
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
        except Exception as e:  # sorted into data problems and bugs by is_data_error
            if not is_data_error(e):
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


_CONTEXTS: dict[tuple[TeachConfig, WorkerJob], _Context] = {}
_CONTEXT_LOCK = threading.Lock()


def _context(cfg: TeachConfig, job: WorkerJob) -> _Context:
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


def pad_samples(models: dict[str, Teacher]) -> int:
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
                with autocast(ctx.device, precision or ctx.precision):
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


def teach_chunk(cfg: TeachConfig, job: WorkerJob, chunk: int) -> ChunkResult:
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
            params = np.stack([view_seeds(job.views, i) for i in ids])[..., None] if job.views else None
            store.write_chunk(name, chunk, clip, frame, valid=valid, failures=teacher_failures, view_params=params)
            written[name] = int(valid.sum())
            failures.update(state.teacher_failures[name])
    return ChunkResult(chunk, len(ids), written, failures, time.perf_counter() - start, str(ctx.device),
                       ctx.precision, state.decode_seconds, ctx.decode_threads)
