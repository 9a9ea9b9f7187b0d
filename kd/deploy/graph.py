"""The ONNX graphs of ``kd export``: student modules rewritten for export with the same weights
(:class:`ExportDynamicConv`, :class:`ExportDyReLU`, :class:`ExportFrontend`), torch's dynamo export with readable
axis names (:func:`to_onnx`), the frontend and network joined into one file (:func:`assemble`), its metadata and
atomic write, the parity checks against PyTorch, and the input-length rules a deployer reads from the file.
"""
from __future__ import annotations

import copy
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

import kd
from kd_errors import KdError
from layers import MelSTFT
from students import Student
from students.dymn import DynamicConv, DyReLU

__all__ = ["OPSET", "PARITY_TOLERANCE", "ExportDyReLU", "ExportDynamicConv", "ExportFrontend", "Network", "assemble",
           "checked_parity", "exact_frontend", "exportable", "frontend_settings", "input_rules", "min_frames",
           "min_samples", "probe_noise", "run_graph", "to_onnx", "with_metadata", "without_metadata",
           "write_atomically"]

OPSET = 18
PARITY_TOLERANCE = 1e-4


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


class Network(nn.Module):
    """The student without its frontend: spectrogram in, logits out."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.student.forward_spectrogram(spectrogram)


# --- graphs --------------------------------------------------------------------------------------------------------


def probe_noise(batch: int, samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(batch, samples, generator=generator)


def to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str,
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


def assemble(frontend: onnx.ModelProto | None, network: onnx.ModelProto) -> onnx.ModelProto:
    """The network alone, or the frontend (names prefixed ``frontend/``) feeding it."""
    if frontend is None:
        return copy.deepcopy(network)
    prefixed = onnx.compose.add_prefix(frontend, "frontend/", rename_inputs=False, rename_outputs=False)
    merged = onnx.compose.merge_models(prefixed, without_metadata(network), io_map=[("spectrogram", "spectrogram")])
    return merged


def without_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    del model.metadata_props[:]
    return model


def with_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    model = without_metadata(model)
    onnx.helper.set_model_props(model, metadata)
    model.producer_name, model.producer_version = "kd", kd.__version__
    model.doc_string = (f"{metadata['student']} ({metadata['task']}), exported by kd export: input "
                        f"{metadata['input']} {metadata['input_shape']}, output {metadata['output_shape']}")
    return model


def write_atomically(model: onnx.ModelProto, out: str | os.PathLike) -> int:
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


def run_graph(graph: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def checked_parity(what: str, got: np.ndarray, expected: np.ndarray, tolerance: float) -> float:
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
