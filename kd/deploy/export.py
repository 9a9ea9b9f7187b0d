"""``kd export``: a trained student as one self-contained ONNX file, checked before it is written.

What the file holds:

* **the network** (spectrogram ``[B, 1, F, T]`` -> logits), exported with torch's dynamo exporter (BatchNorm
  folded into the convolutions by its optimiser), and, unless ``frontend=False``, **the log-mel frontend** in front of
  it (waveform ``[B, N]`` -> spectrogram) as a separate subgraph whose names start with ``frontend/``. The frontend's
  STFT becomes ONNX's ``STFT`` operator with the same window, so nothing outside the file is needed. Batch size and
  input length are dynamic (see :func:`input_rules`);
* **metadata properties** a deployer needs (:data:`kd.deploy.onnx_runtime.METADATA_KEYS`): class names, task, sample rate,
  clip length, frames per second (SED), the frontend's settings, the input length rules and the source
  checkpoint's sha256.

Modules whose PyTorch formulation does not export, or exports slowly, are rewritten for export only, with the same
weights (:class:`ExportFrontend`: the frontend without two slow gathers):
DyMN's dynamic convolution mixes a kernel per example and runs one grouped convolution with the batch folded into
the groups (a group count that depends on the batch size, which ONNX cannot express);
:class:`ExportDynamicConv` computes the same function with a fixed graph (see its docstring), and
:class:`ExportDyReLU` its dynamic ReLU with operations ONNX Runtime runs fast.

Checks before the file is written (a failed check leaves an existing file untouched):

* float32, each part at its own interface, on probe audio (clips of ``calibration`` when given, else seeded noise):
  the network's logits on PyTorch's spectrograms within :data:`PARITY_TOLERANCE` of PyTorch's (relative to the
  largest logit, at least 1), and the frontend's spectrograms within :data:`PARITY_TOLERANCE` of PyTorch's. The
  whole file's logits are compared too and reported (:class:`ExportResult`), next to how far PyTorch's own float32
  logits are from exact ones (:func:`exact_frontend`): two float32 FFTs round quiet bins differently by ~1e-5
  after the log (their error is relative to a frame's energy), and students with many output frames or a high
  gain carry that rounding past 1e-4, in PyTorch as much as in ONNX Runtime;
* int8 (``quantize="int8"``): static post-training quantisation with ONNX Runtime's tools (QDQ format, int8 weights
  per output channel, uint8 layer inputs calibrated on clips of the training split of ``calibration``, the first
  convolution kept in float, see :class:`QuantRecipe`), then the task's metric of the int8 file against the float32
  checkpoint on the evaluation split. A drop above ``max_drop`` is reported in the result and, with
  ``strict=True``, refuses the file. (torch's PT2E flow lives in torchao, which kd does not depend on; on CP-Mobile
  this recipe loses at most a point, see BENCHMARKS.md, so no quantisation-aware fine-tuning is needed.)
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import kd
from kd.core.checkpoints import load_student
from kd.core.complexity import ExportedComplexity, exported_complexity
from kd.data import AudioError, Dataset, open_dataset
from kd.deploy.onnx_runtime import FORMAT_VERSION, OnnxStudent
from kd.deploy.predict import TorchPredictor, evaluate_predictor
from kd.tasks import get_task
from kd.train.loaders import ClipDataset, make_loader
from kd_errors import KdError
from layers import MelSTFT, sha256_file
from students import Student
from students.dymn import DynamicConv, DyReLU

__all__ = ["ExportConfig", "ExportDyReLU", "ExportDynamicConv", "ExportFrontend", "ExportResult", "FakeQuantized", "QuantRecipe",
           "QuantReport", "exact_frontend", "export_student", "exportable", "fold_batchnorm", "input_rules",
           "quantization_aware_finetune"]

OPSET = 18
PARITY_TOLERANCE = 1e-4
QUANTIZE_CHOICES = ("int8",)
_LAYER_OPS = ("Conv", "Gemm", "MatMul")
ProgressFn = Callable[[str], None]


class ExportDynamicConv(nn.Module):
    """DyMN's :class:`students.dymn.DynamicConv` as a graph ONNX can hold, computing the same function.

    The original mixes ``k`` kernels per example (``softmax(Linear(context) / temperature)``) and convolves the
    batch folded into the groups, so the group count is ``groups * batch``. Here:

    * 1x1 convolutions without groups (expand and project) mix the kernels the same way and apply each example's
      ``[out, in]`` matrix with a batched matrix product;
    * other convolutions (the depthwise ones) run the ``k`` kernels as one static grouped convolution and mix the
      ``k`` outputs with the same weights: convolution is linear in its kernel, so
      ``conv(x, sum_j a_j W_j) = sum_j a_j conv(x, W_j)``; only the rounding differs.
    """

    def __init__(self, conv: DynamicConv) -> None:
        super().__init__()
        self.residuals, self.temperature, self.k = conv.residuals, conv.temperature, conv.k
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.stride, self.padding = conv.stride, conv.padding
        weight = conv.weight.detach()[0, 0]  # [k, out * in / groups * kh * kw]
        self.pointwise = conv.kernel_size == 1 and conv.groups == 1 and conv.stride == (1, 1)
        if self.pointwise:
            self.kernels = nn.Parameter(weight.clone(), requires_grad=False)
        else:
            g, per_group = conv.groups, conv.out_channels // conv.groups
            kernels = weight.reshape(conv.k, g, per_group, conv.in_channels // g, conv.kernel_size, conv.kernel_size)
            self.kernels = nn.Parameter(kernels.transpose(0, 1).reshape(g * conv.k * per_group, conv.in_channels // g,
                                                                        conv.kernel_size, conv.kernel_size).clone(),
                                        requires_grad=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        attention = torch.softmax(self.residuals(context.reshape(b, -1)) / self.temperature, dim=-1)
        if self.pointwise:
            kernels = (attention @ self.kernels).reshape(b, self.out_channels, self.in_channels)
            out = torch.matmul(kernels, x.reshape(b, self.in_channels, -1))
            return out.reshape(b, self.out_channels, x.shape[2], x.shape[3])
        y = F.conv2d(x, self.kernels, stride=self.stride, padding=self.padding, groups=self.groups)
        f, t = y.shape[-2], y.shape[-1]
        y = y.reshape(b, self.groups, self.k, -1)  # per group, the k kernels' outputs one after another
        out = y[:, :, 0] * attention[:, 0].reshape(b, 1, 1)
        for j in range(1, self.k):  # multiply-adds of 3-D tensors: ONNX Runtime broadcasts over 6-D ones slowly
            out = out + y[:, :, j] * attention[:, j].reshape(b, 1, 1)
        return out.reshape(b, self.out_channels, f, t)


class ExportDyReLU(nn.Module):
    """DyMN's :class:`students.dymn.DyReLU` with the same arithmetic, ``max_j(a_j * x + b_j)`` taken as an
    element-wise maximum of ``m`` 4-D tensors instead of a reduction over a trailing axis of size ``m`` (which ONNX
    Runtime broadcasts and reduces slowly: most of dymn04's time before)."""

    def __init__(self, act: DyReLU) -> None:
        super().__init__()
        self.coef_net, self.channels, self.m = act.coef_net, act.channels, act.m
        self.register_buffer("lambdas", act.lambdas.clone())
        self.register_buffer("init_v", act.init_v.clone())

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        theta = 2 * torch.sigmoid(self.coef_net(context.reshape(b, -1))) - 1
        coefs = (theta.reshape(b, self.channels, 2 * self.m) * self.lambdas + self.init_v).reshape(
            b, self.channels, 2 * self.m, 1, 1)
        out = x * coefs[:, :, 0] + coefs[:, :, self.m]
        for j in range(1, self.m):
            out = torch.maximum(out, x * coefs[:, :, j] + coefs[:, :, self.m + j])
        return out


def exportable(model: Student) -> Student:
    """A copy of ``model`` (eval mode) with every module ONNX cannot hold replaced by its export formulation."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, DynamicConv):
                setattr(module, name, ExportDynamicConv(child))
            elif isinstance(child, DyReLU):
                setattr(module, name, ExportDyReLU(child))
    return model


class ExportFrontend(nn.Module):
    """:class:`layers.MelSTFT` in eval mode, its power spectrum summed over a real view of the STFT.

    The same arithmetic (``re**2 + im**2``); taking ``.real`` and ``.imag`` of the complex STFT exports as two
    ``Gather`` nodes over the last axis, which ONNX Runtime runs slowly (a third of CP-Mobile's frontend time).
    """

    def __init__(self, mel: MelSTFT) -> None:
        super().__init__()
        self.mel = mel

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        mel = self.mel
        x = mel.preemphasize(waveform)
        spec = torch.stft(x, mel.n_fft, hop_length=mel.hop_length, win_length=mel.win_length, window=mel.window,
                          center=True, normalized=False, return_complex=True)
        power = torch.view_as_real(spec).square().sum(dim=-1)
        return ((torch.log(torch.matmul(mel.mel_basis, power) + 1e-5) + 4.5) / 5.0).unsqueeze(1)


class _Network(nn.Module):
    """The student without its frontend: spectrogram in, logits out."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.student.forward_spectrogram(spectrogram)


@dataclass(frozen=True)
class QuantRecipe:
    """How the network is quantised to int8 (ONNX Runtime static quantisation, QDQ format).

    Weights and inputs of the convolutions and matrix products become int8 (weights) and uint8 (activations);
    element-wise operations (residual additions, GRN, gating) stay float32 between them, which on CP-Mobile halves
    the largest logit error of quantising them too, at the same parameter memory.

    Attributes:
        per_channel: one weight scale per output channel (else one per tensor).
        calibrate_method: ``minmax``, ``entropy`` or ``percentile`` (ONNX Runtime's calibrators). ``percentile``
            (ranges at the 99.999th percentile) keeps the rare large activations after ReLU from stretching the
            uint8 range: on two CP-Mobiles trained on the demo scenes it gave the smaller or equal mean logit error
            (0.035 vs 0.049, 0.037 vs 0.037) with the int8 and float32 predictions agreeing on 98.5-99 % of clips.
        keep_float: layers kept in float32: ``first`` (the convolution on the spectrogram: 80 parameters in
            CP-Mobile, the layer most sensitive to quantisation) and/or ``last`` (the classifier).
    """

    per_channel: bool = True
    calibrate_method: str = "percentile"
    keep_float: tuple[str, ...] = ("first",)

    def describe(self) -> str:
        kept = ", ".join(f"{k} layer" for k in self.keep_float)
        return (f"int8 static (ONNX Runtime QDQ): {'/'.join(_LAYER_OPS)} weights int8 per "
                f"{'channel' if self.per_channel else 'tensor'}, inputs uint8 ({self.calibrate_method} calibration); "
                f"float32: frontend, element-wise ops{', ' + kept if kept else ''}")


_CALIBRATORS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile}


@dataclass(frozen=True)
class ExportConfig:
    """One ``kd export`` run.

    Attributes:
        checkpoint: a student checkpoint written by ``kd distill``.
        out: the ``.onnx`` file to write.
        frontend: include the log-mel frontend (the file takes waveforms) or not (it takes spectrograms).
        seconds: the clip length the file is exported, probed and calibrated for (default: the checkpoint's).
        quantize: None (float32) or ``int8``.
        calibration: ``FORMAT:PATH`` of a dataset with the checkpoint's classes; its ``calibration_split`` calibrates
            int8 activations and probes float32 parity, its ``check_split`` measures the int8 accuracy drop.
        calibration_clips: clips of the calibration split used (spread evenly over it).
        check_clips: at most this many clips of the check split (spread evenly).
        max_drop: the largest acceptable drop of the task's metric (0.01 = one point of accuracy).
        qat_epochs, qat_lr: quantisation-aware fine-tuning (:func:`quantization_aware_finetune`) when post-training
            quantisation drops more than ``max_drop``; the file keeps whichever of the two drops less (0: never).
        strict: refuse to write an int8 file whose drop exceeds ``max_drop``.
    """

    checkpoint: str
    out: str
    frontend: bool = True
    seconds: float | None = None
    quantize: str | None = None
    calibration: str | None = None
    calibration_split: str = "train"
    check_split: str = "eval"
    calibration_clips: int = 256
    check_clips: int = 2000
    recipe: QuantRecipe = field(default_factory=QuantRecipe)
    max_drop: float = 0.01
    qat_epochs: int = 2
    qat_lr: float = 1e-4
    strict: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            raise KdError(f"--quantize {self.quantize}: expected one of {', '.join(QUANTIZE_CHOICES)}")
        if self.quantize and not self.calibration:
            raise KdError("--quantize int8 needs --calibration FORMAT:PATH (clips of the training data)")
        if Path(self.out).suffix.lower() != ".onnx":
            raise KdError(f"--out {self.out}: the file name must end in .onnx")
        if self.seconds is not None and self.seconds <= 0:
            raise KdError(f"--seconds must be positive, got {self.seconds}")
        if self.recipe.calibrate_method not in _CALIBRATORS:
            raise KdError(f"calibration method {self.recipe.calibrate_method!r}: expected one of {', '.join(_CALIBRATORS)}")
        if min(self.calibration_clips, self.check_clips, self.batch_size) < 1:
            raise KdError("calibration_clips, check_clips and batch_size must be at least 1")
        if self.qat_epochs < 0 or self.qat_lr <= 0:
            raise KdError("--qat-epochs must be 0 or more and the QAT learning rate positive")


@dataclass(frozen=True)
class QuantReport:
    """What int8 quantisation cost: the task's metric of the float32 checkpoint and of the int8 file.

    Attributes:
        method: ``post-training`` or ``quantisation-aware (N epochs)``, the one the file holds.
        post_training_int8: the post-training figure, when quantisation-aware fine-tuning replaced it.
    """

    recipe: str
    method: str
    metric: str
    float32: float
    int8: float
    drop: float
    check_clips: int
    calibration_clips: int
    post_training_int8: float | None = None


@dataclass(frozen=True)
class ExportResult:
    """A written file and what was checked (max |differences| on ``parity_inputs``).

    Attributes:
        parity: the file's logits against PyTorch's (float32), waveform (or spectrogram) in.
        network_parity: the network's logits against PyTorch's on PyTorch's spectrograms (checked).
        frontend_parity: the frontend's spectrogram against PyTorch's (checked); None without the frontend.
        torch_vs_exact: PyTorch's own float32 logits against those of an exact (float64) frontend, the scale of
            ``parity`` that float32 rounding alone explains; None without the frontend.
    """

    path: str
    bytes: int
    metadata: dict[str, str]
    parity: float
    network_parity: float
    frontend_parity: float | None
    torch_vs_exact: float | None
    parity_inputs: str
    complexity: ExportedComplexity
    quantization: QuantReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_student(cfg: ExportConfig, on_step: ProgressFn | None = None) -> ExportResult:
    """Export, check and write ``cfg.checkpoint`` as ``cfg.out`` (see the module docstring)."""
    step = on_step or (lambda message: None)
    model, meta = load_student(cfg.checkpoint)
    seconds = float(cfg.seconds or meta["seconds"])
    classes = list(meta["classes"])
    calibration = _open_calibration(cfg, classes) if cfg.calibration else None

    step("exporting the network")
    samples = round(seconds * model.sample_rate)
    with torch.no_grad():
        probe_spec = model.frontend(_noise(2, samples))
    network = _to_onnx(_Network(exportable(model)), probe_spec, "spectrogram", "logits", {0: "batch", 3: "frames"},
                       {0: "batch", 1: "logit_frames"} if model.frames_per_second else {0: "batch"})
    frontend = None
    if cfg.frontend:
        step("exporting the frontend")
        frontend = _to_onnx(ExportFrontend(model.frontend), _noise(2, samples), "waveform", "spectrogram",
                            {0: "batch", 1: "samples"}, {0: "batch", 3: "frames"})

    if calibration is not None:
        probe_clips = _spread(calibration.clips, min(cfg.batch_size, len(calibration.clips)))
        probe, parity_inputs = _load_clips(calibration, probe_clips, model.sample_rate, seconds), \
            f"{len(probe_clips)} {cfg.calibration_split} clips of {cfg.calibration}"
    else:
        probe, parity_inputs = _noise(4, samples).numpy(), f"seeded noise, 4 x {seconds:g} s"
    step("checking ONNX Runtime against PyTorch")
    with torch.inference_mode():
        spectrogram = model.frontend(torch.from_numpy(probe))
        expected = model.forward_spectrogram(spectrogram).numpy()
        spectrogram = spectrogram.numpy()
    network_parity = _checked("the network's logits", _run(network, spectrogram), expected,
                              PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max())))
    frontend_parity = torch_vs_exact = None
    if frontend is not None:
        frontend_parity = _checked("the frontend's spectrograms", _run(frontend, probe), spectrogram, PARITY_TOLERANCE)
        with torch.inference_mode():
            exact = model.forward_spectrogram(exact_frontend(model.frontend, probe)).numpy()
        torch_vs_exact = float(np.abs(expected - exact).max())
    float_model = _assemble(frontend, network)
    metadata = _metadata(cfg, model, meta, seconds, float_model)
    float_model = _with_metadata(float_model, metadata)
    got = OnnxStudent(float_model.SerializeToString(), device="cpu", name="the exported model").logits(probe)
    parity = float(np.abs(got - expected).max())

    report = None
    final = float_model
    if cfg.quantize == "int8":
        step(f"calibrating int8 on {cfg.calibration_clips} {cfg.calibration_split} clips")
        quantized = quantize_network(network, _spectrogram_batches(model, calibration, cfg, seconds), cfg.recipe)
        final = _with_metadata(_assemble(frontend, quantized), {**metadata, "quantization": cfg.recipe.describe()})
        step(f"measuring int8 against float32 on the {cfg.check_split} split")
        report = _quant_report(cfg, model, meta, final, seconds, "post-training")
        if report.drop > cfg.max_drop and cfg.qat_epochs:
            step(f"int8 drops {report.drop:.4f}: quantisation-aware fine-tuning, {cfg.qat_epochs} epochs")
            tuned = quantization_aware_finetune(model, calibration, seconds, cfg)
            retuned = _to_onnx(_Network(tuned), probe_spec, "spectrogram", "logits", {0: "batch", 3: "frames"},
                               {0: "batch", 1: "logit_frames"} if model.frames_per_second else {0: "batch"})
            quantized = quantize_network(retuned, _spectrogram_batches(model, calibration, cfg, seconds), cfg.recipe)
            method = f"quantisation-aware ({cfg.qat_epochs} epochs)"
            candidate = _with_metadata(_assemble(frontend, quantized), {
                **metadata, "quantization": f"{cfg.recipe.describe()}; {method} fine-tuning on the "
                                            f"{cfg.calibration_split} split against the float32 model"})
            qat = _quant_report(cfg, model, meta, candidate, seconds, method)
            if qat.drop < report.drop:
                final, report = candidate, replace(qat, post_training_int8=report.int8)
        if cfg.strict and report.drop > cfg.max_drop:
            raise KdError(f"int8 loses {report.drop:.4f} {report.metric} ({report.float32:.4f} -> {report.int8:.4f}), "
                          f"more than --max-drop {cfg.max_drop}; {cfg.out} was not written")
    nbytes = _write(final, cfg.out)
    return ExportResult(str(cfg.out), nbytes, {p.key: p.value for p in final.metadata_props}, parity, network_parity,
                        frontend_parity, torch_vs_exact, parity_inputs, exported_complexity(cfg.out), report)


# --- graphs --------------------------------------------------------------------------------------------------------


def _noise(batch: int, samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(batch, samples, generator=generator)


def _to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str,
             input_axes: dict[int, str], output_axes: dict[int, str]) -> onnx.ModelProto:
    """``module`` as an ONNX graph with one input and one output.

    The ``input_axes`` stay symbolic where the module allows it; they and the ``output_axes`` get readable names
    (``batch``, ``samples``, ...) in place of the exporter's ``s16``-style symbols, wherever those appear.
    """
    shapes = ({axis: torch.export.Dim.AUTO for axis in input_axes},)
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(module.eval(), (example,), None, input_names=[input_name],
                                    output_names=[output_name], dynamic_shapes=shapes, opset_version=OPSET,
                                    dynamo=True, external_data=False, verbose=False)
    proto = program.model_proto
    for index, node in enumerate(proto.graph.node):  # the quantiser addresses nodes by name
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    names = {}
    for value, axes in ((proto.graph.input[0], input_axes), (proto.graph.output[0], output_axes)):
        dims = value.type.tensor_type.shape.dim
        names.update({dims[axis].dim_param: name for axis, name in axes.items() if dims[axis].dim_param})
    if names:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
        for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = pattern.sub(lambda m: names[m.group(1)], dim.dim_param)
    return proto


def _assemble(frontend: onnx.ModelProto | None, network: onnx.ModelProto) -> onnx.ModelProto:
    """The network alone, or the frontend (names prefixed ``frontend/``) feeding it."""
    if frontend is None:
        return copy.deepcopy(network)
    prefixed = onnx.compose.add_prefix(frontend, "frontend/", rename_inputs=False, rename_outputs=False)
    merged = onnx.compose.merge_models(prefixed, _without_metadata(network), io_map=[("spectrogram", "spectrogram")])
    return merged


def _without_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    del model.metadata_props[:]
    return model


def _with_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    model = _without_metadata(model)
    onnx.helper.set_model_props(model, metadata)
    model.producer_name, model.producer_version = "kd", kd.__version__
    model.doc_string = (f"{metadata['student']} ({metadata['task']}), exported by kd export: input "
                        f"{metadata['input']} {metadata['input_shape']}, output {metadata['output_shape']}")
    return model


def _write(model: onnx.ModelProto, out: str | os.PathLike) -> int:
    """Write atomically (a temporary file renamed into place), so a failure never leaves half a file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".onnx.part", delete=False) as handle:
        handle.write(model.SerializeToString())
    os.replace(handle.name, out)
    return out.stat().st_size


def exact_frontend(frontend: MelSTFT, waveforms: np.ndarray) -> torch.Tensor:
    """The eval-mode log-mel spectrogram of ``waveforms`` computed in float64, returned as float32.

    The float32 frontend's FFT rounds low-energy bins by up to ~1e-5 after the log (its error is relative to a
    frame's energy, not a bin's); this is the reference both float32 implementations are measured against.
    """
    wave = torch.as_tensor(waveforms).double()
    x = wave[:, 1:] - 0.97 * wave[:, :-1]  # the pre-emphasis filter [-0.97, 1] of MelSTFT
    spec = torch.stft(x, frontend.n_fft, hop_length=frontend.hop_length, win_length=frontend.win_length,
                      window=frontend.window.double(), center=True, return_complex=True)
    mel = frontend.mel_basis.double() @ (spec.real.square() + spec.imag.square())
    return ((torch.log(mel + 1e-5) + 4.5) / 5.0).unsqueeze(1).float()


def _run(graph: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _checked(what: str, got: np.ndarray, expected: np.ndarray, tolerance: float) -> float:
    """Max |got - expected|; a :class:`KdError` (nothing written) above ``tolerance`` or on another shape."""
    if got.shape != expected.shape:
        raise KdError(f"ONNX Runtime gives {what} of shape {got.shape}, PyTorch {expected.shape}; nothing was written")
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:
        raise KdError(f"in ONNX Runtime {what} differ from PyTorch's by {difference:.3g} (tolerance {tolerance:.3g}); "
                      "nothing was written")
    return difference


# --- metadata ------------------------------------------------------------------------------------------------------


def frontend_settings(frontend: MelSTFT) -> dict[str, Any]:
    """Everything the eval-mode log-mel frontend computes with (see :class:`layers.MelSTFT`)."""
    return {"type": "log-mel (kd MelSTFT)", "sample_rate": frontend.sample_rate, "n_mels": frontend.n_mels,
            "n_fft": frontend.n_fft, "win_length": frontend.win_length, "hop_length": frontend.hop_length,
            "fmin": float(frontend.fmin), "fmax": float(frontend.fmax), "window": "hann (symmetric), centred",
            "steps": "pre-emphasis 0.97; power STFT (centred, reflect padding); Kaldi mel banks; "
                     "log(x + 1e-5); (x + 4.5) / 5"}


def input_rules(model: Student, frontend: bool, shortest: int | None = None) -> str:
    """What inputs a file accepts, in words (also stored in its metadata as ``input_shape``).

    ``shortest``: :func:`min_samples` of ``model``, when the caller has it already.
    """
    mel = model.frontend
    if frontend:
        rule = (f"waveform [batch, samples] float32 at {mel.sample_rate} Hz, any batch size and at least "
                f"{shortest or min_samples(model)} samples; {mel.n_mels} x ((samples - 1) // {mel.hop_length} + 1) "
                "spectrogram frames")
    else:
        rule = (f"log-mel spectrogram [batch, 1, {mel.n_mels}, frames] float32 as the frontend in the metadata makes "
                f"it ({mel.sample_rate / mel.hop_length:g} frames per second), any batch size, at least "
                f"{min_frames(model)} frames")
    if model.frames_per_second:
        return rule + f"; frame logits at {model.frames_per_second:g} per second"
    return rule + "; clip logits (the network pools over time, so any length above the minimum works)"


def min_frames(model: Student) -> int:
    """The fewest spectrogram frames (a power of two) the network takes."""
    frames = 1
    with torch.inference_mode():
        while frames < 1 << 12:
            try:
                model.forward_spectrogram(torch.zeros(1, 1, model.frontend.n_mels, frames))
                return frames
            except RuntimeError:
                frames *= 2
    raise KdError(f"{type(model).__name__} does not run on up to {frames} frames")


def min_samples(model: Student) -> int:
    """The fewest waveform samples: enough for the network's frames and the STFT's reflect padding."""
    mel = model.frontend
    return max(mel.n_fft // 2 + 2, (min_frames(model) - 1) * mel.hop_length + 1)


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
        "frontend": json.dumps(frontend_settings(model.frontend)),
        "activation": get_task(task).activation,
        "quantization": "none",
        "checkpoint": Path(cfg.checkpoint).name,
        "checkpoint_sha256": sha256_file(cfg.checkpoint),
        "dataset": str(meta.get("dataset", "")),
        "kd_version": kd.__version__,
    }


# --- int8 ----------------------------------------------------------------------------------------------------------


class _Batches(CalibrationDataReader):
    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"spectrogram": batch}


def quantize_network(network: onnx.ModelProto, spectrograms: Iterator[np.ndarray], recipe: QuantRecipe) -> onnx.ModelProto:
    """The network (spectrogram input) statically quantised to int8 by ``recipe``, calibrated on ``spectrograms``.

    Quantised are the layers with constant weights; products of two computed tensors (DyMN's per-example kernels
    applied to its input) stay float32, as their int8 versions lose most of dymn04's mAP.
    """
    constants = {t.name for t in network.graph.initializer} | \
        {n.output[0] for n in network.graph.node if n.op_type == "Constant"}
    layers = [n.name for n in network.graph.node if n.op_type in _LAYER_OPS and n.input[1] in constants]
    keep = set(layers[:1] if "first" in recipe.keep_float else []) | \
        set(layers[-1:] if "last" in recipe.keep_float else [])
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(_without_metadata(network), source)
        quantize_static(
            str(source), str(target), _Batches(spectrograms), quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
            calibrate_method=_CALIBRATORS[recipe.calibrate_method],
            nodes_to_quantize=[name for name in layers if name not in keep], op_types_to_quantize=list(_LAYER_OPS),
        )
        return onnx.load(target)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (changed in place, eval mode) with every BatchNorm that follows a convolution in a ``Sequential``
    folded into it, as the exporter folds them, so fine-tuning sees the weights the int8 file will hold."""
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i].eval(), module[i + 1].eval())
                    module[i + 1] = nn.Identity()
    return model.eval()


class FakeQuantized(nn.Module):
    """A convolution or linear layer computing as its int8 version in the file will: the input fake-quantised to
    uint8 over a running [min, max] range (which includes 0), the weight to int8 per output channel, symmetric.
    Gradients pass straight through the rounding."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, momentum: float = 0.1) -> None:
        super().__init__()
        self.layer, self.momentum = layer, momentum
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.observed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            low, high = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
            mix = 1.0 if not self.observed else self.momentum
            self.low.lerp_(low, mix)
            self.high.lerp_(high, mix)
            self.observed = True
        scale = float((self.high - self.low).clamp(min=1e-8)) / 255
        x = torch.fake_quantize_per_tensor_affine(x, scale, round(-float(self.low) / scale), 0, 255)
        weight = self.layer.weight
        scales = weight.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-8) / 127
        weight = torch.fake_quantize_per_channel_affine(weight, scales, torch.zeros_like(scales, dtype=torch.int32),
                                                        0, -127, 127)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        layer = self.layer
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def quantization_aware_finetune(model: Student, data: Dataset, seconds: float, cfg: ExportConfig) -> Student:
    """A copy of ``model`` (BatchNorm folded) fine-tuned to keep its float32 outputs under int8 quantisation.

    The layers the recipe quantises compute through :class:`FakeQuantized` while the copy learns to match the
    float32 model's outputs (the task's distillation loss at temperature 1, no labels needed) on the clips of
    ``data``, for ``cfg.qat_epochs`` epochs with Adam at ``cfg.qat_lr``; then it is quantised like any model.
    """
    tuned = fold_batchnorm(exportable(model))
    layers = [(name, m) for name, m in tuned.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.startswith("frontend")]
    keep = ({layers[0][0]} if "first" in cfg.recipe.keep_float else set()) | \
        ({layers[-1][0]} if "last" in cfg.recipe.keep_float else set())
    wrapped = []
    for name, layer in layers:
        if name not in keep:
            parent, _, child = name.rpartition(".")
            holder = tuned.get_submodule(parent) if parent else tuned
            fake = FakeQuantized(layer)
            setattr(holder, child, fake)
            wrapped.append((holder, child, layer, fake))
    task = data.task
    loader = make_loader(ClipDataset(data, data.clips, sample_rate=model.sample_rate, seconds=seconds),
                         batch_size=32, train=True, seed=0)
    optimizer = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=cfg.qat_lr)
    for *_, fake in wrapped:  # only the range observers train: dropout, BatchNorm statistics stay as in inference
        fake.train()
    for _ in range(cfg.qat_epochs):
        for batch in loader:
            with torch.no_grad():
                spectrogram = model.frontend(batch["audio"])
                targets = task.soft_targets(model.forward_spectrogram(spectrogram), 1.0)
            loss = task.soft_loss(tuned.forward_spectrogram(spectrogram), targets, 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for holder, child, layer, _ in wrapped:
        setattr(holder, child, layer)
    return tuned


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ONNX Runtime's quantiser, which advises through the root logger and prints calibration progress."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _open_calibration(cfg: ExportConfig, classes: list[str]) -> Dataset:
    data = open_dataset(cfg.calibration, split=cfg.calibration_split)
    if data.classes != classes:
        raise KdError(f"{cfg.checkpoint} was trained on other classes than {cfg.calibration} has")
    if not data.clips:
        raise KdError(f"{cfg.calibration} has no {cfg.calibration_split} clips to calibrate on")
    return data


def _spread(clips: Sequence[Any], count: int) -> list[Any]:
    """``count`` clips spread evenly over ``clips`` (all of them when there are fewer)."""
    if count >= len(clips):
        return list(clips)
    return [clips[int(i * len(clips) / count)] for i in range(count)]


def _load_clips(data: Dataset, clips: Sequence[Any], sample_rate: int, seconds: float) -> np.ndarray:
    audio = []
    for clip in clips:
        try:
            audio.append(data.load_audio(clip, sample_rate, seconds))
        except AudioError as e:
            warnings.warn(f"skipping clip {clip.id}: {e}", stacklevel=2)
    if not audio:
        raise KdError("none of the calibration clips could be decoded")
    return np.stack(audio).astype(np.float32)


def _spectrogram_batches(model: Student, data: Dataset, cfg: ExportConfig, seconds: float) -> Iterator[np.ndarray]:
    """Spectrograms of the calibration clips, one clip a batch (ONNX Runtime's histogram calibrators stack the
    batches they see, so they must all have one shape)."""
    clips = _spread(data.clips, cfg.calibration_clips)
    for start in range(0, len(clips), cfg.batch_size):
        audio = _load_clips(data, clips[start:start + cfg.batch_size], model.sample_rate, seconds)
        with torch.inference_mode():
            yield from model.frontend(torch.from_numpy(audio)).numpy()[:, None]


def _quant_report(cfg: ExportConfig, model: Student, meta: dict[str, Any], quantized: onnx.ModelProto,
                  seconds: float, method: str) -> QuantReport:
    calibration_clips = min(cfg.calibration_clips, len(open_dataset(cfg.calibration, split=cfg.calibration_split)))
    data = open_dataset(cfg.calibration, split=cfg.check_split)
    clips = _spread(data.labelled_clips, cfg.check_clips)
    if not clips:
        raise KdError(f"{cfg.calibration} has no labelled {cfg.check_split} clips to check the int8 model on")
    reference = evaluate_predictor(TorchPredictor(model, meta, torch.device("cpu"), seconds), data, clips,
                                   cfg.batch_size)
    int8 = evaluate_predictor(OnnxStudent(quantized.SerializeToString(), device="cpu", name="the int8 model"), data,
                              clips, cfg.batch_size, seconds=seconds)
    metric = data.task.primary_metric
    return QuantReport(cfg.recipe.describe(), method, metric, float(reference[metric]), float(int8[metric]),
                       float(reference[metric] - int8[metric]), len(clips), calibration_clips)
