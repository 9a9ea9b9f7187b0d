"""``kd quickstart``: the whole pipeline on built-in demo data, in minutes on a CPU.

demo data -> ``train-teacher`` for a tiny PaSST and a tiny AST -> ``teach`` both into one store ->
``distill`` one low-complexity student four times (from teacher A, from teacher B, from the ensemble, from
labels alone) -> a table comparing the four runs, all tracked in one MLflow database under ``out``.

ASC follows the recipe users follow with real checkpoints (CP-JKU's DCASE'23 "good teacher" recipe): both
teachers start from releases that ship with kd (``passt_tiny`` and ``ast_tiny`` pretrained on a large synthetic
scene corpus, see ``scripts/pretrain_demo_teachers.py``), are fine-tuned on the demo's training split, and the
students train long enough for the soft targets to pay. Tagging and SED have no pretrained demo teachers: their
teachers train from scratch on the demo data, and are weaker than the students (see BENCHMARKS.md).

SED needs frame-wise teachers, and AST has no frame-wise head, so the SED quick start trains two frame-wise
PaSSTs of different seeds and augmentation as teachers A and B.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kd.checkpoints import TeacherSpec
from kd.compare import CompareTable, compare_runs, record_comparison
from kd.data import make_demo_data
from kd.distill import DistillConfig, TeacherChoice, distill
from kd.job import TrainingResult
from kd.teach import TeachConfig, TeachSummary, run_teach
from kd.tracking import resolve_tracking_uri
from kd.train_teacher import TrainTeacherConfig, train_teacher
from kd_errors import KdError
from teachers import release_path

__all__ = ["QuickstartConfig", "QuickstartResult", "quickstart"]


@dataclass(frozen=True)
class TaskPlan:
    """One task's quick start: teachers, student, clip length, and the schedules that suit them.

    ``pretrained`` teachers are fine-tuned from the release that ships with kd (``teachers.release_path``);
    the others train from scratch.
    """

    teacher_a: tuple[str, str]  # (store alias, registered name)
    teacher_b: tuple[str, str]
    student: str
    clip_seconds: float
    teacher_lr: float
    student_lr: float
    teacher_epochs: int
    student_epochs: int
    pretrained: bool = False


PLANS = {
    "asc": TaskPlan(("passt", "passt_tiny"), ("ast", "ast_tiny"), "cp_mobile", 1.0, 3e-4, 4e-3,
                    teacher_epochs=4, student_epochs=24, pretrained=True),
    "tagging": TaskPlan(("passt", "passt_tiny"), ("ast", "ast_tiny"), "mn04", 3.0, 1e-3, 2e-3, 8, 10),
    "sed": TaskPlan(("passt_a", "passt_tiny_frame"), ("passt_b", "passt_tiny_frame"), "fmn04_gru", 4.0, 1e-3, 2e-3,
                    8, 10),
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
    """The store, the teach summary and the distillation runs (by label) of a quick start."""

    out: str
    dataset: str
    store: str
    student: str
    teach: TeachSummary
    runs: dict[str, TrainingResult]
    tracking_uri: str
    compare: CompareTable | None = None  # the teacher-choice table of the runs (kd compare)

    @property
    def mlflow_ui(self) -> str:
        """The command that shows the runs."""
        return f"mlflow ui --backend-store-uri {self.tracking_uri} --host 127.0.0.1 --port 5000"


def quickstart(cfg: QuickstartConfig, on_step: Callable[[str], None] | None = None,
               on_epoch: Callable[[int, dict], None] | None = None,
               on_batch: Callable[[int, int], None] | None = None) -> QuickstartResult:
    """Run the pipeline; returns the four distillation results, the store and the ``mlflow ui`` command."""
    plan = PLANS[cfg.task]
    teacher_epochs = cfg.teacher_epochs or plan.teacher_epochs
    student_epochs = cfg.student_epochs or plan.student_epochs
    out = Path(cfg.out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise KdError(f"{out} is not empty; choose another --out or pass --overwrite")
    tracking = resolve_tracking_uri(cfg.tracking_uri, folder=out)
    step = on_step or (lambda message: None)

    step(f"writing demo data ({cfg.task})")
    demo = make_demo_data(out / f"demo-{cfg.task}", cfg.task, clips=cfg.clips, seed=cfg.seed, overwrite=cfg.overwrite)
    spec = demo["spec"]

    checkpoints = {}
    for i, (alias, name) in enumerate((plan.teacher_a, plan.teacher_b)):
        release = str(release_path(name)) if plan.pretrained else None
        step(f"fine-tuning the pretrained teacher {alias} ({name}, {Path(release).name})" if release
             else f"training teacher {alias} ({name}) from scratch")
        result = train_teacher(TrainTeacherConfig(
            dataset=spec, teacher=name, checkpoint=release, out=str(out / "teachers" / alias),
            epochs=teacher_epochs, batch_size=cfg.batch_size, lr=plan.teacher_lr, seconds=plan.clip_seconds,
            seed=cfg.seed + i, mixstyle_p=0.4 * i, tracking_uri=tracking, device="auto",
        ), on_epoch=on_epoch, on_batch=on_batch)
        checkpoints[alias] = (name, result.checkpoint)

    step("teaching both teachers into one store")
    store = str(out / "store.zarr")
    teachers = tuple(TeacherSpec(name, ckpt, alias) for alias, (name, ckpt) in checkpoints.items())
    teach = run_teach(TeachConfig(dataset=spec, store=store, teachers=teachers, tracking_uri=tracking,
                                  chunk_size=128, batch_size=32))

    a, b = plan.teacher_a[0], plan.teacher_b[0]
    runs = {f"from {a}": a, f"from {b}": b, "from the ensemble": f"{a},{b}", "no teacher": "none"}
    results = {}
    for label, choice in runs.items():
        step(f"distilling {plan.student} {label}")
        results[label] = distill(DistillConfig(
            dataset=spec, student=plan.student, out=str(out / "students" / label.replace(" ", "_")),
            store=store if choice != "none" else None, teachers=TeacherChoice.parse(choice),
            epochs=student_epochs, batch_size=cfg.batch_size, lr=plan.student_lr, seed=cfg.seed,
            tracking_uri=tracking, device="auto",
        ), on_epoch=on_epoch, on_batch=on_batch)
    table = compare_runs(run_ids=[r.run_id for r in results.values()], tracking_uri=tracking)
    record_comparison(table, tracking)
    return QuickstartResult(str(out), spec, store, plan.student, teach, results, tracking, table)
