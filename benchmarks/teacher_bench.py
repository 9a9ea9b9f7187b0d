"""Teacher inference throughput on CPU: PaSST-S and AST on 10 s clips, against a plain matmul's rate.

For each teacher (random weights, eval mode, ``torch.inference_mode``) the script times the full waveform
forward (frontend + transformer) on a batch of 10 s clips and reports clips/s and the achieved GFLOP/s,
with FLOPs counted by ``torch.utils.flop_counter`` on the same forward. The baseline is a square float32
matmul timed in the same run; ``*_vs_matmul`` is the teacher's GFLOP/s divided by the matmul's. The last line
of output is one JSON object with ``passt_s_clips_per_s``, ``ast_clips_per_s``, ``passt_s_vs_matmul`` and
``ast_vs_matmul``.

    python benchmarks/teacher_bench.py            # batch 8, 3 timed repetitions
    python benchmarks/teacher_bench.py --quick    # batch 1, 1 repetition (< 1 minute)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from teachers import create_teacher

TEACHERS = {"passt_s": "passt_s_swa_p16_128_ap476", "ast": "ast_audioset_10_10_0_4593"}


def matmul_gflops(size: int, repetitions: int, device: torch.device) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repetitions):
        torch.matmul(a, b)
    _sync(device)
    return 2 * size**3 * repetitions / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def teacher_rate(name: str, batch: int, seconds: float, repetitions: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_teacher(name).eval().to(device)
    wave = torch.randn(batch, int(seconds * model.sample_rate), device=device) * 0.1
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(wave)
        flops = counter.get_total_flops()
        model(wave)  # warm-up outside the counter (allocator and kernel caches)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repetitions):
            model(wave)
        _sync(device)
        elapsed = (time.perf_counter() - start) / repetitions
    return {
        "clips_per_s": batch / elapsed,
        "gflops_per_clip": flops / batch / 1e9,
        "gflops_per_s": flops / elapsed / 1e9,
        "seconds_per_batch": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 and one repetition (< 1 minute)")
    parser.add_argument("--batch", type=int, default=None, help="clips per batch (default 8, quick 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (1 if args.quick else 8)
    repetitions = 1 if args.quick else 3

    results: dict[str, float | int | str] = {"device": str(device), "threads": torch.get_num_threads(), "batch": batch}
    matmul = matmul_gflops(args.matmul_size, 5 if args.quick else 20, device)
    results["matmul_gflops_per_s"] = round(matmul, 1)
    print(f"matmul {args.matmul_size}^2: {matmul:.1f} GFLOP/s")
    for key, name in TEACHERS.items():
        rate = teacher_rate(name, batch, args.seconds, repetitions, device)
        print(
            f"{name}: {rate['clips_per_s']:.3f} clips/s, {rate['gflops_per_clip']:.1f} GFLOP/clip, "
            f"{rate['gflops_per_s']:.1f} GFLOP/s ({rate['gflops_per_s'] / matmul:.0%} of matmul)"
        )
        results[f"{key}_clips_per_s"] = round(rate["clips_per_s"], 4)
        results[f"{key}_gflops_per_s"] = round(rate["gflops_per_s"], 1)
        results[f"{key}_gflops_per_clip"] = round(rate["gflops_per_clip"], 1)
        results[f"{key}_vs_matmul"] = round(rate["gflops_per_s"] / matmul, 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
