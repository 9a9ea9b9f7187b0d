"""Does distillation help? ``cp_mobile`` distilled from pretrained, fine-tuned teachers vs labels alone.

The recipe users follow with real checkpoints (CP-JKU's DCASE'23 "good teacher" recipe), on the quick start's
data and schedule (``kd.demo.quickstart.PLANS["asc"]``): the pretrained demo teachers that ship with kd
(``passt_tiny``, ``ast_tiny`` and ``cp_resnet``, pretrained on a large synthetic scene corpus of other locations
and devices, ``scripts/pretrain_demo_teachers.py``) are fine-tuned on the demo ASC training split with
``kd train-teacher`` and taught into one store with ``kd teach``. Then, for each seed, ``cp_mobile`` trains with
the same budget from the ensemble, from each teacher alone, and from labels alone (``--teachers none``). Scores are
last-epoch eval accuracies (no selection on the eval split).

The quick start's eval split holds 600 clips of 10 recording locations a scene (``--eval-clips``; the demo's
default 180 clips of 3 locations moved a run by about 3 points, as much as the gain being measured). Each
student's last-epoch weights are also scored on the eval split of a second demo set (``--test-clips`` clips over
both splits, seed 1: other recording locations, the same scenes and devices, never trained on or selected on).

The last line is one JSON object: ``kd_accuracy`` and ``baseline_accuracy`` (ensemble-distilled and label-only,
means over seeds), ``gain`` (their difference) and ``gain_sigma`` (the standard deviation of the per-seed gains),
the same per single teacher (``gain_passt``, ``gain_ast``, ...), the same on the larger test set (``test_gain``,
``test_gain_sigma``, ``test_kd_accuracy``, ...), the per-seed scores and the teachers' accuracy.

    python benchmarks/kd_gain.py [--quick] [--seeds 3] [--first-seed 0] [--student-epochs N] [--clips N]
        [--eval-clips N] [--test-clips N] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _recipes import TEACHERS, demo_asc, finetuned_teachers, paired_gain, run_study, student_folder, train_students

from kd.data import open_dataset
from kd.deploy.predict import evaluate_checkpoint
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach

TEST_SEED = 1  # the quick start's data is seed 0


def run(work: Path, clips: int, eval_clips: int | None, teacher_epochs: int, student_epochs: int, seeds: range,
        test_clips: int) -> dict:
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    data = demo_asc(work, clips, eval_clips=eval_clips)
    teachers, teacher_accuracy = finetuned_teachers(work, data, teacher_epochs, tracking)
    store = str(work / "store.zarr")
    teach = run_teach(TeachConfig(dataset=data, store=store, teachers=tuple(teachers), tracking_uri=tracking,
                                  chunk_size=128, batch_size=32))

    runs = {"ensemble": {"teachers": ",".join(TEACHERS), "store": store},
            **{alias: {"teachers": alias, "store": store} for alias in TEACHERS}, "baseline": {"teachers": "none"}}
    scores = {label: per_metric["accuracy"] for label, per_metric in
              train_students(work, data, runs, seeds, student_epochs, tracking, metrics=("accuracy",)).items()}
    test = demo_asc(work, test_clips, seed=TEST_SEED, name="demo-asc-test")
    test_scores = {label: [evaluate_checkpoint(
        str(student_folder(work, data, label, options, seed, student_epochs, tracking) / "last.pt"), test,
        split="eval", device="cpu")["accuracy"] for seed in seeds] for label, options in runs.items()}
    for label, accuracies in test_scores.items():
        print(f"{label} on the test set: " + ", ".join(f"{a:.3f}" for a in accuracies), flush=True)
    return {
        **gains(scores), **{f"test_{key}": value for key, value in gains(test_scores).items()},
        "seeds": list(seeds), "per_seed": scores, "test_per_seed": test_scores,
        "test_clips": len(open_dataset(test, split="eval").labelled_clips), "teacher_accuracy": teacher_accuracy,
        "ensemble_accuracy_on_train": teach.metrics["ensemble"]["accuracy"],
        "clips": clips, "eval_clips": eval_clips, "teacher_epochs": teacher_epochs, "student_epochs": student_epochs,
        "wall_seconds": time.perf_counter() - start,
    }


def gains(scores: dict[str, list[float]]) -> dict[str, float]:
    """The ensemble's and each teacher's accuracy and paired gain over labels alone, from per-seed ``scores``."""
    out = {"kd_accuracy": statistics.mean(scores["ensemble"]),
           "baseline_accuracy": statistics.mean(scores["baseline"])}
    out["gain"], out["gain_sigma"] = paired_gain(scores["ensemble"], scores["baseline"])
    for alias in TEACHERS:
        out[f"kd_accuracy_{alias}"] = statistics.mean(scores[alias])
        out[f"gain_{alias}"], out[f"gain_sigma_{alias}"] = paired_gain(scores[alias], scores["baseline"])
    return out


def extra_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-clips", type=int, default=2000,
                        help="clips of the second demo set over both splits (its eval split, 30 %%, is the test set)")


def options(args: argparse.Namespace) -> dict:
    return {"test_clips": 40 if args.quick else args.test_clips}


if __name__ == "__main__":
    run_study(__doc__, run, extra_arguments, options)
