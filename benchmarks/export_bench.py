"""Exported students: single-clip CPU latency of PyTorch eager vs ONNX Runtime float32 vs int8, file sizes, and the
task metric of float32 vs int8 on the demo data.

For one student per family (cp_mobile, cp_resnet_dcase, mn04, dymn04, fmn_tiny), trained on its task's demo data
from labels alone (``kd distill --teachers none``), then exported by ``kd export`` twice: float32 and int8 (static
post-training quantisation calibrated on 256 training clips, quantisation-aware fine-tuning where that drops more
than a point; the metric drop measured on the whole demo eval split).
Latency: one clip of the student's usual input length (1 s for the ASC students, 10 s otherwise), waveform to
logits (frontend included, as the exported file runs it) and spectrogram to logits (the network alone), one
thread for PyTorch (``torch.set_num_threads(1)``) and for ONNX Runtime (``intra_op_num_threads=1``), median of
the timed runs after warm-up, the runtimes taking turns run by run so that a load on the machine hits them alike.
The PyTorch eager figure is the baseline, measured in the same run on the same clip. A student whose int8 export
is refused (DyMN) reports the refusal instead of int8 figures.

Checkpoints, demo data and exported files are kept in ``--workdir`` (default: a temporary folder) and reused when
the benchmark runs again with the same folder. ``--quick``: CP-Mobile only, on 80 demo clips, one epoch.

The last line is one JSON object: ``whole_file_ort_vs_torch`` (PyTorch eager latency / ONNX Runtime float32
latency of the whole file, the smaller of CP-Mobile's and mn04's; goal at least 2), ``int8_vs_f32_latency``
(int8 / float32 whole-file latency, the larger of the two; goal below 1), ``cp_mobile_file_bytes`` (its float32
file with the frontend), ``dymn_int8_drop`` (float32 minus int8 mAP of dymn04, or ``"refused"``), and CP-Mobile's
``int8_accuracy_drop`` (float32 accuracy minus int8 accuracy, as a fraction).

Usage: ``python benchmarks/export_bench.py [--quick] [--workdir DIR]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.core.checkpoints import load_student
from kd.demo.data import make_demo_data
from kd.deploy.config import ExportConfig
from kd.deploy.export import export_student
from kd.deploy.onnx_runtime import OnnxStudent, median_ms
from kd.train.distill import DistillConfig, TeacherChoice, distill
from kd_errors import KdError
from students import create_student, student_cfg

# family: (student, task, epochs, learning rate)
FAMILIES = {
    "cp_mobile": ("cp_mobile", "asc", 12, 4e-3),
    "cp_resnet": ("cp_resnet_dcase", "asc", 12, 4e-3),
    "mobilenet": ("mn04", "tagging", 6, 1e-3),
    "dymn": ("dymn04", "tagging", 6, 1e-3),
    "sed": ("fmn_tiny", "sed", 6, 1e-3),
}
DEMO_CLIPS = {"asc": 600, "tagging": 400, "sed": 300}
DEMO_FORMAT = {"asc": "tau22", "tagging": "audioset-hdf5", "sed": "audioset-strong"}


def network_session(path: str) -> ort.InferenceSession:
    """The network part of an exported file (spectrogram in) in a one-thread session."""
    network = onnx.utils.Extractor(onnx.load(path)).extract_model(["spectrogram"], ["logits"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(network.SerializeToString(), options, providers=["CPUExecutionProvider"])


def train(name: str, spec: str, out: Path, epochs: int, lr: float) -> str:
    best = out / "best.pt"
    if not best.is_file():
        distill(DistillConfig(dataset=spec, student=name, teachers=TeacherChoice(), out=str(out), epochs=epochs,
                              batch_size=32, lr=lr, device="cpu", seed=0,
                              tracking_uri=f"sqlite:///{out.parent / 'mlflow.db'}"))
    return str(best)


def bench_family(name: str, spec: str, checkpoint: str, folder: Path, repeats: int) -> dict:
    exports, refused = {}, None
    for kind, quantize in (("float32", None), ("int8", "int8")):
        path = folder / f"{name}_{kind}.onnx"
        try:
            exports[kind] = export_student(ExportConfig(checkpoint, str(path), quantize=quantize, calibration=spec))
        except KdError as e:
            if quantize is None or "refused" not in str(e):
                raise
            refused = str(e)
    model, _ = load_student(checkpoint)
    seconds = float(student_cfg(name).get("input_seconds", 1.0))
    wave = 0.1 * np.random.default_rng(0).standard_normal((1, round(seconds * model.sample_rate))).astype(np.float32)
    runtimes = {kind: OnnxStudent(result.path, device="cpu", threads=1) for kind, result in exports.items()}
    networks = {kind: network_session(result.path) for kind, result in exports.items()}
    with torch.inference_mode():
        tensor = torch.from_numpy(wave)
        spectrogram = model.frontend(tensor)
        feed = {"spectrogram": spectrogram.numpy()}
        runs = {"torch": lambda: model(tensor), "net_torch": lambda: model.forward_spectrogram(spectrogram)}
        for kind in exports:
            runs[kind] = lambda r=runtimes[kind]: r.logits(wave)
            runs[f"net_{kind}"] = lambda n=networks[kind]: n.run(None, feed)
        latency = median_ms(runs, repeats)
    row = {
        "student": name, "latency_seconds": seconds,
        "torch_ms": round(latency["torch"], 3), "ort_float32_ms": round(latency["float32"], 3),
        "network_torch_ms": round(latency["net_torch"], 3),
        "network_ort_float32_ms": round(latency["net_float32"], 3),
        "whole_file_ort_vs_torch": round(latency["torch"] / latency["float32"], 3),
        "float32_bytes": exports["float32"].bytes,
        "float32_frontend_bytes": exports["float32"].complexity.frontend_bytes,
        "float32_param_bytes": exports["float32"].complexity.param_bytes,
        "parity": exports["float32"].parity, "network_parity": exports["float32"].network_parity,
        "frontend_parity": exports["float32"].frontend_parity,
    }
    if refused:
        return {**row, "int8_refused": refused}
    report = exports["int8"].quantization
    return {
        **row,
        "ort_int8_ms": round(latency["int8"], 3), "network_ort_int8_ms": round(latency["net_int8"], 3),
        "int8_vs_f32_latency": round(latency["int8"] / latency["float32"], 3),
        "network_int8_vs_f32_latency": round(latency["net_int8"] / latency["net_float32"], 3),
        "int8_bytes": exports["int8"].bytes, "int8_param_bytes": exports["int8"].complexity.param_bytes,
        "dcase23_ok": exports["int8"].complexity.dcase23["ok"],
        "metric": report.metric, "check_clips": report.check_clips,
        "float32_metric": round(report.float32, 4), "int8_metric": round(report.int8, 4),
        "int8_drop": round(report.drop, 4), "int8_method": report.method,
        "post_training_int8_metric": None if report.post_training_int8 is None else round(report.post_training_int8, 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CP-Mobile only, 80 demo clips, one epoch (< 1 min)")
    parser.add_argument("--workdir", default=None, help="Keep (and reuse) demo data, checkpoints and files here.")
    parser.add_argument("--repeats", type=int, default=100, help="Timed runs per latency figure.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="export_bench_"))
    families = {"cp_mobile": (*FAMILIES["cp_mobile"][:2], 1, 4e-3)} if args.quick else FAMILIES
    clips = {"asc": 80} if args.quick else DEMO_CLIPS
    repeats = 30 if args.quick else args.repeats
    results = {}
    for family, (name, task, epochs, lr) in families.items():
        demo = work / f"demo-{task}-{clips[task]}"
        if not demo.is_dir():
            make_demo_data(demo, task, clips=clips[task], seed=0)
        spec = f"{DEMO_FORMAT[task]}:{demo}"
        checkpoint = train(name, spec, work / "runs" / f"{name}-{epochs}ep", epochs, lr)
        results[family] = row = bench_family(name, spec, checkpoint, work / "exports", repeats)
        int8 = (f"int8 {row['ort_int8_ms']:8.2f} ms  {row['metric']} {row['float32_metric']:.4f} -> "
                f"{row['int8_metric']:.4f}" if "int8_refused" not in row else "int8 refused")
        print(f"{family:10s} {name:16s} torch {row['torch_ms']:8.2f} ms  ort {row['ort_float32_ms']:8.2f} ms  {int8}  "
              f"(network {row['network_torch_ms']:.2f} / {row['network_ort_float32_ms']:.2f} / "
              f"{row.get('network_ort_int8_ms', float('nan')):.2f} ms)  file {row['float32_bytes']:,} bytes", flush=True)
    paired = [results[f] for f in ("cp_mobile", "mobilenet") if f in results]
    cp = results["cp_mobile"]
    dymn = results.get("dymn")
    if dymn is None:  # --quick: the refusal needs no trained model
        dymn_drop = "refused" if create_student("dymn04", 10).int8_refusal() else None
    else:
        dymn_drop = "refused" if "int8_refused" in dymn else dymn["int8_drop"]
    summary = {"machine": platform.machine(), "threads": 1, "quick": args.quick, "workdir": str(work),
               "whole_file_ort_vs_torch": min(r["whole_file_ort_vs_torch"] for r in paired),
               "int8_vs_f32_latency": max(r["int8_vs_f32_latency"] for r in paired),
               "cp_mobile_file_bytes": cp["float32_bytes"], "dymn_int8_drop": dymn_drop,
               "int8_accuracy_drop": cp["int8_drop"], "cp_mobile_int8_param_bytes": cp["int8_param_bytes"],
               "cp_mobile_dcase23_ok": cp["dcase23_ok"], "families": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
