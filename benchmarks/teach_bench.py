"""``kd teach`` throughput: clips/s with 1 and 2 local dask workers, and what decoding + storing cost on top of
the teacher forward.

Setup: ``kd.data.make_demo_data`` writes an ASC demo set (TAU22 layout: 44.1 kHz WAV, 1 s clips, 10 scenes)
into a temporary folder; ``kd.teach.run_teach`` teaches ``passt_tiny`` (random weights; the loud warning is
expected) over its train split into a fresh q8 store, once with ``workers=1`` and once with ``workers=2``
(a ``LocalCluster`` of worker processes with one thread each; torch threads per worker = cores // workers).

What is timed:

* ``clips_per_s_N`` is the *steady-state* rate with N workers: clips finished between the first and the last
  chunk completion, divided by the time between them (from the ``on_progress`` callback). It excludes the
  fixed start-up (opening the dataset, creating the store, building the teacher, starting the cluster and the
  worker processes, each worker's first chunk with its model build) and the fixed tail (scoring, MLflow run),
  which are reported separately as ``startup_s_N`` (call to first chunk done) and ``wall_s_N`` (whole call).
* ``scaling_2_vs_1 = clips_per_s_2 / (2 * clips_per_s_1)``: 1.0 is perfect scaling. The machine's cores are
  shared by the workers *and* the client process (and anything else running), so 2 workers on 2 cores
  cannot reach 1.0 here.
* ``overhead_fraction = 1 - forward_s_per_clip / teach_s_per_clip`` with one worker: ``forward_s_per_clip``
  is the teacher forward alone (the same ``TeacherEnsemble`` call ``kd teach`` makes, same batch size, same
  torch thread count as a 1-worker cluster) on the same clips, decoded beforehand, in this process and run;
  ``teach_s_per_clip = 1 / clips_per_s_1``. The forward is timed with the worker's torch thread count and
  with one thread (4 passes each over the clips, two just before and two just after the 1-worker run; median
  per thread count), and the faster of the two is used: on a small, shared machine several OpenMP threads can
  be many times slower than one whenever another process wants a core, and the forward figure is meant as
  the teacher's own cost, so ``overhead_fraction`` is, if anything, an upper bound. The remainder is decoding and resampling, q8 encoding and
  the Zarr writes, the done records, and dask scheduling. ``decode_s_per_clip`` (the same clips decoded here,
  one process) splits out the decoding share.
* ``kd teach`` gives each local worker ``cores // workers`` torch threads: one worker already uses every core
  for the forward, so on a machine with few cores ``scaling_2_vs_1`` near 0.5 means two workers add no
  throughput over one, not that dask loses half of it.

The last line is one JSON object with ``clips_per_s_1``, ``clips_per_s_2``, ``scaling_2_vs_1`` and
``overhead_fraction``, plus the start-up, wall and per-clip figures.

    python benchmarks/teach_bench.py            # 768 train clips, chunks of 32
    python benchmarks/teach_bench.py --quick    # 192 train clips, chunks of 16 (< 1 minute)
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

from kd.checkpoints import TeacherSpec, build_teacher
from kd.data import make_demo_data, open_dataset
from kd.teach import TeachConfig, run_teach, teach_seconds

TEACHER = "passt_tiny"


def timed_teach(cfg: TeachConfig) -> dict[str, float]:
    """Run ``kd teach`` once; steady-state clips/s between first and last chunk completion, start-up, wall."""
    marks: list[tuple[float, int]] = []
    start = time.perf_counter()
    summary = run_teach(cfg, on_progress=lambda done, total: marks.append((time.perf_counter(), done)))
    wall = time.perf_counter() - start
    if len(marks) < 3:
        raise SystemExit(f"only {len(marks)} chunks completed: use more clips or smaller chunks")
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    if summary.failures:
        raise SystemExit(f"{len(summary.failures)} demo clips failed to decode: {sorted(summary.failures)[:3]}")
    return {"clips_per_s": (n_last - n_first) / (t_last - t_first), "startup_s": t_first - start, "wall_s": wall,
            "clips": summary.clips, "chunks": summary.chunks_run}


class ForwardAlone:
    """The teacher forward alone on the taught clips, decoded beforehand, as ``kd teach`` calls it.

    Same ``TeacherEnsemble`` call, batch size and clip length as the workers, timed with each torch thread
    count in ``threads`` (the worker's, and 1). :meth:`time_passes` can be called before and after a teach
    run, so that the figures bracket the run in time (other load on the machine hits both alike).
    """

    def __init__(self, cfg: TeachConfig, threads: tuple[int, ...]) -> None:
        from teachers import TeacherEnsemble

        data = open_dataset(cfg.dataset, split=cfg.split)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random weights: run_teach warns about them
            model = build_teacher(cfg.teachers[0], len(data.classes))
        self.ensemble = TeacherEnsemble([(cfg.teachers[0].key, model)]).eval()
        self.sample_rate, self.threads = model.sample_rate, threads
        seconds = teach_seconds(cfg, data)
        start = time.perf_counter()
        audio = [data.load_audio(clip, model.sample_rate, seconds) for clip in data.clips]
        self.decode_s_per_clip = (time.perf_counter() - start) / len(audio)
        self.clips = len(audio)
        self.batches = [torch.from_numpy(np.stack(audio[i:i + cfg.batch_size]))
                        for i in range(0, len(audio), cfg.batch_size)]
        self.pass_seconds: dict[int, list[float]] = {n: [] for n in threads}

    def time_passes(self, passes: int) -> None:
        previous = torch.get_num_threads()
        try:
            for threads, seconds in self.pass_seconds.items():
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    self.ensemble(self.batches[0], self.sample_rate)  # warm-up, as a worker's first chunk
                    for _ in range(passes):
                        start = time.perf_counter()
                        for wave in self.batches:
                            self.ensemble(wave, self.sample_rate)
                        seconds.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(previous)

    def result(self) -> dict[str, float]:
        """The forward's per-clip time: the faster thread count's median (the teacher's own cost at best)."""
        per_clip = {n: float(np.median(s)) / self.clips for n, s in self.pass_seconds.items()}
        return {"forward_s_per_clip": min(per_clip.values()),
                **{f"forward_s_per_clip_{n}_threads": v for n, v in per_clip.items()},
                "decode_s_per_clip": self.decode_s_per_clip}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips, finishes in under a minute")
    parser.add_argument("--batch-size", type=int, default=8, help="teacher batch size (kd teach --batch-size)")
    args = parser.parse_args()
    clips, chunk = (240, 16) if args.quick else (960, 32)  # the asc demo's train split is ~80% of the clips
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="teach_bench-") as tmp:
        root = Path(tmp)
        demo = make_demo_data(root / "demo", "asc", clips=clips, seed=0)
        print(f"demo data: {demo['splits']} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        out: dict[str, float] = {}
        for workers in (1, 2):
            cfg = TeachConfig(dataset=demo["spec"], store=str(root / f"store-{workers}.zarr"),
                              teachers=(TeacherSpec(TEACHER),), split="train", codec="q8",
                              batch_size=args.batch_size, chunk_size=chunk, workers=workers,
                              tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
            if workers == 1:  # the forward alone brackets the 1-worker run, with its worker's thread count
                forward = ForwardAlone(cfg, threads=tuple(sorted({max(1, cores // workers), 1})))
                forward.time_passes(2)
            r = timed_teach(cfg)
            print(f"workers={workers}: {json.dumps(r)}", file=sys.stderr)
            out.update({f"{k}_{workers}": v for k, v in r.items()})
            if workers == 1:
                forward.time_passes(2)
                alone = forward.result()
                print(f"forward alone: {json.dumps(alone)}", file=sys.stderr)
    teach_s_per_clip = 1 / out["clips_per_s_1"]
    result = {
        "clips_per_s_1": out["clips_per_s_1"],
        "clips_per_s_2": out["clips_per_s_2"],
        "scaling_2_vs_1": out["clips_per_s_2"] / (2 * out["clips_per_s_1"]),
        "overhead_fraction": 1 - alone["forward_s_per_clip"] / teach_s_per_clip,
        "teach_s_per_clip_1": teach_s_per_clip,
        **alone,
        "decode_fraction": alone["decode_s_per_clip"] / teach_s_per_clip,
        **{k: v for k, v in out.items() if not k.startswith("clips_per_s")},
        "teacher": TEACHER, "batch_size": args.batch_size, "chunk_size": chunk, "cores": cores,
        "per_clip_figures": "steady state between first and last chunk completion; start-up reported separately",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
