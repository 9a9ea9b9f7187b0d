"""Does an unlabelled transfer set pay? A student labelled on one device, taught about the others by its teachers.

The demo ASC training split is cut in two: the clips of the reference device ``a`` keep their labels (the
labelled split); the clips of every other training device lose them (the transfer set, a manifest without a
label column). The pretrained demo teachers that ship with kd are fine-tuned on the labelled split alone, then
taught into one store over both (``kd teach --transfer``). For each seed, ``cp_mobile`` trains with the same
epochs and batch size (a) from labels alone, (b) distilled on the labelled clips only, (c) distilled with the
transfer set (``kd distill --transfer``, one transfer clip per labelled clip). Scores are last-epoch accuracies
on the full eval split, overall and on the devices the labelled split never saw (``acc_unseen``).

The last line is one JSON object: ``labels_accuracy``, ``kd_accuracy``, ``transfer_accuracy`` (means over seeds),
``transfer_gain`` (c - a, paired by seed) and ``transfer_gain_sigma``, the same for unseen devices, the teachers'
accuracy, per-seed scores and the sizes of the two sets.

    python benchmarks/transfer_gain.py [--quick] [--seeds 3] [--first-seed 0] [--student-epochs N] [--workdir DIR]
"""
from __future__ import annotations

import time
from pathlib import Path

from _recipes import (
    demo_asc,
    finetuned_teachers,
    manifest_rows,
    mean_and_sigma,
    paired_gain,
    run_study,
    train_students,
    write_manifest,
)

from kd.teach.config import TeachConfig
from kd.teach.run import run_teach

LABELLED_DEVICES = ("a",)


def run(work: Path, clips: int, eval_clips: int | None, teacher_epochs: int, student_epochs: int,
        seeds: range) -> dict:
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    demo = demo_asc(work, clips, eval_clips=eval_clips)
    labelled_rows = (manifest_rows(demo, "train", lambda c: c.device in LABELLED_DEVICES)
                     + manifest_rows(demo, "eval", lambda c: True))
    labelled = write_manifest(work / "labelled.csv", labelled_rows)
    transfer = write_manifest(work / "transfer.csv", manifest_rows(demo, "train", lambda c: c.device not in
                                                                   LABELLED_DEVICES, labelled=False))
    teachers, teacher_accuracy = finetuned_teachers(work, labelled, teacher_epochs, tracking)
    store = str(work / "store.zarr")
    teach = run_teach(TeachConfig(dataset=labelled, split="train", store=store, teachers=tuple(teachers),
                                  transfer=(transfer,), tracking_uri=tracking, chunk_size=128, batch_size=32))
    ensemble = ",".join(t.key for t in teachers)
    runs = {"labels": {"teachers": "none"}, "kd": {"teachers": ensemble, "store": store},
            "transfer": {"teachers": ensemble, "store": store, "transfer": (transfer,)}}
    scores = train_students(work, labelled, runs, seeds, student_epochs, tracking)
    out = {f"{label}_accuracy": mean_and_sigma(scores[label]["accuracy"])[0] for label in runs}
    out |= {f"{label}_unseen_accuracy": mean_and_sigma(scores[label]["acc_unseen"])[0] for label in runs}
    out["transfer_gain"], out["transfer_gain_sigma"] = paired_gain(scores["transfer"]["accuracy"],
                                                                   scores["labels"]["accuracy"])
    out["transfer_unseen_gain"], out["transfer_unseen_gain_sigma"] = paired_gain(
        scores["transfer"]["acc_unseen"], scores["labels"]["acc_unseen"])
    out["transfer_over_kd"], out["transfer_over_kd_sigma"] = paired_gain(scores["transfer"]["accuracy"],
                                                                         scores["kd"]["accuracy"])
    return {
        **out, "teacher_accuracy": teacher_accuracy,
        "teacher_accuracy_on_labelled_train": teach.metrics.get("ensemble", {}).get("accuracy"),
        "labelled_clips": sum(r["split"] == "train" for r in labelled_rows), "transfer_clips": teach.clips
        - sum(r["split"] == "train" for r in labelled_rows), "seeds": list(seeds), "per_seed": scores,
        "student_epochs": student_epochs, "teacher_epochs": teacher_epochs, "wall_seconds": time.perf_counter() - start,
    }


if __name__ == "__main__":
    run_study(__doc__, run)
