"""``kd teach``: run teachers once over a dataset and write their logits into a logit store, on dask.

Work is sharded on the store's chunk boundaries: one dask task per chunk decodes each clip of the chunk
once (at the highest sample rate any teacher needs), runs every teacher that has not finished that chunk
(resampled once per distinct rate), writes the chunk and marks it done. Because a chunk is the unit of both work
and storage, writers never share a chunk and need no lock, a killed job loses at most the chunks in flight, and
a rerun of the same command skips finished chunks.

A local cluster on a machine with GPUs starts one worker per visible GPU, each pinned to its GPU through
``CUDA_VISIBLE_DEVICES`` and declaring the dask resource ``GPU=1`` (see :func:`kd.teach.placement.plan_workers`); on a
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

The stages of a run live in this package: :mod:`kd.teach.config` (settings and reports),
:mod:`kd.teach.placement` (workers and precision), :mod:`kd.teach.pipeline` (one chunk in a worker, and its
failures) and this module (the run: store, cluster, summary).
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from dask.distributed import Client, as_completed

from kd.core.checkpoints import build_teacher
from kd.core.devices import select_device
from kd.core.failures import FAILURE_KINDS, describe_failures, failure_kind
from kd.core.views import SEED_PARAMS as VIEW_PARAMS
from kd.core.views import ImpulseResponses, ViewConfig
from kd.data import ClipLengths, Dataset, open_dataset
from kd.data.base import LENGTH_TOLERANCE
from kd.tasks import Task
from kd.tasks.metrics import UndefinedMetric
from kd.teach.config import (
    MAX_FAILED_FRACTION,
    ChunkResult,
    TeachConfig,
    TeachSummary,
    TooManyFailedClips,
    WorkerJob,
    taught_datasets,
)
from kd.teach.pipeline import pad_samples, shortest_inputs, teach_chunk, teach_lengths
from kd.teach.placement import check_dashboard, chunk_resources, local_cluster
from kd.track.tracking import DatasetInput, RunLogger, tracked_run
from kd_errors import KdError
from layers import sha256_file
from logit_store import LogitStore, StoreNotFound
from teachers import Teacher

__all__ = ["check_failed_share", "prepare_store", "run_teach", "score_teachers", "store_identity", "view_config"]


# --- the client side ----------------------------------------------------------------------------------------------
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


def clip_codec(cfg: TeachConfig, task: Task) -> str | dict[str, Any]:
    """The store codec of the teachers' clip logits: ``--codec``, and for ``topk`` the way of reading back the
    classes it drops that suits the task's targets (BENCHMARKS.md, store_bench: for sigmoid targets the class
    profile with the mean probability kept, for softmax targets an even floor with the softmax mass kept)."""
    if cfg.codec != "topk":
        return cfg.codec
    return {"name": "topk", "k": cfg.topk, "rest": task.activation, "profile": task.activation == "sigmoid"}


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
            spec.key, codec=clip_codec(cfg, data.task), frames=frames, frames_per_second=model.frames_per_second,
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
    check_dashboard(cfg)  # before anything is created
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
        job = WorkerJob(seconds=lengths.seconds, min_seconds=lengths.min_seconds, variable=variable,
                   pad_samples=pad_samples(models), device=cfg.device, precision=cfg.precision,
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


def _run_on_dask(cfg: TeachConfig, job: WorkerJob, chunks: list[int], on_progress, on_status,
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
