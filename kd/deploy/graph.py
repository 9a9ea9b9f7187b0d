"""The ONNX graphs of ``kd export``: torch's dynamo export of a student's export form (``Student.exportable()``)
with readable axis names (:func:`to_onnx`), the frontend and network joined into one file (:func:`assemble`), its
metadata and atomic write, the parity checks against PyTorch, and the input-length rules a deployer reads from the
file. It knows no student family: modules own their export forms (:mod:`layers.export_forms`).
"""
from __future__ import annotations

import copy
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import onnxscript.rewriter.onnx_fusions
import torch
from torch import nn

import kd
from kd_errors import KdError
from students import Student

__all__ = ["FOLD_LIMIT", "OPSET", "PARITY_TOLERANCE", "Network", "assemble", "checked_parity", "input_rules",
           "min_frames", "min_samples", "probe_noise", "run_graph", "to_onnx", "with_metadata", "without_metadata",
           "write_atomically"]

OPSET = 18
PARITY_TOLERANCE = 1e-4
FOLD_LIMIT = 4096  # elements: the exporter stores a larger computed constant only where it replaces as many


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
    """``module`` as an ONNX graph with one input and one output, without the exporter's per-node provenance.

    The ``input_axes`` stay symbolic where the module allows it; they and the ``output_axes`` get readable names
    (``batch``, ``samples``, ...) in place of the exporter's ``s16``-style symbols, wherever those appear. The
    exporter's optimiser runs as torch runs it, except that a table the module computes from smaller constants (the
    frontend's DFT basis) stays computed in the file when it is larger than :data:`FOLD_LIMIT` elements: ONNX
    Runtime folds it when it loads the file, and the file stays small (CP-Mobile's basis is 1.6 MB).
    """
    shapes = ({axis: torch.export.Dim.AUTO for axis in input_axes},)
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(module.eval(), (example,), None, input_names=[input_name],
                                    output_names=[output_name], dynamic_shapes=shapes, opset_version=OPSET,
                                    dynamo=True, external_data=False, verbose=False, optimize=False)
        onnxscript.optimizer.optimize_ir(program.model, output_size_limit=FOLD_LIMIT)
        onnxscript.rewriter.onnx_fusions.fuse(program.model)
    proto = program.model_proto
    for index, node in enumerate(proto.graph.node):  # the quantiser addresses nodes by name
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        del node.metadata_props[:]  # the exporter's provenance (stack traces, module paths): a quarter of a small file
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
