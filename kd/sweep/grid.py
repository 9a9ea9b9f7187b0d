"""The points of a sweep, how each runs, and the sweep itself.

A point is one ``kd distill``: a student, a teacher choice (``passt``, ``passt+ast``, ``none``), a seed and the
swept settings (``--set kd_lambda=0.02,0.1``), with every other option shared. Each point trains in its own
folder below ``out`` (named by its choices) and, once finished, writes ``point.json`` there (its MLflow run id,
score and wall time): a rerun of the sweep skips the points that have one, so a sweep killed midway finishes
only the missing ones (an interrupted point restarts, or continues from its ``last.pt`` with ``resume``).

Points run one after the other by default; ``parallel=N`` starts a local dask cluster of N single-threaded
workers, and ``scheduler`` uses an existing one. Each worker runs one point at a time: every point asks for one
``GPU`` resource, which the local workers declare (one each, pinned to their GPU where there are GPUs, a token
where there are none) as ``kd teach``'s GPU workers do. All runs become children of one MLflow run of the sweep in
their experiment, so the UI groups them, and the sweep ends with their ``kd compare`` table (mean ± std over the
seeds of each teacher choice x student).
"""
from __future__ import annotations

import itertools
import json
import os
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kd.teach.placement import plan_workers, visible_gpus, worker_cluster
from kd.track.compare import CompareTable, compare_runs, record_comparison
from kd.track.tracking import init_tracking, resolve_tracking_uri, set_parent_run, tracked_run
from kd.train.distill import DistillConfig, TeacherChoice, distill
from kd.train.job import BatchCallback, EpochCallback
from kd_errors import KdError

__all__ = ["PointResult", "SweepCallbacks", "SweepConfig", "SweepPoint", "SweepResult", "expand", "sweep"]

DONE = "point.json"


@dataclass(frozen=True)
class SweepPoint:
    """One distillation of the grid."""

    student: str
    teachers: str  # a teacher choice as the sweep names it: "passt", "passt+ast" or "none"
    seed: int
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """The point's folder: its choices, readable and unique within the sweep."""
        parts = [self.student, "teachers-" + self.teachers.replace("+", "-"), f"seed{self.seed}"]
        parts += [f"{key}-{value}" for key, value in self.settings]
        return "_".join(parts)


@dataclass(frozen=True)
class SweepConfig:
    """The grid and what its points share.

    Attributes:
        teachers: teacher choices; ``+`` joins an ensemble (``passt+ast``), ``none`` trains on labels alone.
        seeds: how many seeds each cell runs: ``first_seed .. first_seed + seeds - 1``.
        settings: swept ``DistillConfig`` fields and their values, e.g. ``(("kd_lambda", ("0.02", "0.1")),)``.
        options: ``DistillConfig`` fields every point shares (epochs, batch size, learning rate, ...).
        parallel: local worker processes (1: in this process, one point after the other).
        scheduler: a running dask scheduler's address instead of a local cluster.
        resume: continue an interrupted point from its ``last.pt`` (else it starts again).
    """

    dataset: str
    out: str
    students: tuple[str, ...]
    teachers: tuple[str, ...]
    store: str | None = None
    seeds: int = 1
    first_seed: int = 0
    settings: tuple[tuple[str, tuple[str, ...]], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    parallel: int = 1
    scheduler: str | None = None
    device: str = "auto"
    tracking_uri: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if not self.students or not self.teachers:
            raise KdError("a sweep needs at least one --students and one --teachers choice")
        if self.seeds < 1 or self.parallel < 1:
            raise KdError("--seeds and --parallel must be at least 1")
        if self.scheduler and self.parallel > 1:
            raise KdError("--parallel starts a local cluster; with --scheduler the cluster's workers run the points")
        known = {f.name for f in fields(DistillConfig)}
        fixed = {"dataset", "out", "student", "teachers", "store", "seed", "tracking_uri", "device", "resume"}
        for key in [k for k, _ in self.settings] + list(self.options):
            if key not in known or key in fixed:
                raise KdError(f"--set {key}: not an option a sweep can vary (it sweeps kd distill's options other "
                              f"than {', '.join(sorted(fixed))})")
        if any(t != "none" for t in self.teachers) and not self.store:
            raise KdError("teacher choices other than none need --store")


@dataclass(frozen=True)
class PointResult:
    """What a finished point recorded in its ``point.json``: its run, its scores and its cost."""

    point: SweepPoint
    run_id: str | None
    metric: str
    best: float | None  # the best evaluation's primary metric
    final: dict[str, float]  # every score of the model the run hands on (averaged weights, else the last epoch's)
    checkpoint: str
    params: int | None
    macs: int | None
    started: float
    finished: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PointResult:
        record = json.loads(text)
        point = record.pop("point")
        point["settings"] = tuple(tuple(pair) for pair in point["settings"])
        return cls(SweepPoint(**point), **record)


@dataclass(frozen=True)
class SweepResult:
    """The sweep's points, which of them ran now, what each recorded, and the comparison table."""

    points: list[SweepPoint]
    ran: list[SweepPoint]
    results: dict[str, PointResult]  # by point name
    parent_run_id: str | None
    table: CompareTable
    tracking_uri: str

    @property
    def run_ids(self) -> dict[str, str]:
        """The points' MLflow runs, by point name."""
        return {name: r.run_id for name, r in self.results.items() if r.run_id}


def expand(cfg: SweepConfig) -> list[SweepPoint]:
    """Every point of the grid: students x teacher choices x seeds x settings."""
    keys = [k for k, _ in cfg.settings]
    values = [[_typed(k, v) for v in vs] for k, vs in cfg.settings]
    return [SweepPoint(student, teachers, seed, tuple(zip(keys, combo)))
            for student, teachers, seed, combo in itertools.product(
                cfg.students, cfg.teachers, range(cfg.first_seed, cfg.first_seed + cfg.seeds),
                itertools.product(*values))]


def point_config(cfg: SweepConfig, point: SweepPoint, tracking_uri: str) -> DistillConfig:
    """The ``kd distill`` a point stands for."""
    teachers = TeacherChoice.parse(point.teachers.replace("+", ","))
    return DistillConfig(
        dataset=cfg.dataset, out=str(Path(cfg.out) / point.name), student=point.student,
        store=cfg.store if teachers.names else None, teachers=teachers, seed=point.seed, device=cfg.device,
        tracking_uri=tracking_uri, resume=cfg.resume and (Path(cfg.out) / point.name / "last.pt").is_file(),
        **dict(cfg.options), **dict(point.settings))


def finished(cfg: SweepConfig, point: SweepPoint) -> PointResult | None:
    """What a finished point recorded (``point.json``), or None."""
    path = Path(cfg.out) / point.name / DONE
    return PointResult.from_json(path.read_text()) if path.is_file() else None


def run_point(cfg: SweepConfig, point: SweepPoint, tracking_uri: str, on_epoch: EpochCallback | None = None,
              on_batch: BatchCallback | None = None) -> PointResult:
    """Train one point and record that it finished (what a worker runs)."""
    start = time.time()
    result = distill(point_config(cfg, point, tracking_uri), on_epoch=on_epoch, on_batch=on_batch)
    record = PointResult(point, result.run_id, result.metric, result.best, result.final_metrics, result.checkpoint,
                         result.cost.params if result.cost else None, result.cost.macs if result.cost else None,
                         start, time.time())
    path = Path(cfg.out) / point.name / DONE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    os.replace(tmp, path)  # last: the point counts as finished only once its run is complete
    return record


@dataclass(frozen=True)
class SweepCallbacks:
    """What a caller follows: ``on_point(point, result)`` once a point has trained; where points run one after the
    other, also ``on_start(point)`` before each and ``on_epoch``/``on_batch`` as ``kd distill`` calls them (the
    workers of a cluster report nothing back but their results)."""

    on_start: Callable[[SweepPoint], None] | None = None
    on_point: Callable[[SweepPoint, PointResult], None] | None = None
    on_epoch: EpochCallback | None = None
    on_batch: BatchCallback | None = None


def sweep(cfg: SweepConfig, callbacks: SweepCallbacks = SweepCallbacks()) -> SweepResult:
    """Run the points not finished yet, then compare all of them and file their runs under the sweep's parent run."""
    points = expand(cfg)
    todo = [p for p in points if finished(cfg, p) is None]
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    tracking = resolve_tracking_uri(cfg.tracking_uri, folder=Path(cfg.out))
    init_tracking(tracking)  # before parallel points open it
    run = _run_serially if cfg.parallel == 1 and not cfg.scheduler else _run_on_dask
    run(cfg, todo, tracking, callbacks)
    results = {p.name: r for p in points if (r := finished(cfg, p))}
    run_ids = [r.run_id for r in results.values() if r.run_id]
    table = compare_runs(run_ids=run_ids, by=[k for k, _ in cfg.settings], tracking_uri=tracking)
    parent = _parent_run(cfg, table.experiments[0], len(points), tracking)
    for run_id in run_ids:
        set_parent_run(run_id, parent, tracking)
    record_comparison(table, tracking)
    return SweepResult(points, todo, results, parent, table, tracking)


def _parent_run(cfg: SweepConfig, experiment: str, points: int, tracking: str) -> str:
    """The sweep's MLflow run in its points' experiment (the UI nests children within one experiment), made by the
    first invocation and kept in ``out/sweep.json`` for the reruns."""
    path = Path(cfg.out) / "sweep.json"
    if path.is_file():
        return json.loads(path.read_text())["parent_run_id"]
    params = {"dataset": cfg.dataset, "store": cfg.store or "none", "students": ",".join(cfg.students),
              "teachers": ",".join(cfg.teachers), "seeds": cfg.seeds, "points": points,
              **{f"set_{k}": ",".join(v) for k, v in cfg.settings}}
    with tracked_run(experiment, run_name=f"sweep {Path(cfg.out).name}", params=params, tags={"kd_sweep": "parent"},
                     tracking_uri=tracking) as parent:
        run_id = parent.run_id
    path.write_text(json.dumps({"parent_run_id": run_id}))
    return run_id


def _run_serially(cfg: SweepConfig, todo: Sequence[SweepPoint], tracking: str, callbacks: SweepCallbacks) -> None:
    for point in todo:
        if callbacks.on_start:
            callbacks.on_start(point)
        record = run_point(cfg, point, tracking, callbacks.on_epoch, callbacks.on_batch)
        if callbacks.on_point:
            callbacks.on_point(point, record)


def _run_on_dask(cfg: SweepConfig, todo: Sequence[SweepPoint], tracking: str, callbacks: SweepCallbacks) -> None:
    """Each point a task asking for one GPU; local workers declare one each (their GPU, or a token)."""
    from distributed import Client, as_completed

    cluster = None
    if cfg.scheduler:
        client = Client(cfg.scheduler)
    else:
        gpus = visible_gpus() if cfg.device != "cpu" else []
        plans = [replace(p, name=f"sweep-{i}", resources={"GPU": 1.0})
                 for i, p in enumerate(plan_workers(cfg.device, cfg.parallel, gpus, os.cpu_count() or 1))]
        cluster = worker_cluster(plans, nthreads=1, name="kd-sweep")
        client = Client(cluster)
        cfg = replace(cfg, device=plans[0].device)  # a local GPU worker sees only its GPU, as cuda
    try:
        futures = {client.submit(run_point, cfg, point, tracking, key=f"kd-sweep-{point.name}", pure=False,
                                 resources={"GPU": 1.0}): point for point in todo}
        for future in as_completed(futures):
            record = future.result()  # a failed point raises here; the points finished before it are kept
            if callbacks.on_point:
                callbacks.on_point(futures[future], record)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _typed(key: str, text: str) -> Any:
    """A swept value as the type of the ``DistillConfig`` field it sets (its annotation's int or float, if any)."""
    annotation = typing.get_type_hints(DistillConfig)[key]
    kinds = typing.get_args(annotation) or (annotation,)
    for cast in (int, float):
        if cast in kinds:
            try:
                return cast(text)
            except ValueError:
                raise KdError(f"--set {key}={text}: not a{'n' if cast is int else ''} {cast.__name__}") from None
    return text
