"""Does distillation help? ``cp_mobile`` distilled from pretrained, fine-tuned teachers vs labels alone.

The recipe users follow with real checkpoints (CP-JKU's DCASE'23 "good teacher" recipe), on the quick start's
data and schedule (``kd.quickstart.PLANS["asc"]``): the pretrained demo teachers that ship with kd
(``passt_tiny`` and ``ast_tiny``, pretrained on a large synthetic scene corpus of other locations and devices,
``scripts/pretrain_demo_teachers.py``) are fine-tuned on the demo ASC training split with ``kd train-teacher``
and taught into one store with ``kd teach``. Then, for each seed, ``cp_mobile`` trains four times with the same
budget: from the ensemble, from each teacher alone, and from labels alone (``--teachers none``). Scores are
last-epoch eval accuracies (no selection on the eval split).

The last line is one JSON object: ``kd_accuracy`` and ``baseline_accuracy`` (ensemble-distilled and label-only,
means over seeds), ``gain`` (their difference) and ``gain_sigma`` (the standard deviation of the per-seed gains),
the same per single teacher (``gain_passt``, ``gain_ast``, ...), the per-seed scores and the teachers' accuracy.

    python benchmarks/kd_gain.py [--quick] [--seeds 0 1 2] [--student-epochs N] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kd.checkpoints import TeacherSpec  # noqa: E402
from kd.data import make_demo_data  # noqa: E402
from kd.distill import DistillConfig, TeacherChoice, distill  # noqa: E402
from kd.quickstart import PLANS  # noqa: E402
from kd.teach import TeachConfig, run_teach  # noqa: E402
from kd.train_teacher import TrainTeacherConfig, train_teacher  # noqa: E402
from teachers import release_path  # noqa: E402

PLAN = PLANS["asc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and budget, two seeds (< 1 minute)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student-epochs", type=int, default=None, help=f"(default: the quick start's, {PLAN.student_epochs})")
    parser.add_argument("--teacher-epochs", type=int, default=None, help=f"fine-tuning (default {PLAN.teacher_epochs})")
    parser.add_argument("--workdir", default=None,
                        help="keep everything here (default: a temp folder); a rerun reuses its data, teachers and store")
    args = parser.parse_args()
    if args.quick:
        sizes = {"clips": 40, "teacher_epochs": 1, "student_epochs": 1}
        seeds = args.seeds[:2]
    else:
        sizes = {"clips": 600, "teacher_epochs": PLAN.teacher_epochs, "student_epochs": PLAN.student_epochs}
        seeds = args.seeds
    sizes["teacher_epochs"] = args.teacher_epochs or sizes["teacher_epochs"]
    sizes["student_epochs"] = args.student_epochs or sizes["student_epochs"]
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.workdir or tmp), seeds=seeds, **sizes)
    print(json.dumps(result))


def run(work: Path, clips: int, teacher_epochs: int, student_epochs: int, seeds: list[int]) -> dict:
    start = time.perf_counter()
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    folder = work / "demo-asc"
    if not (folder / "meta.csv").is_file():
        make_demo_data(folder, "asc", clips=clips, seed=0)
    data = f"tau22:{folder}"

    aliases = {plan[0]: plan[1] for plan in (PLAN.teacher_a, PLAN.teacher_b)}
    teachers, teacher_accuracy = [], {}
    for i, (alias, name) in enumerate(aliases.items()):
        result = train_teacher(TrainTeacherConfig(  # as kd quickstart fine-tunes them; a rerun reuses them
            dataset=data, teacher=name, checkpoint=str(release_path(name)), out=str(work / "teachers" / alias),
            epochs=teacher_epochs, batch_size=32, lr=PLAN.teacher_lr, seconds=PLAN.clip_seconds, seed=i,
            mixstyle_p=0.4 * i, tracking_uri=tracking, device="auto", resume=True))
        teacher_accuracy[alias] = result.history[-1]["accuracy"]
        print(f"teacher {alias}: accuracy {teacher_accuracy[alias]:.3f} on the eval split after fine-tuning",
              flush=True)
        teachers.append(TeacherSpec(name, result.checkpoint, alias))
    store = str(work / "store.zarr")
    teach = run_teach(TeachConfig(dataset=data, store=store, teachers=tuple(teachers), tracking_uri=tracking,
                                  chunk_size=128, batch_size=32))

    runs = {"ensemble": ",".join(aliases), **{alias: alias for alias in aliases}, "baseline": "none"}
    scores: dict[str, list[float]] = {label: [] for label in runs}
    for seed in seeds:
        for label, choice in runs.items():
            history = distill(DistillConfig(
                dataset=data, student=PLAN.student, out=str(work / f"student_{label}_{seed}_{student_epochs}ep"),
                store=store if choice != "none" else None, teachers=TeacherChoice.parse(choice),
                epochs=student_epochs, batch_size=32, lr=PLAN.student_lr, seed=seed, tracking_uri=tracking,
                device="auto", resume=True)).history
            scores[label].append(history[-1]["accuracy"])
            print(f"seed {seed} {label}: accuracy {scores[label][-1]:.3f}", flush=True)

    def gain(label: str) -> tuple[float, float]:
        per_seed = [a - b for a, b in zip(scores[label], scores["baseline"])]
        return statistics.mean(per_seed), (statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0)

    out = {"kd_accuracy": statistics.mean(scores["ensemble"]),
           "baseline_accuracy": statistics.mean(scores["baseline"])}
    out["gain"], out["gain_sigma"] = gain("ensemble")
    for alias in aliases:
        out[f"kd_accuracy_{alias}"] = statistics.mean(scores[alias])
        out[f"gain_{alias}"], out[f"gain_sigma_{alias}"] = gain(alias)
    return {
        **out, "seeds": seeds, "per_seed": scores, "teacher_accuracy": teacher_accuracy,
        "ensemble_accuracy_on_train": teach.metrics["ensemble"]["accuracy"],
        "clips": clips, "teacher_epochs": teacher_epochs, "student_epochs": student_epochs,
        "wall_seconds": time.perf_counter() - start,
    }


if __name__ == "__main__":
    main()
