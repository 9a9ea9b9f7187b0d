"""``kd quickstart``: the whole pipeline on built-in demo data, in minutes on a CPU.

demo data -> ``train-teacher`` for each teacher -> ``teach`` them into one store -> ``distill`` one
low-complexity student from each teacher alone, from their ensemble and from labels alone -> the teacher-choice
table of ``kd compare``, all tracked in one MLflow database under ``out``. The students are one ``kd sweep``
over the teacher choices (its runs grouped under one MLflow parent run).

ASC follows the recipe users follow with real checkpoints (CP-JKU's DCASE'23 "good teacher" recipe, whose
ensemble mixes PaSSTs and CP-ResNets): the teachers start from releases that ship with kd (``passt_tiny``,
``ast_tiny`` and ``cp_resnet`` pretrained on a large synthetic scene corpus, see
``scripts/pretrain_demo_teachers.py``), are fine-tuned on the demo's training split, and the students train
long enough for the soft targets to pay. Tagging and SED have no pretrained demo teachers: their teachers train
from scratch on the demo data, and are weaker than the students (see BENCHMARKS.md).

SED needs frame-wise teachers, and AST has no frame-wise head, so the SED quick start trains two frame-wise
PaSSTs of different seeds and augmentation as teachers A and B.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kd.core.checkpoints import TeacherSpec
from kd.demo.data import make_demo_data
from kd.sweep.grid import PointResult, SweepCallbacks, SweepConfig, sweep
from kd.teach.config import TeachConfig, TeachSummary
from kd.teach.run import run_teach
from kd.track.compare import CompareTable, plot_comparison
from kd.track.tracking import resolve_tracking_uri
from kd.train.job import TrainingResult
from kd.train.teacher import TrainTeacherConfig, train_teacher
from kd_errors import KdError
from teachers import release_path

__all__ = ["PLANS", "QuickstartConfig", "QuickstartResult", "TaskPlan", "quickstart", "train_teachers"]


@dataclass(frozen=True)
class TaskPlan:
    """One task's quick start: teachers, student, clip length, and the schedules that suit them.

    ``pretrained`` teachers are fine-tuned from the release that ships with kd (``teachers.release_path``);
    the others train from scratch. Students evaluate every ``eval_every`` epochs (and after the last): on the
    demo's few hundred clips the precise-BN pass and the evaluation cost as much as an epoch of training. ASC's
    students evaluate once, after their last epoch, so the table is of last-epoch accuracies (no selection on the
    eval split), as ``benchmarks/kd_gain.py`` scores them.
    ``clips`` and ``eval_clips`` size the demo data (None: the demo's defaults). ASC evaluates on 600 clips of
    10 locations a scene: on the default 180 clips of 3, one clip is 0.56 points and a run's accuracy moves by
    about 3 points with the seed, as much as the teachers' differences the table is there to show.
    """

    teachers: tuple[tuple[str, str], ...]  # (store alias, registered name)
    student: str
    clip_seconds: float
    teacher_lr: float
    student_lr: float
    teacher_epochs: int
    student_epochs: int
    pretrained: bool = False
    eval_every: int = 1
    clips: int | None = None
    eval_clips: int | None = None


PLANS = {
    "asc": TaskPlan((("passt", "passt_tiny"), ("ast", "ast_tiny"), ("cpr", "cp_resnet")), "cp_mobile", 1.0,
                    3e-4, 4e-3, teacher_epochs=4, student_epochs=24, pretrained=True, eval_every=24, clips=1020,
                    eval_clips=600),
    "tagging": TaskPlan((("passt", "passt_tiny"), ("ast", "ast_tiny")), "mn04", 3.0, 1e-3, 2e-3, 8, 10),
    "sed": TaskPlan((("passt_a", "passt_tiny_frame"), ("passt_b", "passt_tiny_frame")), "fmn04_gru", 4.0, 1e-3,
                    2e-3, 8, 10),
}


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = "kd-quickstart"
    task: str = "asc"
    clips: int | None = None
    teacher_epochs: int | None = None  # default: the task's (asc: fine-tuning the pretrained teachers)
    student_epochs: int | None = None  # default: the task's (asc: long enough for distillation to pay)
    batch_size: int = 32
    seed: int = 0
    tracking_uri: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.task not in PLANS:
            raise KdError(f"unknown task {self.task!r}; use asc, tagging or sed")


@dataclass(frozen=True)
class QuickstartResult:
    """The store, the teach summary and the distillation runs (by label: "from passt", "from the ensemble", "no
    teacher") of a quick start."""

    out: str
    dataset: str
    store: str
    student: str
    teach: TeachSummary
    runs: dict[str, PointResult]
    tracking_uri: str
    compare: CompareTable  # the teacher-choice table of the runs (kd compare)
    figure: str  # the table as a figure (OUT/teacher_choice.png; MLflow's compare run holds it too)

    @property
    def mlflow_ui(self) -> str:
        """The command that shows the runs."""
        return f"mlflow ui --backend-store-uri {self.tracking_uri} --host 127.0.0.1 --port 5000"


def train_teachers(
    plan: TaskPlan, dataset: str, out: Path, *, epochs: int, batch_size: int = 32, seed: int = 0,
    tracking_uri: str | None = None, train_split: str = "train", eval_split: str = "eval", resume: bool = False,
    on_step: Callable[[str], None] | None = None, on_epoch: Callable[[int, dict], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, tuple[TeacherSpec, TrainingResult]]:
    """The plan's teachers fine-tuned from their releases (or trained from scratch) on ``dataset``, each in
    ``out/ALIAS``: by alias, the spec ``kd teach`` takes and the training result.

    Teacher ``i`` trains with seed ``seed + i`` and every second one with Freq-MixStyle, so that two members of
    one family still differ. Each evaluates once, after its last epoch.
    """
    trained = {}
    for i, (alias, name) in enumerate(plan.teachers):
        release = str(release_path(name)) if plan.pretrained else None
        if on_step:
            on_step(f"fine-tuning the pretrained teacher {alias} ({name}, {Path(release).name})" if release
                    else f"training teacher {alias} ({name}) from scratch")
        result = train_teacher(TrainTeacherConfig(
            dataset=dataset, teacher=name, checkpoint=release, out=str(out / alias), epochs=epochs,
            eval_every=epochs, batch_size=batch_size, lr=plan.teacher_lr, seconds=plan.clip_seconds, seed=seed + i,
            mixstyle_p=0.4 * (i % 2), train_split=train_split, eval_split=eval_split, tracking_uri=tracking_uri,
            device="auto", resume=resume,
        ), on_epoch=on_epoch, on_batch=on_batch)
        trained[alias] = (TeacherSpec(name, result.checkpoint, alias), result)
    return trained


def quickstart(cfg: QuickstartConfig, on_step: Callable[[str], None] | None = None,
               on_epoch: Callable[[int, dict], None] | None = None,
               on_batch: Callable[[int, int], None] | None = None) -> QuickstartResult:
    """Run the pipeline; returns the distillation results, the store and the ``mlflow ui`` command."""
    plan = PLANS[cfg.task]
    teacher_epochs = cfg.teacher_epochs or plan.teacher_epochs
    student_epochs = cfg.student_epochs or plan.student_epochs
    out = Path(cfg.out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise KdError(f"{out} is not empty; choose another --out or pass --overwrite")
    tracking = resolve_tracking_uri(cfg.tracking_uri, folder=out)
    step = on_step or (lambda message: None)

    step(f"writing demo data ({cfg.task})")
    sizes = {"clips": plan.clips, "eval_clips": plan.eval_clips} if cfg.clips is None else {"clips": cfg.clips}
    demo = make_demo_data(out / f"demo-{cfg.task}", cfg.task, seed=cfg.seed, overwrite=cfg.overwrite, **sizes)
    spec = demo["spec"]

    trained = train_teachers(plan, spec, out / "teachers", epochs=teacher_epochs, batch_size=cfg.batch_size,
                             seed=cfg.seed, tracking_uri=tracking, on_step=step, on_epoch=on_epoch, on_batch=on_batch)
    teachers = tuple(spec_ for spec_, _ in trained.values())

    step(f"teaching the {len(teachers)} teachers into one store")
    store = str(out / "store.zarr")
    teach = run_teach(TeachConfig(dataset=spec, store=store, teachers=teachers, tracking_uri=tracking,
                                  chunk_size=128, batch_size=32))

    aliases = [alias for alias, _ in plan.teachers]
    labels = {**{a: f"from {a}" for a in aliases}, "+".join(aliases): "from the ensemble", "none": "no teacher"}
    students = sweep(SweepConfig(
        dataset=spec, out=str(out / "students"), students=(plan.student,), teachers=tuple(labels), store=store,
        first_seed=cfg.seed, tracking_uri=tracking,
        options={"epochs": student_epochs, "eval_every": plan.eval_every, "batch_size": cfg.batch_size,
                 "lr": plan.student_lr},
    ), SweepCallbacks(on_start=lambda point: step(f"distilling {plan.student} {labels[point.teachers]}"),
                      on_epoch=on_epoch, on_batch=on_batch))
    runs = {labels[p.teachers]: students.results[p.name] for p in students.points}
    figure = plot_comparison(students.table, out / "teacher_choice.png")
    return QuickstartResult(str(out), spec, store, plan.student, teach, runs, tracking, students.table, str(figure))
