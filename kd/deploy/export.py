"""``kd export``: a trained student as one self-contained ONNX file, checked before it is written.

What the file holds:

* **the network** (spectrogram ``[B, 1, F, T]`` -> logits), exported with torch's dynamo exporter (BatchNorm
  folded into the convolutions by its optimiser), and, unless ``frontend=False``, **the log-mel frontend** in front of
  it (waveform ``[B, N]`` -> spectrogram) as a separate subgraph whose names start with ``frontend/``: the STFT as
  a grouped convolution (its basis computed in the graph, folded by ONNX Runtime at load) and matrix products, and
  the mel projection over its non-zero band only (:class:`layers.mel.ExportMelSTFT`), so nothing outside the file is
  needed. Batch size and input length are dynamic (see
  :func:`~kd.deploy.graph.input_rules`);
* **metadata properties** a deployer needs (:data:`kd.deploy.onnx_runtime.METADATA_KEYS`): class names, task, sample rate,
  clip length, frames per second (SED), the frontend's settings, the input length rules, the source
  checkpoint's sha256 and, from a device-specific checkpoint, the recording device whose parameters it holds
  (``device_id``; ``none``: the general model).

What is exported is the student's export form, ``Student.exportable()``: modules whose PyTorch formulation does not
export, or exports slowly, provide a formulation with the same function and weights themselves (the frontend in
:mod:`layers.mel`, DyMN's dynamic convolution and ReLU in :mod:`students.dymn`), so this package knows no student
family (an import-linter contract says so).

Checks before the file is written (a failed check leaves an existing file untouched):

* float32, each part at its own interface, on probe audio (clips of ``calibration`` when given, else seeded noise):
  the network's logits on PyTorch's spectrograms within :data:`~kd.deploy.graph.PARITY_TOLERANCE` of PyTorch's (relative to the
  largest logit, at least 1), and the frontend's spectrograms within :data:`~kd.deploy.graph.PARITY_TOLERANCE` of PyTorch's. The
  whole file's logits are compared too and reported (:class:`~kd.deploy.config.ExportResult`), next to how far PyTorch's own float32
  logits are from exact ones (:func:`layers.mel.exact_log_mel`): two float32 transforms round quiet bins differently by
  ~5e-5 after the log (their error is relative to a frame's energy), and students with many output frames or a high
  gain carry that rounding past 1e-4, in PyTorch as much as in ONNX Runtime;
* int8 (``quantize="int8"``): static post-training quantisation with ONNX Runtime's tools (QDQ format, int8 weights
  per output channel, uint8 layer inputs calibrated on clips of the training split of ``calibration``, the first
  convolution kept in float, see :class:`~kd.deploy.config.QuantRecipe`), then the task's metric of the int8 file against the float32
  checkpoint on the evaluation split. A drop above ``max_drop`` is reported in the result and, with
  ``strict=True``, refuses the file. (torch's PT2E flow lives in torchao, which kd does not depend on; on CP-Mobile
  this recipe loses at most a point, see BENCHMARKS.md, so no quantisation-aware fine-tuning is needed.) A student
  with a module that refuses int8 (``Student.int8_refusal()``: DyMN's dynamic kernels) is refused in one line before
  anything is calibrated.

The parts live beside this module: :mod:`kd.deploy.config` (settings and reports), :mod:`kd.deploy.graph` (graphs,
metadata, parity) and :mod:`kd.deploy.quantize` (int8).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import kd
from kd.core.checkpoints import DEVICE_MODELS, load_student
from kd.core.complexity import exported_complexity
from kd.deploy.config import ExportConfig, ExportResult, ProgressFn
from kd.deploy.graph import (
    PARITY_TOLERANCE,
    Network,
    assemble,
    checked_parity,
    input_rules,
    min_samples,
    probe_noise,
    run_graph,
    to_onnx,
    with_metadata,
    write_atomically,
)
from kd.deploy.onnx_runtime import FORMAT_VERSION, OnnxStudent
from kd.deploy.quantize import (
    latencies,
    load_clips,
    open_calibration,
    quant_report,
    quantization_aware_finetune,
    quantize_network,
    spectrogram_batches,
    spread,
)
from kd.tasks import get_task
from kd_errors import KdError
from layers import sha256_file
from layers.mel import exact_log_mel
from students import Student

__all__ = ["export_student"]


def export_student(cfg: ExportConfig, on_step: ProgressFn | None = None) -> ExportResult:
    """Export, check and write ``cfg.checkpoint`` as ``cfg.out`` (see the module docstring)."""
    step = on_step or (lambda message: None)
    model, meta = load_student(cfg.checkpoint, cfg.device_id)
    if cfg.device_id is not None and meta["device_model"] != cfg.device_id:
        # unlike kd predict, no fallback: a file named for a device that holds the general model would mislead
        raise KdError(f"{cfg.checkpoint} has no parameters for device {cfg.device_id} (it has: "
                      f"{', '.join(meta[DEVICE_MODELS])}); export without --device-id for the general model")
    if cfg.quantize == "int8" and (reason := model.int8_refusal()):
        raise KdError(f"--quantize int8 refused for {meta['name']}: {reason}")
    seconds = float(cfg.seconds or meta["seconds"])
    classes = list(meta["classes"])
    calibration = open_calibration(cfg, classes) if cfg.calibration else None

    step("exporting the network")
    samples = round(seconds * model.sample_rate)
    with torch.no_grad():
        probe_spec = model.frontend(probe_noise(2, samples))
    exported = model.exportable()
    network = to_onnx(Network(exported), probe_spec, "spectrogram", "logits", {0: "batch", 3: "frames"},
                       {0: "batch", 1: "logit_frames"} if model.frames_per_second else {0: "batch"})
    frontend = None
    if cfg.frontend:
        step("exporting the frontend")
        frontend = to_onnx(exported.frontend, probe_noise(2, samples), "waveform", "spectrogram",
                            {0: "batch", 1: "samples"}, {0: "batch", 3: "frames"})

    if calibration is not None:
        probe_clips = spread(calibration.clips, min(cfg.batch_size, len(calibration.clips)))
        probe, parity_inputs = load_clips(calibration, probe_clips, model.sample_rate, seconds), \
            f"{len(probe_clips)} {cfg.calibration_split} clips of {cfg.calibration}"
    else:
        probe, parity_inputs = probe_noise(4, samples).numpy(), f"seeded noise, 4 x {seconds:g} s"
    step("checking ONNX Runtime against PyTorch")
    with torch.inference_mode():
        spectrogram = model.frontend(torch.from_numpy(probe))
        expected = model.forward_spectrogram(spectrogram).numpy()
        spectrogram = spectrogram.numpy()
    network_parity = checked_parity("the network's logits", run_graph(network, spectrogram), expected,
                              PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max())))
    frontend_parity = torch_vs_exact = None
    if frontend is not None:
        frontend_parity = checked_parity("the frontend's spectrograms", run_graph(frontend, probe), spectrogram, PARITY_TOLERANCE)
        with torch.inference_mode():
            exact = model.forward_spectrogram(exact_log_mel(model.frontend, probe)).numpy()
        torch_vs_exact = float(np.abs(expected - exact).max())
    float_model = assemble(frontend, network)
    metadata = _metadata(cfg, model, meta, seconds, float_model)
    float_model = with_metadata(float_model, metadata)
    got = OnnxStudent(float_model.SerializeToString(), device="cpu", name="the exported model").logits(probe)
    parity = float(np.abs(got - expected).max())

    report = None
    final = float_model
    if cfg.quantize == "int8":
        step(f"calibrating int8 on {cfg.calibration_clips} {cfg.calibration_split} clips")
        quantized = quantize_network(network, spectrogram_batches(model, calibration, cfg, seconds), cfg.recipe)
        final = with_metadata(assemble(frontend, quantized), {**metadata, "quantization": cfg.recipe.describe()})
        step(f"measuring int8 against float32 on the {cfg.check_split} split")
        report = quant_report(cfg, model, meta, final, seconds, "post-training")
        if report.drop > cfg.max_drop and cfg.qat_epochs:
            step(f"int8 drops {report.drop:.4f}: quantisation-aware fine-tuning, {cfg.qat_epochs} epochs")
            tuned = quantization_aware_finetune(model, calibration, seconds, cfg)
            retuned = to_onnx(Network(tuned), probe_spec, "spectrogram", "logits", {0: "batch", 3: "frames"},
                               {0: "batch", 1: "logit_frames"} if model.frames_per_second else {0: "batch"})
            quantized = quantize_network(retuned, spectrogram_batches(model, calibration, cfg, seconds), cfg.recipe)
            method = f"quantisation-aware ({cfg.qat_epochs} epochs)"
            candidate = with_metadata(assemble(frontend, quantized), {
                **metadata, "quantization": f"{cfg.recipe.describe()}; {method} fine-tuning on the "
                                            f"{cfg.calibration_split} split against the float32 model"})
            qat = quant_report(cfg, model, meta, candidate, seconds, method)
            if qat.drop < report.drop:
                final, report = candidate, replace(qat, post_training_int8=report.int8)
        if cfg.strict and report.drop > cfg.max_drop:
            raise KdError(f"int8 loses {report.drop:.4f} {report.metric} ({report.float32:.4f} -> {report.int8:.4f}), "
                          f"more than --max-drop {cfg.max_drop}; {cfg.out} was not written")
        step("timing int8 against float32 (one clip, one thread)")
        report = replace(report, **latencies(float_model, final, samples))
    nbytes = write_atomically(final, cfg.out)
    return ExportResult(str(cfg.out), nbytes, {p.key: p.value for p in final.metadata_props}, parity, network_parity,
                        frontend_parity, torch_vs_exact, parity_inputs, exported_complexity(cfg.out), report)


def _metadata(cfg: ExportConfig, model: Student, meta: dict[str, Any], seconds: float,
              graph: onnx.ModelProto) -> dict[str, str]:
    """The metadata properties of a float32 file (see :data:`kd.deploy.onnx_runtime.METADATA_KEYS`)."""
    shape = [d.dim_param or str(d.dim_value) for d in graph.graph.input[0].type.tensor_type.shape.dim]
    out_shape = [d.dim_param or str(d.dim_value) for d in graph.graph.output[0].type.tensor_type.shape.dim]
    task, shortest = meta["task"], min_samples(model)
    return {
        "kd_format": FORMAT_VERSION,
        "student": str(meta["name"]),
        "task": str(task),
        "classes": json.dumps(list(meta["classes"])),
        "num_classes": str(len(meta["classes"])),
        "sample_rate": str(model.sample_rate),
        "clip_seconds": f"{seconds:g}",
        "frames_per_second": f"{model.frames_per_second:g}" if model.frames_per_second else "none",
        "input": "waveform" if cfg.frontend else "spectrogram",
        "input_shape": f"{json.dumps(shape)}: {input_rules(model, cfg.frontend, shortest)}",
        "output_shape": json.dumps(out_shape) + (": frame logits [batch, frames, classes]" if model.frames_per_second
                                                 else ": logits [batch, classes]"),
        "min_samples": str(shortest),
        "frontend": json.dumps(model.frontend.settings()),
        "activation": get_task(task).activation,
        "quantization": "none",
        "checkpoint": Path(cfg.checkpoint).name,
        "checkpoint_sha256": sha256_file(cfg.checkpoint),
        "device_id": cfg.device_id or "none",
        "dataset": str(meta.get("dataset", "")),
        "kd_version": kd.__version__,
    }
