"""``kd teach``: run teachers once over a dataset and write their logits into a logit store, on dask.

Work is sharded on the store's chunk boundaries: one dask task per chunk decodes each clip of the chunk
once (at the highest sample rate any teacher needs), runs every teacher that has not finished that chunk
(``TeacherEnsemble`` resamples once per distinct rate), writes the chunk and marks it done. Because a chunk
is the unit of both work and storage, writers never share a chunk and need no lock, a killed job loses at
most the chunks in flight, and a rerun of the same command skips finished chunks.

Clips that cannot be decoded are recorded (id and reason) in the store and never become rows of zeros.
"""
from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from dask.distributed import Client, LocalCluster, as_completed

from kd.checkpoints import TeacherSpec, build_teacher
from kd.data import AudioError, Dataset, open_dataset
from kd.metrics import UndefinedMetric
from kd.tracking import tracked_run
from kd.train import select_device
from kd_errors import KdError
from layers import sha256_file
from logit_store import LogitStore, StoreNotFound
from teachers import TeacherEnsemble

__all__ = ["ChunkResult", "TeachConfig", "TeachSummary", "run_teach", "teach_chunk"]


@dataclass(frozen=True)
class TeachConfig:
    dataset: str
    store: str
    teachers: tuple[TeacherSpec, ...]
    split: str | None = None
    codec: str = "q8"
    batch_size: int = 8
    device: str = "auto"
    seconds: float | None = None
    chunk_size: int = 256
    workers: int = 1
    scheduler: str | None = None
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if not self.teachers:
            raise KdError("name at least one --teacher")
        keys = [t.key for t in self.teachers]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise KdError(f"teacher names must be unique in a store; repeated: {', '.join(repeated)} (use ALIAS:NAME)")
        if self.batch_size < 1 or self.chunk_size < 1 or self.workers < 1:
            raise KdError("batch size, chunk size and workers must be >= 1")
        if self.scheduler and self.workers > 1:
            raise KdError("--workers starts a local cluster; with --scheduler the cluster's own workers run the job")


@dataclass
class ChunkResult:
    chunk: int
    clips: int
    written: dict[str, int]
    failures: dict[str, str]
    seconds: float


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
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str | None = None


# --- the per-process context of a worker --------------------------------------------------------------------------
class _Context:
    """What a worker process builds once per job: the dataset, the store handle and the teachers."""

    def __init__(self, cfg: TeachConfig) -> None:
        self.data = open_dataset(cfg.dataset, split=cfg.split)
        self.store = LogitStore.open(cfg.store, mode="r+")
        self.device = select_device(cfg.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the client already warned about random weights
            members = [(s.key, build_teacher(s, len(self.data.classes))) for s in cfg.teachers]
        self.ensemble = TeacherEnsemble(members).to(self.device).eval()
        self.sample_rate = max(t.sample_rate for _, t in members)
        self.seconds = teach_seconds(cfg, self.data)
        self.clip_by_id = {c.id: c for c in self.data.clips}


_CONTEXTS: dict[TeachConfig, _Context] = {}


def _context(cfg: TeachConfig) -> _Context:
    if cfg not in _CONTEXTS:
        _CONTEXTS.clear()
        _CONTEXTS[cfg] = _Context(cfg)
    return _CONTEXTS[cfg]


def teach_seconds(cfg: TeachConfig, data: Any) -> float:
    """Audio length fed to the teachers: ``--seconds``, else the dataset's clip length.

    Not the teachers' context: a 1 s TAU22 clip padded to PaSST's 10 s would be 90 % silence, which the
    teacher never saw in training. Shorter clips give fewer time tokens (as in the DCASE'23 fine-tuning on 1 s);
    clips longer than a teacher's context are windowed by the teacher itself.
    """
    return cfg.seconds if cfg.seconds else data.clip_seconds()


def teach_chunk(cfg: TeachConfig, chunk: int) -> ChunkResult:
    """Decode the clips of store chunk ``chunk`` once, run the teachers that have not finished it, write it."""
    start = time.perf_counter()
    ctx = _context(cfg)
    store = ctx.store
    pending = [name for name in ctx.ensemble.members if not store.done_chunks(name)[chunk]]
    ids = store.chunk_ids(chunk)
    if not pending:
        return ChunkResult(chunk, len(ids), {}, {}, time.perf_counter() - start)
    audio, failures = [], {}
    for clip_id in ids:
        try:
            audio.append(ctx.data.load_audio(ctx.clip_by_id[clip_id], ctx.sample_rate, ctx.seconds))
        except AudioError as e:
            failures[clip_id] = str(e)
            audio.append(None)
    valid = np.array([a is not None for a in audio])
    outputs = _run_teachers(ctx, [a for a in audio if a is not None], cfg.batch_size, pending)
    written = {}
    for name in pending:
        clip_logits, frame_logits = _scatter(outputs[name], valid, store.teacher_info(name))
        store.write_chunk(name, chunk, clip_logits, frame_logits, valid=valid, failures=failures)
        written[name] = int(valid.sum())
    return ChunkResult(chunk, len(ids), written, failures, time.perf_counter() - start)


def _run_teachers(ctx: _Context, audio: list[np.ndarray], batch_size: int, names: Sequence[str]):
    """Clip (and frame) logits of the teachers ``names`` for the decoded clips, batch by batch."""
    ensemble = TeacherEnsemble([(n, ctx.ensemble.members[n]) for n in names])
    results: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {n: ([], []) for n in names}
    for i in range(0, len(audio), batch_size):
        wave = torch.from_numpy(np.stack(audio[i : i + batch_size])).to(ctx.device)
        with torch.inference_mode():
            outputs = ensemble(wave, ctx.sample_rate)
        for name, out in outputs.items():
            results[name][0].append(out.clip.float().cpu().numpy())
            if out.frame is not None:
                results[name][1].append(out.frame.float().cpu().numpy())
    return results


def _scatter(outputs, valid: np.ndarray, info: dict[str, Any]):
    """Place the logits of the decodable clips into chunk-shaped arrays (invalid rows stay unwritten)."""
    clips, frames = outputs
    num_classes = info["num_classes"]
    clip_logits = np.zeros((len(valid), num_classes), np.float32)
    if clips:
        clip_logits[valid] = np.concatenate(clips)
    frame_logits = None
    if info.get("frames"):
        frame_logits = np.zeros((len(valid), info["frames"], num_classes), np.float32)
        if frames:
            frame_logits[valid] = np.concatenate(frames)
    return clip_logits, frame_logits


# --- the client side ----------------------------------------------------------------------------------------------
def prepare_store(cfg: TeachConfig, on_warning: Callable[[str], None] | None = None):
    """Create or reopen the store and register the teachers; refuse a store built for other data or teachers."""
    if not cfg.scheduler:
        select_device(cfg.device)  # the local workers share this machine's devices: say now if CUDA is missing
    data = open_dataset(cfg.dataset, split=cfg.split)
    if not data.clips:
        raise KdError(f"{cfg.dataset} (split {data.split}) holds no clips")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = {s.key: build_teacher(s, len(data.classes)) for s in cfg.teachers}
    for w in caught:
        if on_warning:
            on_warning(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    fingerprint = data.fingerprint()
    try:
        store = LogitStore.open(cfg.store, mode="r+")
    except StoreNotFound:
        store = LogitStore.create(
            cfg.store, [c.id for c in data.clips], data.classes, mids=data.mids,
            dataset=f"{cfg.dataset}#{data.split}", dataset_fingerprint=fingerprint, chunk_size=cfg.chunk_size,
        )
    store.check_dataset(fingerprint)
    store.check_classes(data.classes)
    seconds = teach_seconds(cfg, data)
    for spec in cfg.teachers:
        model = models[spec.key]
        frames = model.num_output_frames(int(round(seconds * model.sample_rate))) if model.frames_per_second else None
        store.add_teacher(
            spec.key, codec=cfg.codec, frames=frames, frames_per_second=model.frames_per_second,
            attrs={
                "model": spec.name,
                "num_classes": model.num_classes,
                "checkpoint": spec.checkpoint,
                "checkpoint_sha256": sha256_file(spec.checkpoint) if spec.checkpoint else "random-weights",
                "frontend": model.frontend_config(),
                "sample_rate": model.sample_rate,
                "clip_seconds": seconds,
            },
        )
    return data, store, models


def run_teach(
    cfg: TeachConfig,
    on_progress: Callable[[int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> TeachSummary:
    """Teach every pending chunk on a dask cluster, then score the teachers on the dataset's labels."""
    start = time.perf_counter()
    data, store, models = prepare_store(cfg, on_warning)
    names = [s.key for s in cfg.teachers]
    params = _run_params(cfg, store)
    with tracked_run("teach", run_name=f"teach {params['teachers']}", params=params, tags={"store": cfg.store},
                     tracking_uri=cfg.tracking_uri) as run:
        pending = [c for c in range(store.num_chunks) if not all(store.done_chunks(n)[c] for n in names)]
        results = _run_on_dask(cfg, pending, on_progress, total_clips=len(store.clip_ids))
        store = type(store).open(cfg.store, mode="r+")
        failures = {k: v for n in names for k, v in store.failures(n).items()}
        written = {n: sum(r.written.get(n, 0) for r in results) for n in names}
        summary = TeachSummary(
            store=cfg.store, clips=len(store.clip_ids), chunks_run=len(pending),
            chunks_skipped=store.num_chunks - len(pending), written=written, failures=failures,
            wall_seconds=time.perf_counter() - start, store_info=store.info(),
        )
        summary.metrics = score_teachers(store, data, names)
        for name in names:
            if name in summary.metrics:
                store.set_teacher_metrics(name, summary.metrics[name])
        if "ensemble" in summary.metrics:
            store.set_attrs({"ensemble_metrics": summary.metrics["ensemble"]})
        run.log_metrics(_run_metrics(summary))
        summary.run_id = run.run_id
    return summary


def _run_on_dask(cfg: TeachConfig, chunks: list[int], on_progress, total_clips: int) -> list[ChunkResult]:
    if not chunks:
        return []
    cluster = None
    if cfg.scheduler:
        client = Client(cfg.scheduler)
    else:
        threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        # No dashboard; the scheduler's own HTTP endpoints on a free loopback port, not on 8787 of every interface.
        cluster = LocalCluster(
            n_workers=cfg.workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR,
            env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        )
        client = Client(cluster)
    try:
        futures = [client.submit(teach_chunk, cfg, c, key=f"teach-chunk-{c}", pure=False) for c in chunks]
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
        logits = store.read(ids, teachers=members, level=task.level, activation=task.activation)
        try:
            out[view] = task.metrics(data, clips, logits, next(iter(rates)))
        except UndefinedMetric:
            continue
    return out


def _run_params(cfg: TeachConfig, store) -> dict[str, Any]:
    return {
        "dataset": cfg.dataset, "split": cfg.split, "codec": cfg.codec,
        "teachers": ",".join(t.key for t in cfg.teachers),
        **{f"teacher.{t.key}.model": t.name for t in cfg.teachers},
        **{f"teacher.{t.key}.checkpoint_sha256": store.teacher_info(t.key).get("checkpoint_sha256") for t in cfg.teachers},
        "workers": cfg.workers, "batch_size": cfg.batch_size, "device": cfg.device,
    }


def _run_metrics(summary: TeachSummary) -> dict[str, float]:
    flat = {f"{view}.{k}": v for view, m in summary.metrics.items() for k, v in m.items()}
    flat.update({"clips": summary.clips, "failed_clips": len(summary.failures), "wall_seconds": summary.wall_seconds})
    bpl = summary.store_info.get("bytes_per_logit")
    if bpl is not None and math.isfinite(bpl):
        flat["bytes_per_logit"] = bpl
    return flat
