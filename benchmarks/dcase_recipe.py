"""DCASE Task 1 as the winning systems run it, on the demo scenes: the data-efficient splits, and checkpoint averaging.

DCASE'24 trains on 5, 10, 25, 50 and 100 % of the development training set (the official ``split<N>.csv``
files; ``kd demo-data --task asc`` writes them for the demo). For each split the teacher (a CP-ResNet, the CNN
half of CP-JKU's ensemble, pretrained on a larger demo set of other recording locations, ``_recipes.cnn_teachers``)
is fine-tuned on that split only, as the challenge's rules ask, taught on that split, and ``cp_mobile`` trains
(quick start schedule) from it and from labels alone, for each seed: ``split_accuracy`` maps each split to both
last-epoch accuracies (means over seeds). On the largest split run the distilled student trains once more with
``--average-last 3`` (the mean of its last three epochs' weights, BatchNorm re-estimated): ``averaging_gain`` is
the averaged model's accuracy minus the last epoch's of the same schedule, paired by seed, with its standard
deviation (``--quick``: split25 alone, averaged there). Then each seed's distilled student is fine-tuned once per
training device (``kd device-finetune``: 2 epochs at lr 1e-4, still distilling, on that device's clips):
``device_finetune_gain`` is the accuracy on the seen devices' eval clips, each through its device's model, minus
the general student's, paired by seed.

    python benchmarks/dcase_recipe.py [--quick] [--seeds 3] [--first-seed 0] [--student-epochs N] [--teacher-clips N]
        [--pretrain-epochs N] [--teacher-epochs N (fine-tuning)] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from _recipes import cnn_teachers, demo_asc, mean_and_sigma, paired_gain, run_study, student_folder, train_students

from kd.data.tau22 import SUBSET_SPLITS
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from kd.train.devices import DeviceFinetuneConfig, finetune_devices
from kd.train.distill import TeacherChoice

AVERAGE_LAST = 3
DEVICE_EPOCHS, DEVICE_LR = 2, 1e-4


def run(work: Path, clips: int, eval_clips: int | None, teacher_epochs: int, student_epochs: int, seeds: range,
        teacher_clips: int, pretrain_epochs: int, splits: tuple[str, ...] = SUBSET_SPLITS) -> dict:
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    demo = demo_asc(work, clips, eval_clips=eval_clips)
    split_accuracy, teacher_accuracy, scores = {}, {}, {}
    for split in splits:
        teachers, accuracy = cnn_teachers(work, demo, teacher_clips, pretrain_epochs, teacher_epochs, tracking,
                                          train_split=split, aliases=("cpr",))
        teacher_accuracy[split] = accuracy["cpr"]
        store = str(work / f"store-{split}.zarr")
        run_teach(TeachConfig(dataset=demo, split=split, store=store, teachers=tuple(teachers), tracking_uri=tracking,
                              chunk_size=64, batch_size=32))
        runs = {"distilled": {"store": store, "teachers": "cpr", "train_split": split},
                "labels": {"teachers": "none", "train_split": split}}
        if split == splits[-1]:
            runs["distilled_averaged"] = {**runs["distilled"], "average_last": min(AVERAGE_LAST, student_epochs)}
        distilled = runs["distilled"]
        scores[split] = train_students(work / split, demo, runs, seeds, student_epochs, tracking, metrics=("accuracy",))
        split_accuracy[split] = {label: mean_and_sigma(s["accuracy"])[0] for label, s in scores[split].items()
                                 if label in ("distilled", "labels")}
    full = scores[splits[-1]]
    gain, sigma = paired_gain(full["distilled_averaged"]["accuracy"], full["distilled"]["accuracy"])
    general, specific = [], []
    for seed in seeds:
        result = finetune_devices(DeviceFinetuneConfig.create(
            str(student_folder(work / splits[-1], demo, "distilled", distilled, seed, student_epochs, tracking)
                / "best.pt"), dataset=demo,
            out=str(work / f"devices_{seed}"), store=str(work / f"store-{splits[-1]}.zarr"),
            teachers=TeacherChoice.parse("cpr"), train_split=splits[-1], epochs=min(DEVICE_EPOCHS, student_epochs),
            lr=DEVICE_LR, batch_size=32, seed=seed, tracking_uri=tracking, device="auto", log_model=False))
        general.append(result.general["acc_seen"])
        specific.append(result.device_specific["acc_seen"])
    device_gain, device_sigma = paired_gain(specific, general)
    return {"split_accuracy": split_accuracy, "averaging_gain": gain, "averaging_gain_sigma": sigma,
            "device_finetune_gain": device_gain, "device_finetune_gain_sigma": device_sigma,
            "device_finetune_seen_accuracy": {"general": general, "device_specific": specific},
            "teacher_accuracy": teacher_accuracy, "per_seed": scores, "seeds": list(seeds),
            "average_last": AVERAGE_LAST,
            "student_epochs": student_epochs, "teacher_clips": teacher_clips, "pretrain_epochs": pretrain_epochs,
            "finetune_epochs": teacher_epochs, "wall_seconds": time.perf_counter() - start}


def extra_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher-clips", type=int, default=2400, help="the teacher's pretraining set")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.set_defaults(teacher_epochs=10)


def options(args: argparse.Namespace) -> dict:
    if args.quick:  # one split, a minute
        return {"teacher_clips": 60, "pretrain_epochs": 1, "splits": ("split25",)}
    return {"teacher_clips": args.teacher_clips, "pretrain_epochs": args.pretrain_epochs}


if __name__ == "__main__":
    run_study(__doc__, run, extra_arguments, options)
