"""Student throughput: training-step clips/s and inference latency per family, with MACs/s achieved.

For one representative student per family (mn04, dymn04, cp_mobile, cp_resnet_dcase, fmn04_gru): a training step
(frontend + forward + backward + SGD update) on a batch of 32 clips of 10 s (1 s for the ASC students) and the
latency of one clip's inference (eval mode, no grad). MACs/s = counted MACs of the network (``kd.core.complexity``,
frontend excluded) x clips / s; the forward+backward step costs about 3x the forward MACs, reported as the
training figure's ``train_gmacs_per_s`` (3 x forward MACs x clips/s). As the baseline measured in the same run,
a float32 matmul gives the machine's peak GMAC/s, so each figure can be read as a fraction of it.

Usage: ``python benchmarks/student_bench.py [--quick] [--device cpu|cuda]``; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.core.complexity import complexity
from students import create_student

FAMILIES = {"mobilenet": "mn04", "dymn": "dymn04", "cp_mobile": "cp_mobile", "cp_resnet": "cp_resnet_dcase",
            "sed": "fmn04_gru"}
ASC = {"cp_mobile", "cp_resnet"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gmacs(device: torch.device, size: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return repeats * size**3 / (time.perf_counter() - start) / 1e9


def train_clips_per_s(model, batch: int, seconds: float, steps: int, device: torch.device) -> float:
    model.train()
    optim = torch.optim.SGD(model.parameters(), lr=1e-4)
    wave = torch.randn(batch, int(seconds * model.sample_rate), device=device)
    timings = []
    for _ in range(steps + 1):  # the first step pays for kernel selection and is not timed
        _sync(device)
        start = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        model(wave).float().square().mean().backward()
        optim.step()
        _sync(device)
        timings.append(time.perf_counter() - start)
    return batch / (sum(timings[1:]) / steps)


def inference_latency_ms(model, seconds: float, repeats: int, device: torch.device) -> float:
    model.eval()
    wave = torch.randn(1, int(seconds * model.sample_rate), device=device)
    with torch.no_grad():
        for _ in range(2):  # warm-up: the first calls of a new input shape pay for kernel selection
            model(wave)
        timings = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            model(wave)
            _sync(device)
            timings.append(time.perf_counter() - start)
    return 1e3 * sorted(timings)[len(timings) // 2]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4, 1 timed step, 2 latency repeats (about 1 min)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch, steps, repeats = (4, 1, 2) if args.quick else (args.batch, 3, 10)
    peak = matmul_gmacs(device)
    results = {}
    for family, name in FAMILIES.items():
        seconds = 1.0 if family in ASC else 10.0
        torch.manual_seed(0)
        model = create_student(name, num_classes=10 if family in ASC else 527).to(device)
        cost = complexity(model, seconds=seconds)
        clips = train_clips_per_s(model, batch, seconds, steps, device)
        latency = inference_latency_ms(model, seconds, repeats, device)
        results[family] = {
            "student": name, "clip_seconds": seconds, "params": cost.params, "macs": cost.macs,
            "train_clips_per_s": round(clips, 2), "train_gmacs_per_s": round(3 * cost.macs * clips / 1e9, 2),
            "infer_latency_ms": round(latency, 2), "infer_gmacs_per_s": round(cost.macs / latency / 1e6, 2),
        }
        print(f"{family:10s} {name:16s} train {clips:8.2f} clips/s   latency {latency:8.2f} ms   "
              f"{results[family]['infer_gmacs_per_s']:7.2f} GMAC/s (matmul peak {peak:.1f})", flush=True)
    summary = {"device": str(device), "machine": platform.machine(), "threads": torch.get_num_threads(),
               "batch": batch, "quick": args.quick, "matmul_gmacs_per_s": round(peak, 2), "families": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
