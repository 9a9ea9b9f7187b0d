"""What the distillation benchmarks share: demo data, the shipped teachers fine-tuned on a split, seed statistics.

Not a benchmark itself (the leading underscore keeps it out of the smoke test that runs every script).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kd.core.checkpoints import TeacherSpec
from kd.data import open_dataset
from kd.demo.data import make_demo_data
from kd.demo.quickstart import PLANS, train_teachers
from kd.sweep.grid import SweepCallbacks, SweepConfig, expand, sweep
from kd.train.distill import DistillConfig, distill
from kd.train.job import TrainingResult

PLAN = PLANS["asc"]
TEACHERS = dict(PLAN.teachers)


def demo_asc(work: Path, clips: int, seed: int = 0, name: str = "demo-asc", eval_clips: int | None = None) -> str:
    """The quick start's demo ASC data (written once per work folder, into ``work/name``); its dataset spec."""
    folder = work / name
    if not (folder / "meta.csv").is_file():
        make_demo_data(folder, "asc", clips=clips, seed=seed, eval_clips=eval_clips)
    return f"tau22:{folder}"


def write_manifest(path: Path, rows: Sequence[dict[str, str]]) -> str:
    """A manifest CSV of ``rows`` (``path``, ``id``, ``label``, ``device``, ``split``); its dataset spec."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return f"manifest:{path}"


def manifest_rows(spec: str, split: str, keep: Callable, labelled: bool = True) -> list[dict[str, str]]:
    """Rows for the clips of ``split`` of ``spec`` that ``keep(clip)`` selects, with or without (an empty label)
    their labels."""
    data = open_dataset(spec, split=split)
    rows = []
    for clip in data.clips:
        if keep(clip):
            label = data.classes[clip.labels[0]] if labelled else ""
            rows.append({"path": clip.source, "id": clip.id, "label": label, "device": clip.device or "",
                         "split": split})
    return rows


def finetuned_teachers(work: Path, data: str, epochs: int, tracking: str, train_split: str = "train",
                       eval_split: str = "eval") -> tuple[list[TeacherSpec], dict[str, float]]:
    """The shipped pretrained teachers fine-tuned on ``data`` as ``kd quickstart`` does (a rerun in the same
    work folder reuses them); their specs for ``kd teach`` and their eval accuracy."""
    trained = train_teachers(PLAN, data, work / "teachers", epochs=epochs, tracking_uri=tracking,
                             train_split=train_split, eval_split=eval_split, resume=True)
    accuracy = {alias: result.history[-1]["accuracy"] for alias, (_, result) in trained.items()}
    for alias, score in accuracy.items():
        print(f"teacher {alias}: accuracy {score:.3f} on the eval split after fine-tuning", flush=True)
    return [spec for spec, _ in trained.values()], accuracy


def cnn_teachers(work: Path, data: str, teacher_clips: int, pretrain_epochs: int, finetune_epochs: int,
                 tracking: str, train_split: str = "train", aliases: Sequence[str] = ("cpr_a", "cpr_b"),
                 **augment: Any) -> tuple[list[TeacherSpec], dict[str, float]]:
    """Two CP-ResNets that know more than the student (the CNN half of CP-JKU's DCASE'23 teacher ensemble; a
    student checkpoint serves as a teacher): trained from labels on a larger demo ASC set of other recording
    locations (another generator seed: same scenes and devices), the stand-in for real teachers' pretraining,
    then fine-tuned on ``train_split`` of ``data`` (one teacher per alias). ``augment`` (``DistillConfig`` options such as
    ``dir_folder``) applies to both stages. A rerun in the same work folder reuses them; their specs for
    ``kd teach`` and their eval accuracy (best epoch)."""
    folder = work / "demo-asc-teachers"
    if not (folder / "meta.csv").is_file():
        make_demo_data(folder, "asc", clips=teacher_clips, seed=1)

    def train(dataset: str, out: str, epochs: int, seed: int, **options: Any) -> TrainingResult:
        return distill(DistillConfig(
            dataset=dataset, student="cp_resnet", out=str(work / "teachers" / out), epochs=epochs, batch_size=32,
            seed=seed, tracking_uri=tracking, device="auto", resume=True, log_model=False, **augment, **options))

    specs, accuracy = [], {}
    for seed, alias in enumerate(aliases, start=100):
        pretrained = train(f"tau22:{folder}", f"{alias}_pretrained", pretrain_epochs, seed, lr=PLAN.student_lr)
        out = alias if train_split == "train" else f"{alias}_{train_split}"
        result = train(data, out, finetune_epochs, seed, student_checkpoint=pretrained.checkpoint,
                       lr=PLAN.student_lr / 4, train_split=train_split)
        accuracy[alias] = result.best
        print(f"teacher {alias}: accuracy {accuracy[alias]:.3f} on the eval split after fine-tuning", flush=True)
        specs.append(TeacherSpec("cp_resnet", result.checkpoint, alias))
    return specs, accuracy


def mean_and_sigma(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_gain(runs: Sequence[float], baseline: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds of ``runs - baseline`` (paired by seed)."""
    return mean_and_sigma([a - b for a, b in zip(runs, baseline)])


def seed_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a study over seeds on the quick start's data and schedule."""
    parser.add_argument("--quick", action="store_true", help="small data and budget, one seed (< 1 minute)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per run: FIRST .. FIRST + N - 1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=PLAN.clips, help="demo ASC clips over both splits")
    parser.add_argument("--eval-clips", type=int, default=PLAN.eval_clips, help="of which in the eval split")
    parser.add_argument("--student-epochs", type=int, default=PLAN.student_epochs)
    parser.add_argument("--teacher-epochs", type=int, default=PLAN.teacher_epochs)
    parser.add_argument("--workdir", default=None, help="keep everything here; a rerun reuses data, teachers, stores")


def study_sizes(args: argparse.Namespace) -> tuple[dict[str, int | None], range]:
    """``(sizes, seeds)`` of a study: the full one, or ``--quick``'s 40 clips (the demo's share in the eval split),
    one epoch each and one seed."""
    if args.quick:
        return ({"clips": 40, "eval_clips": None, "teacher_epochs": 1, "student_epochs": 1},
                range(args.first_seed, args.first_seed + 1))
    return ({"clips": args.clips, "eval_clips": args.eval_clips, "teacher_epochs": args.teacher_epochs,
             "student_epochs": args.student_epochs}, range(args.first_seed, args.first_seed + args.seeds))


def train_students(work: Path, dataset: str, runs: dict[str, dict], seeds: range, epochs: int, tracking: str,
                   metrics: Sequence[str] = ("accuracy", "acc_unseen")) -> dict[str, dict[str, list[float]]]:
    """The quick start's student trained for each entry of ``runs`` (label -> ``DistillConfig`` options, ``teachers``
    spelled as ``kd distill --teachers`` takes it) and each seed on the quick start's schedule, one ``kd sweep`` over
    the seeds per label; the ``metrics`` of the model each run hands on (the averaged weights' with
    ``average_last``, else the last epoch's) per label, in seed order. A rerun in the same work folder skips the
    finished runs and resumes an interrupted one."""
    scores: dict[str, dict[str, list[float]]] = {}
    for label, options in runs.items():
        cfg = student_sweep(work, dataset, label, options, seeds, epochs, tracking)
        result = sweep(cfg, SweepCallbacks(on_point=lambda point, record, label=label: print(
            f"seed {point.seed} {label}: " + ", ".join(f"{m} {record.final[m]:.3f}" for m in metrics), flush=True)))
        finals = [result.results[point.name].final for point in result.points]
        scores[label] = {metric: [final[metric] for final in finals] for metric in metrics}
    return scores


def student_sweep(work: Path, dataset: str, label: str, options: dict, seeds: range, epochs: int,
                  tracking: str) -> SweepConfig:
    """The sweep over ``seeds`` that :func:`train_students` runs for ``label``."""
    options = dict(options)
    teachers, store = options.pop("teachers").replace(",", "+"), options.pop("store", None)
    return SweepConfig(
        dataset=dataset, out=str(work / f"students-{epochs}ep" / label), students=(PLAN.student,),
        teachers=(teachers,), store=store, seeds=len(seeds), first_seed=seeds.start, tracking_uri=tracking,
        resume=True, options={"epochs": epochs, "eval_every": PLAN.eval_every, "batch_size": 32,
                              "lr": PLAN.student_lr, "log_model": False, **options})


def student_folder(work: Path, dataset: str, label: str, options: dict, seed: int, epochs: int,
                   tracking: str) -> Path:
    """Where :func:`train_students` trains ``label``'s student of ``seed``."""
    cfg = student_sweep(work, dataset, label, options, range(seed, seed + 1), epochs, tracking)
    (point,) = expand(cfg)
    return Path(cfg.out) / point.name


def run_study(doc: str, run: Callable[..., dict],
              extra_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
              options: Callable[[argparse.Namespace], dict] | None = None) -> None:
    """A seed study's command line: parse the shared options (and ``extra_arguments``), call
    ``run(work, seeds=..., clips=..., eval_clips=..., teacher_epochs=..., student_epochs=..., **options(args))``
    and print its result as the last line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    seed_study_arguments(parser)
    if extra_arguments:
        extra_arguments(parser)
    args = parser.parse_args()
    sizes, seeds = study_sizes(args)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.workdir or tmp), seeds=seeds, **sizes, **(options(args) if options else {}))
    print(json.dumps(result))
