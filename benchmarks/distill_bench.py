"""``kd distill`` throughput: what reading stored logits costs a training loop, and whether the loader keeps up.

Setup: an ASC demo set (TAU22 layout, 1 s clips at 44.1 kHz) and a q8 store holding two teachers
(``passt_tiny`` under two aliases, random weights: their values do not matter here) taught over its train
split with ``kd teach``. The student is ``cp_mobile`` (the DCASE low-complexity model), batch 32, on the CPU.
Both loops are built by :func:`kd.train.distill.prepare_distillation`, exactly as ``kd distill`` builds them, with the
default augmentations (mixup) and ``decode_workers=0``, so every cost of the data path lands in the step time:

* ``kd``: ``--teachers a,b`` (an ensemble view: one store read of both teachers per batch, soft loss on top);
* ``labels``: ``--teachers none``, the same loop with labels only.

Figures (epochs alternate between the two loops, the first epoch of each loop discarded as warm-up; each loop's
time is its fastest of ``rounds`` epochs, since what else runs on the machine only ever adds time: on 2 shared
cores single epochs vary by +-10 %, more than the effect measured. ``store_overhead_median`` uses medians):

* ``store_overhead = kd_epoch_s / labels_epoch_s - 1``: the fraction of training time the store adds (target
  <= 0.05). It includes the per-batch ensemble read, the q8 decode and the soft-target loss.
* ``loader_vs_step``: clips/s of the KD data loader alone (decode + resample + store read, iterated without a
  model) over clips/s of the training step alone (forward + backward + optimiser on batches loaded beforehand).
  Above 1, one loader process feeds the step faster than it consumes; below 1, add DataLoader workers.
* ``store_read_ms_per_batch``: one ensemble ``LogitStore.read`` of a shuffled batch of 32 ids, alone, once the
  store's per-process cache of decoded chunks is warm (as it is after the first epoch of training).
* ``store_overhead_views4``: ``store_overhead`` of the same ensemble taught on K = 4 views per clip
  (``kd teach --views 4 --augment roll,gain``), each clip reading a random stored view (``--views random``:
  the per-id view pick from a decoded store four times the size; target <= 0.05), and
  ``replay_overhead_views4`` with the views replayed on the waveform (``--views consistent``: the store read
  plus rolling and scaling the audio in the loader).

The last line is one JSON object with these figures and the per-loop clips/s.

    python benchmarks/distill_bench.py            # 1 200 demo clips, 8 timed epochs per loop
    python benchmarks/distill_bench.py --quick    # 80 demo clips, 1 timed epoch per loop (< 1 minute)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.core.checkpoints import TeacherSpec
from kd.demo.data import make_demo_data
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from kd.train.distill import DistillConfig, TeacherChoice, prepare_distillation
from kd.train.job import TrainingJob

STUDENT, BATCH = "cp_mobile", 32


def teach_store(root: Path, spec: str, views: int = 1) -> str:
    store = str(root / f"store-{views}.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random teacher weights: expected here
        run_teach(TeachConfig(dataset=spec, store=store, teachers=(TeacherSpec("passt_tiny", None, "a"),
                                                                    TeacherSpec("passt_tiny", None, "b")),
                              split="train", chunk_size=128, batch_size=32, tracking_uri=f"sqlite:///{root / 'm.db'}",
                              views=views, augment=("roll", "gain") if views > 1 else ()))
    return store


def prepare(root: Path, spec: str, store: str | None, teachers: str, views: str | None = None) -> TrainingJob:
    return prepare_distillation(DistillConfig(
        dataset=spec, student=STUDENT, out=str(root / f"out-{teachers}-{views}"), store=store,
        teachers=TeacherChoice.parse(teachers), batch_size=BATCH, epochs=100, device="cpu", decode_workers=0,
        views=views))


def timed_epoch(job: TrainingJob) -> float:
    start = time.perf_counter()
    job.trainer.train_epoch(job.train_loader, job.step)
    return time.perf_counter() - start


def loader_alone_s(job: TrainingJob) -> float:
    start = time.perf_counter()
    for _ in job.train_loader:
        pass
    return time.perf_counter() - start


def step_alone_s(job: TrainingJob) -> float:
    batches = list(job.train_loader)
    start = time.perf_counter()
    job.trainer.train_epoch(batches, job.step)
    return time.perf_counter() - start


def store_read_ms(job: TrainingJob, repeats: int = 50) -> float:
    dataset = job.train_loader.dataset
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        ids = dataset.ids[rng.choice(len(dataset), BATCH, replace=False)]
        start = time.perf_counter()
        dataset.teacher_logits(ids)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips and epochs, under a minute")
    args = parser.parse_args()
    clips, rounds = (80, 1) if args.quick else (1200, 8)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="distill_bench-") as tmp:
        root = Path(tmp)
        spec = make_demo_data(root / "demo", "asc", clips=clips, seed=0)["spec"]
        store, views_store = teach_store(root, spec), teach_store(root, spec, views=4)
        loops = {"kd": prepare(root, spec, store, "a,b"), "labels": prepare(root, spec, None, "none"),
                 "views4": prepare(root, spec, views_store, "a,b", "random"),
                 "replay4": prepare(root, spec, views_store, "a,b", "consistent")}
        kd = loops["kd"]
        train_clips = len(kd.train_loader) * BATCH
        epoch_s: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(rounds + 1):
            for name, job in loops.items():
                epoch_s[name].append(timed_epoch(job))
                print(f"{name}: epoch {epoch_s[name][-1]:.2f} s", file=sys.stderr)
        kd_s, labels_s, views_s, replay_s = (min(epoch_s[k][1:]) for k in loops)
        kd_median, labels_median = (float(np.median(epoch_s[k][1:])) for k in ("kd", "labels"))
        loader_s = min(loader_alone_s(kd) for _ in range(rounds))
        step_s = min(step_alone_s(kd) for _ in range(rounds))
        read_ms = store_read_ms(kd)
    result = {
        "store_overhead": kd_s / labels_s - 1,
        "store_overhead_median": kd_median / labels_median - 1,
        "store_overhead_views4": views_s / labels_s - 1,
        "replay_overhead_views4": replay_s / labels_s - 1,
        "loader_vs_step": step_s / loader_s,
        "kd_clips_per_s": train_clips / kd_s,
        "labels_clips_per_s": train_clips / labels_s,
        "loader_clips_per_s": train_clips / loader_s,
        "step_clips_per_s": train_clips / step_s,
        "store_read_ms_per_batch": read_ms,
        "student": STUDENT, "batch_size": BATCH, "train_clips": train_clips, "rounds": rounds,
        "teachers": "ensemble of 2 (q8)", "cores": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
