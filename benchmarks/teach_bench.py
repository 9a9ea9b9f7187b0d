"""``kd teach`` throughput: clips/s with 1 and 2 local dask workers, and what decoding + storing cost on top of
the teacher forward.

Setup: ``kd.demo.data.make_demo_data`` writes an ASC demo set (TAU22 layout: 44.1 kHz WAV, 1 s clips, 10 scenes)
into a temporary folder; ``kd.teach.run.run_teach`` teaches ``passt_tiny`` (random weights; the loud warning is
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
  is the teacher forward alone (the teacher called on a batch at its rate as ``kd teach`` does, same batch size, same
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

**Simulated accelerator** (the overlap of decoding and device work, measurable on a CPU): an AudioSet-HDF5
set of 10 s 32 kHz mp3 clips (``make_demo_data`` clips, their mp3 rows repeated under new ids) is taught with
``sim_accelerator``, a teacher stand-in registered below whose forward *sleeps* a fixed time per batch (no CPU,
as a host thread waits on a GPU) and returns logits from two cheap statistics of each clip's start. Every worker imports this file
(``kd.teach.placement.local_cluster(preload=...)``); one worker, ``--decode-workers`` = cores.

* ``decode_clips_per_s_per_core``: the clips decoded one after another in this process, as a worker decodes
  them (``Dataset.load_audio`` at 32 kHz, 10 s), over the thread's CPU time.
* ``decode_capacity_clips_per_s``: the same clips through a pool of ``decode_workers`` threads, wall clock,
  measured here before each teach run and after the last (mean; ``decode_capacity_measurements`` lists them).
  The device rate of each run is set from the measurement just before it.
* The decode capacity a run is scored against is measured *in* the run: the worker's decode threads time
  each clip (wall clock, so contention for the cores counts), and ``kd teach`` reports clips per second per
  thread; capacity = threads x that. Other developers' jobs on a shared machine make the capacity drift by
  tens of percent within a minute, so a figure taken before or after the run would misjudge it.
* For device rates of 1x (``balanced``; ``--quick`` runs this one only), 0.5x (``device_bound``) and 2x
  (``decode_bound``) the decode capacity:
  ``overlap_efficiency_<case>`` = steady clips/s of ``kd teach`` / min(device clips/s, decode capacity in the
  run).
  ``overlap_efficiency`` is the balanced case, the hardest: decoding and device are both saturated, and a
  stage that waits on the other shows at once. ``serial_efficiency_<case>`` is what decoding then running
  the device one after the other would reach, ``1 / (1/d + 1/c) / min(d, c)`` (0.5 when balanced).

**Precision**: the logit error of bf16 and fp16 autocast against fp32 for PaSST-S and AST at full size (random
weights, on this CPU; ``--quick``: the tiny teachers), as max |Δσ| and softmax KL like the store's codecs:
``bf16_max_abs_dsigmoid``, ``bf16_kl_t1``, ``fp16_...`` (worst teacher), per teacher in ``precision_error``.

The last line is one JSON object with ``clips_per_s_1``, ``clips_per_s_2``, ``scaling_2_vs_1``,
``overhead_fraction``, ``overlap_efficiency`` and ``decode_clips_per_s_per_core``, plus the start-up, wall and
per-clip figures.

    python benchmarks/teach_bench.py            # 768 train clips, chunks of 32; 512 simulated-device clips
    python benchmarks/teach_bench.py --quick    # ~100 train clips, chunks of 16; 64 simulated-device clips
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # store_bench's target error measures

from kd.core.checkpoints import TeacherSpec, build_teacher
from kd.data import open_dataset
from kd.demo.data import make_demo_data
from kd.teach.config import TeachConfig
from kd.teach.pipeline import teach_lengths
from kd.teach.placement import local_cluster
from kd.teach.run import run_teach
from teachers import TEACHERS, Teacher, TeacherOutput, register_teacher

TEACHER = "passt_tiny"
SIM_TEACHER = "sim_accelerator"
SIM_SETTINGS = "TEACH_BENCH_SIM_DEVICE"  # env: a JSON file {"batch_seconds": s}, read when the teacher is built
SIM_RATE = 32000
PRECISION_TEACHERS = ("passt_s_swa_p16_128_ap476", "ast_audioset_10_10_0_4593")


class SimulatedAccelerator(Teacher):
    """A teacher stand-in for a GPU: its forward waits ``batch_seconds`` per batch without using the CPU (a sleep,
    as a host thread waits on a device) and returns logits from the mean and deviation of each clip's first samples."""

    sample_rate, clip_seconds, window_hop_seconds, classifier_names = SIM_RATE, 10.0, 10.0, ("head",)

    def __init__(self, num_classes: int = 527) -> None:
        super().__init__()
        self.num_classes = num_classes
        settings = os.environ.get(SIM_SETTINGS)
        self.batch_seconds = json.loads(Path(settings).read_text())["batch_seconds"] if settings else 0.0
        self.frontend = nn.Identity()
        self.head = nn.Linear(2, num_classes)

    def forward_spectrogram(self, spec: torch.Tensor) -> TeacherOutput:
        time.sleep(self.batch_seconds)
        head = spec[:, :1024]  # a few statistics: the stand-in's own CPU time stays negligible
        return TeacherOutput(self.head(torch.stack([head.mean(-1), head.std(-1)], -1)))

    def frontend_config(self) -> dict[str, Any]:
        return {"simulated_batch_seconds": self.batch_seconds}


def sim_accelerator(**kwargs: Any) -> SimulatedAccelerator:
    """The simulated accelerator as a registered teacher (no checkpoint: it warns about random weights)."""
    return SimulatedAccelerator(**kwargs)


if SIM_TEACHER not in TEACHERS:  # every dask worker imports this file once more (preload)
    register_teacher(sim_accelerator, cfg={"simulated": True})


def timed_teach(cfg: TeachConfig) -> dict[str, float]:
    """Run ``kd teach`` once; steady-state clips/s between first and last chunk completion, start-up, wall, and
    the decode threads' own rate during the run (wall clock per clip, under the run's load)."""
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
            "clips": summary.clips, "chunks": summary.chunks_run,
            "decode_capacity_in_run": summary.decode_threads * summary.decode_clips_per_s_per_thread}


class ForwardAlone:
    """The teacher forward alone on the taught clips, decoded beforehand, as ``kd teach`` calls it.

    The same teacher call, batch size and clip length as the workers, timed with each torch thread
    count in ``threads`` (the worker's, and 1). :meth:`time_passes` can be called before and after a teach
    run, so that the figures bracket the run in time (other load on the machine hits both alike).
    """

    def __init__(self, cfg: TeachConfig, threads: tuple[int, ...]) -> None:
        data = open_dataset(cfg.dataset, split=cfg.split)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random weights: run_teach warns about them
            model = build_teacher(cfg.teachers[0], len(data.classes))
        self.model = model.eval()
        self.threads = threads
        seconds = teach_lengths(cfg, data).seconds
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
                    self.model(self.batches[0])  # warm-up, as a worker's first chunk
                    for _ in range(passes):
                        start = time.perf_counter()
                        for wave in self.batches:
                            self.model(wave)
                        seconds.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(previous)

    def result(self) -> dict[str, float]:
        """The forward's per-clip time: the faster thread count's median (the teacher's own cost at best)."""
        per_clip = {n: float(np.median(s)) / self.clips for n, s in self.pass_seconds.items()}
        return {"forward_s_per_clip": min(per_clip.values()),
                **{f"forward_s_per_clip_{n}_threads": v for n, v in per_clip.items()},
                "decode_s_per_clip": self.decode_s_per_clip}


def audioset_10s(root: Path, rows: int, unique: int) -> str:
    """An AudioSet-HDF5 set of ``rows`` 10 s mp3 clips: ``unique`` demo clips, their mp3 rows repeated under
    new ids (decoding costs the same per row; writing 10 s of synthetic audio as mp3 is the slow part)."""
    demo = make_demo_data(root / "demo10", "tagging", clips=max(2, unique + 1), seed=1, seconds=10.0)
    source = Path(demo["path"]) / "mp3" / "balanced_train_segments_mp3.hdf"
    target = root / "as10" / "mp3" / "balanced_train_segments_mp3.hdf"
    target.parent.mkdir(parents=True)
    shutil.copytree(Path(demo["path"]) / "metadata", root / "as10" / "metadata")
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        n = len(src["mp3"])
        dst.create_dataset("audio_name", data=[f"Ybench{i:06d}.mp3".encode() for i in range(rows)])
        mp3 = dst.create_dataset("mp3", shape=(rows,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
        for i in range(rows):
            mp3[i] = src["mp3"][i % n]
        dst.create_dataset("target", data=np.stack([src["target"][i % n] for i in range(rows)]))
    return f"audioset-hdf5:{target}"


def decode_per_core(spec: str) -> float:
    """Clips decoded per second of one thread's CPU time, every clip one after another as a worker decodes it."""
    data = open_dataset(spec)
    start = time.thread_time()
    for clip in data.clips:
        data.load_audio(clip, SIM_RATE, 10.0)
    return len(data.clips) / (time.thread_time() - start)


def decode_capacity(spec: str, threads: int) -> float:
    """Clips/s (wall clock) of a pool of ``threads`` decoding every clip: what a worker's decode pool delivers."""
    data = open_dataset(spec)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda c: data.load_audio(c, SIM_RATE, 10.0), data.clips[:threads]))  # threads started
        start = time.perf_counter()
        list(pool.map(lambda c: data.load_audio(c, SIM_RATE, 10.0), data.clips))
        return len(data.clips) / (time.perf_counter() - start)


def simulated_accelerator(root: Path, quick: bool, batch_size: int) -> dict[str, Any]:
    """``kd teach`` with a device that waits instead of computing, at three device rates around the decode
    capacity; see the module docstring."""
    rows, chunk = (64, 16) if quick else (512, 32)
    threads = os.cpu_count() or 1
    spec = audioset_10s(root, rows, unique=4 if quick else 16)
    per_core = decode_per_core(spec)
    settings = root / "sim_device.json"
    os.environ[SIM_SETTINGS] = str(settings)  # the workers inherit it
    cluster_cfg = TeachConfig(dataset=spec, store="unused", teachers=(TeacherSpec(SIM_TEACHER),), device="cpu",
                              workers=1)
    cluster, _ = local_cluster(cluster_cfg, preload=[str(Path(__file__).resolve())])
    runs: dict[str, dict[str, float]] = {}
    capacities = [decode_capacity(spec, threads)]
    try:
        cases = (("balanced", 1.0),) if quick else (("balanced", 1.0), ("device_bound", 0.5), ("decode_bound", 2.0))
        for case, factor in cases:
            device_rate = factor * capacities[-1]
            settings.write_text(json.dumps({"batch_seconds": batch_size / device_rate}))
            cfg = TeachConfig(dataset=spec, store=str(root / f"sim-{case}.zarr"), teachers=(TeacherSpec(SIM_TEACHER),),
                              codec="q8", batch_size=batch_size, chunk_size=chunk, device="cpu",
                              decode_workers=threads, scheduler=cluster.scheduler_address,
                              tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the stand-in has no checkpoint
                runs[case] = {**timed_teach(cfg), "device_clips_per_s": device_rate}
            capacities.append(decode_capacity(spec, threads))
            print(f"simulated accelerator, {case}: {json.dumps(runs[case])}", file=sys.stderr)
    finally:
        cluster.close()
        os.environ.pop(SIM_SETTINGS, None)
    out: dict[str, Any] = {
        "decode_clips_per_s_per_core": per_core,
        "decode_capacity_clips_per_s": float(np.mean(capacities)),
        "decode_capacity_measurements": capacities,
        "decode_workers": threads, "sim_clips": rows, "sim_chunk_size": chunk, "sim_dataset": spec,
    }
    for case, r in runs.items():
        capacity = r["decode_capacity_in_run"]
        bound = min(r["device_clips_per_s"], capacity)
        serial = 1 / (1 / r["device_clips_per_s"] + 1 / capacity)
        out[f"overlap_efficiency_{case}"] = r["clips_per_s"] / bound
        out[f"serial_efficiency_{case}"] = serial / bound
        out[f"sim_clips_per_s_{case}"] = r["clips_per_s"]
        out[f"sim_device_clips_per_s_{case}"] = r["device_clips_per_s"]
        out[f"sim_decode_capacity_in_run_{case}"] = capacity
    out["overlap_efficiency"] = out["overlap_efficiency_balanced"]
    return out


def precision_error(spec: str, quick: bool) -> dict[str, Any]:
    """The logit error autocast adds, against fp32, for real-size PaSST-S and AST (``--quick``: the tiny ones).

    On this CPU (torch autocast runs bf16 and fp16 matmuls here as on a GPU: reduced-precision inputs, fp32
    accumulation; softmax and norms in fp32) and with RANDOM weights: good enough to compare the formats with
    each other and with the q8 codec's error (same measures: max |Δσ|, softmax KL at T=1 and 2 per clip), not
    a statement about trained weights, whose logits spread wider.
    """
    from store_bench import target_error

    data = open_dataset(spec)
    clips = data.clips[: 1 if quick else 4]
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name in ("passt_tiny", "ast_tiny") if quick else PRECISION_TEACHERS:
            teacher = build_teacher(TeacherSpec(name), len(data.classes)).eval()
            wave = torch.from_numpy(np.stack([data.load_audio(c, teacher.sample_rate, 10.0) for c in clips]))
            with torch.inference_mode():
                ref = teacher(wave).clip.float().numpy()
                for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                    with torch.autocast("cpu", dtype=dtype):
                        got = teacher(wave).clip.float().numpy()
                    out[f"{name}_{precision}"] = {**target_error(ref, got),
                                                  "max_abs_dlogit": float(np.abs(got - ref).max()),
                                                  "logit_std": float(ref.std())}
            print(f"precision error of {name}: {json.dumps({k: v for k, v in out.items() if k.startswith(name)})}",
                  file=sys.stderr)
    worst = {p: {k: max(v[k] for n, v in out.items() if n.endswith(p)) for k in ("max_abs_dsigmoid", "kl_t1")}
             for p in ("bf16", "fp16")}
    return {"bf16_max_abs_dsigmoid": worst["bf16"]["max_abs_dsigmoid"], "bf16_kl_t1": worst["bf16"]["kl_t1"],
            "fp16_max_abs_dsigmoid": worst["fp16"]["max_abs_dsigmoid"], "fp16_kl_t1": worst["fp16"]["kl_t1"],
            "precision_error": out, "precision_clips": len(clips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips, finishes in under a minute")
    parser.add_argument("--batch-size", type=int, default=8, help="teacher batch size (kd teach --batch-size)")
    parser.add_argument("--sim-batch-size", type=int, default=16, help="batch size on the simulated accelerator")
    args = parser.parse_args()
    clips, chunk = (128, 16) if args.quick else (960, 32)  # the asc demo's train split is ~80% of the clips
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
        sim = simulated_accelerator(root, args.quick, args.sim_batch_size)
        precision = precision_error(sim.pop("sim_dataset"), args.quick)
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
        **sim,
        **precision,
        "teacher": TEACHER, "batch_size": args.batch_size, "sim_batch_size": args.sim_batch_size,
        "chunk_size": chunk, "cores": cores,
        "per_clip_figures": "steady state between first and last chunk completion; start-up reported separately",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
