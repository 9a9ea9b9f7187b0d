"""Does distillation help? ``cp_mobile`` distilled from pretrained, fine-tuned teachers vs labels alone.

The recipe users follow with real checkpoints (CP-JKU's DCASE'23 "good teacher" recipe), on the quick start's
data and schedule (``kd.demo.quickstart.PLANS["asc"]``): the pretrained demo teachers that ship with kd
(``passt_tiny``, ``ast_tiny`` and ``cp_resnet``, pretrained on a large synthetic scene corpus of other locations
and devices, ``scripts/pretrain_demo_teachers.py``) are fine-tuned on the demo ASC training split with
``kd train-teacher`` and taught into one store with ``kd teach``. Then, for each seed, ``cp_mobile`` trains with
the same budget from the ensemble, from each teacher alone, and from labels alone (``--teachers none``). Scores are
last-epoch eval accuracies (no selection on the eval split).

The last line is one JSON object: ``kd_accuracy`` and ``baseline_accuracy`` (ensemble-distilled and label-only,
means over seeds), ``gain`` (their difference) and ``gain_sigma`` (the standard deviation of the per-seed gains),
the same per single teacher (``gain_passt``, ``gain_ast``, ...), the per-seed scores and the teachers' accuracy.

    python benchmarks/kd_gain.py [--quick] [--seeds 3] [--first-seed 0] [--student-epochs N] [--workdir DIR]
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from _recipes import TEACHERS, demo_asc, finetuned_teachers, paired_gain, run_study, train_students

from kd.teach.config import TeachConfig
from kd.teach.run import run_teach


def run(work: Path, clips: int, teacher_epochs: int, student_epochs: int, seeds: range) -> dict:
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    data = demo_asc(work, clips)
    teachers, teacher_accuracy = finetuned_teachers(work, data, teacher_epochs, tracking)
    store = str(work / "store.zarr")
    teach = run_teach(TeachConfig(dataset=data, store=store, teachers=tuple(teachers), tracking_uri=tracking,
                                  chunk_size=128, batch_size=32))

    runs = {"ensemble": {"teachers": ",".join(TEACHERS), "store": store},
            **{alias: {"teachers": alias, "store": store} for alias in TEACHERS}, "baseline": {"teachers": "none"}}
    scores = {label: per_metric["accuracy"] for label, per_metric in
              train_students(work, data, runs, seeds, student_epochs, tracking, metrics=("accuracy",)).items()}

    out = {"kd_accuracy": statistics.mean(scores["ensemble"]),
           "baseline_accuracy": statistics.mean(scores["baseline"])}
    out["gain"], out["gain_sigma"] = paired_gain(scores["ensemble"], scores["baseline"])
    for alias in TEACHERS:
        out[f"kd_accuracy_{alias}"] = statistics.mean(scores[alias])
        out[f"gain_{alias}"], out[f"gain_sigma_{alias}"] = paired_gain(scores[alias], scores["baseline"])
    return {
        **out, "seeds": list(seeds), "per_seed": scores, "teacher_accuracy": teacher_accuracy,
        "ensemble_accuracy_on_train": teach.metrics["ensemble"]["accuracy"],
        "clips": clips, "teacher_epochs": teacher_epochs, "student_epochs": student_epochs,
        "wall_seconds": time.perf_counter() - start,
    }


if __name__ == "__main__":
    run_study(__doc__, run)
