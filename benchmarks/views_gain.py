"""Do consistent teacher views pay? Distilling from K = 4 stored views, and from K = 16 top-k views, vs clean
logits vs labels, per device.

The DCASE'23 device-generalisation setting on the demo ASC data: the student trains with device impulse
responses (DIR) and is evaluated on every device, seen and unseen in training. The teachers must know more
than the student: two CP-ResNets trained with the same DIR on a larger demo set of other recording locations,
then fine-tuned on the training split (``_recipes.cnn_teachers``; the tiny transformers that ship with kd score
below the student on this data, see ``kd quickstart``). They are taught three times: on the clean clips, on
K = 4 views per clip (``kd teach --views 4 --augment dir,roll,gain,speed``; view 0 clean; q8), and on K = 16
views kept as their 5 largest of the 10 scene logits (``--views 16 --codec topk --topk 5``). For each seed,
``cp_mobile`` trains with the same epochs and batch size (a) from the clean logits with online augmentation
(DIR p = 0.4, roll, gain: the student hears inputs its teachers never heard), (b) from the stored views,
replayed consistently (``kd distill --views consistent``), (c) from the same replayed views with the clean
clip's logits (``--views clean-targets``: the inputs of (b), the targets of (a), so (b) - (c) is what matching
each view's logits adds), (d) from labels alone with the online augmentation of (a), (e) from the 16 top-k
views, replayed consistently. Scores are last-epoch accuracies, overall and on unseen devices.

Impulse responses: ``--dir FOLDER`` (e.g. the 66 microphone responses in ``../shared/data/micirp``), else a
synthetic set written into the work folder (what ``--quick`` always uses, so it needs no data outside the repo).

The last line is one JSON object: ``consistent_accuracy``, ``clean_accuracy``, ``clean_targets_accuracy``,
``labels_accuracy`` (means over seeds), ``consistent_gain_over_clean`` and its standard deviation (paired by
seed), the same over ``clean_targets`` and labels, the unseen-device accuracy of each, the teach cost of K views
against one (wall seconds, null when a rerun reused the stores; bytes), ``consistent_topk_accuracy`` and its
gain over clean logits, the bytes on disk of each store (``store_bytes``), the teachers' accuracy.

    python benchmarks/views_gain.py [--quick] [--dir FOLDER] [--seeds 3] [--first-seed 0] [--student-epochs N]
        [--teacher-clips N] [--pretrain-epochs N] [--teacher-epochs N (fine-tuning)] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from _recipes import cnn_teachers, demo_asc, mean_and_sigma, paired_gain, run_study, train_students

from kd.teach.config import TeachConfig
from kd.teach.run import run_teach

VIEWS, KINDS = 4, ("dir", "roll", "gain", "speed")
TOPK_VIEWS, TOPK = 16, 5  # many views, each its 5 largest of the 10 scene logits
ONLINE = {"dir_p": 0.4, "roll_seconds": 0.25, "gain_db": 6.0}  # the views' ranges (kd.core.views.ViewConfig defaults)


def synthetic_impulse_responses(folder: Path, count: int = 24, sample_rate: int = 16000) -> Path:
    """Short microphone-like responses: a direct path, a few early reflections and a decaying, coloured tail."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        n = int(rng.uniform(0.01, 0.05) * sample_rate)
        ir = rng.normal(0, 1, n) * np.exp(-np.arange(n) / (n * rng.uniform(0.1, 0.4)))
        ir = np.convolve(ir, rng.normal(0, 1, 8) * np.exp(-np.arange(8) / 2), mode="same")  # colouring
        ir[0] = np.abs(ir).max() * rng.uniform(1.5, 4)
        sf.write(folder / f"synthetic_{i:02d}.wav", (ir / np.abs(ir).max()).astype(np.float32), sample_rate)
    return folder


def run(work: Path, clips: int, eval_clips: int | None, teacher_epochs: int, student_epochs: int, seeds: range,
        irs: str | None, teacher_clips: int, pretrain_epochs: int) -> dict:
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    demo = demo_asc(work, clips, eval_clips=eval_clips)
    irs = irs or str(synthetic_impulse_responses(work / "impulse-responses"))
    teachers, teacher_accuracy = cnn_teachers(work, demo, teacher_clips, pretrain_epochs, teacher_epochs, tracking,
                                              dir_folder=irs, **ONLINE)
    stores, teach_seconds, teach_bytes, reused = {}, {}, {}, False
    for name, views, codec in (("clean", 1, "q8"), ("views", VIEWS, "q8"), ("topk", TOPK_VIEWS, "topk")):
        stores[name] = str(work / f"store-{name}.zarr")
        summary = run_teach(TeachConfig(
            dataset=demo, store=stores[name], teachers=tuple(teachers), tracking_uri=tracking, chunk_size=128,
            batch_size=32, views=views, augment=KINDS if views > 1 else (), dir_folder=irs if views > 1 else None,
            codec=codec, topk=TOPK))
        teach_seconds[name], teach_bytes[name] = summary.wall_seconds, summary.store_info["bytes_on_disk"]
        reused |= summary.chunks_run == 0  # a rerun in the same work folder: nothing taught, nothing timed
    ensemble = ",".join(t.key for t in teachers)
    runs = {"clean": {"store": stores["clean"], "teachers": ensemble, "dir_folder": irs, **ONLINE},
            "consistent": {"store": stores["views"], "teachers": ensemble, "dir_folder": irs, "views": "consistent"},
            "clean_targets": {"store": stores["views"], "teachers": ensemble, "dir_folder": irs,
                              "views": "clean-targets"},
            "labels": {"teachers": "none", "dir_folder": irs, **ONLINE},
            "consistent_topk": {"store": stores["topk"], "teachers": ensemble, "dir_folder": irs, "views": "consistent"}}
    scores = train_students(work, demo, runs, seeds, student_epochs, tracking)
    out = {f"{label}_accuracy": mean_and_sigma(scores[label]["accuracy"])[0] for label in runs}
    out |= {f"{label}_unseen_accuracy": mean_and_sigma(scores[label]["acc_unseen"])[0] for label in runs}
    out["consistent_gain_over_clean"], out["consistent_gain_over_clean_sigma"] = paired_gain(
        scores["consistent"]["accuracy"], scores["clean"]["accuracy"])
    for baseline in ("clean_targets", "labels"):
        out[f"consistent_gain_over_{baseline}"], out[f"consistent_gain_over_{baseline}_sigma"] = paired_gain(
            scores["consistent"]["accuracy"], scores[baseline]["accuracy"])
    out["consistent_topk_gain_over_clean"], out["consistent_topk_gain_over_clean_sigma"] = paired_gain(
        scores["consistent_topk"]["accuracy"], scores["clean"]["accuracy"])
    out["consistent_unseen_gain_over_clean"], out["consistent_unseen_gain_over_clean_sigma"] = paired_gain(
        scores["consistent"]["acc_unseen"], scores["clean"]["acc_unseen"])
    return {
        **out, "teach_cost_views_vs_one": None if reused else teach_seconds["views"] / teach_seconds["clean"],
        "store_bytes_views_vs_one": teach_bytes["views"] / teach_bytes["clean"], "store_bytes": teach_bytes,
        "teach_seconds": None if reused else teach_seconds,
        "teacher_accuracy": teacher_accuracy, "views": VIEWS, "topk_views": TOPK_VIEWS, "topk": TOPK, "kinds": list(KINDS), "impulse_responses": irs,
        "seeds": list(seeds), "per_seed": scores, "student_epochs": student_epochs, "teacher_clips": teacher_clips,
        "pretrain_epochs": pretrain_epochs, "finetune_epochs": teacher_epochs,
        "wall_seconds": time.perf_counter() - start,
    }


def extra_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", help="impulse responses (default: a synthetic set)")
    parser.add_argument("--teacher-clips", type=int, default=2400, help="the teachers' pretraining set")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.set_defaults(teacher_epochs=10, student_epochs=30)  # a patient student (kd_gain, BENCHMARKS.md)


def options(args: argparse.Namespace) -> dict:
    if args.quick:  # nothing outside the repository, a minute
        return {"irs": None, "teacher_clips": 60, "pretrain_epochs": 1}
    return {"irs": args.dir, "teacher_clips": args.teacher_clips, "pretrain_epochs": args.pretrain_epochs}


if __name__ == "__main__":
    run_study(__doc__, run, extra_arguments, options)
