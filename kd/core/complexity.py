"""Parameters and multiply-accumulates of one student inference, counted the way the papers count them.

What is counted (one clip, batch size 1, eval mode, the frontend excluded — the field reports the network
on the spectrogram, and the frontend has no parameters):

* **parameters**: every trainable and frozen ``nn.Parameter`` of the model outside its frontend (BatchNorm
  running statistics are buffers and not counted), as EfficientAT's tables and the DCASE rules do;
* **convolutions** (``Conv1d``/``Conv2d``): ``weight.numel() * output positions`` (+ one per output for a bias):
  the per-kernel cost ``k_h * k_w * C_in / groups`` for every output value — the rule of EfficientAT's
  ``count_macs`` and of torchinfo, which the DCASE complexity script (NeSsi) is built on;
* **linear layers**: ``(in * out + out) * positions``; positions are the rows the layer is applied to (frames of a
  sequence model, not just the batch: torchinfo multiplies only by the batch size and under-counts them);
* **recurrent layers** (``GRU``/``LSTM``/``RNN``): every weight and bias is used once per time step and
  direction, so ``frames * numel(parameters)``;
* **modules that compute with tensors that are not their own parameters** report their cost through a
  ``count_macs(inputs, output)`` method: dynamic convolution (the per-example kernel mixing plus the convolution
  with the mixed kernel — torchinfo would multiply the K stacked kernels by the output size, and EfficientAT's
  hook skips ``F.conv2d`` altogether) and self-attention (``Q K^T`` and ``A V``: ``2 * heads * T^2 * head_dim``).

Not counted, as in the papers: BatchNorm (folded into the preceding convolution for inference), activations,
pooling, residual additions, element-wise gating and the attention softmax.

``complexity(name_or_model, seconds)`` returns a JSON-ready :class:`Complexity` (``params`` and ``macs`` plain ints);
``kd complexity STUDENT --seconds S --json`` prints ``Complexity.to_dict()``.

**Parameter memory** is reported by data type (float32, float16, int8) and checked against the DCASE'23 Task 1
limits (:data:`DCASE23_LIMITS`: 128 KB of parameters, 1 KB = 1024 bytes, and 30 M MACs per second of audio).
For a file written by ``kd export`` (:func:`exported_complexity`) the parameters are what the network part of the
file stores: every constant tensor outside the frontend subgraph, except int64 shape constants and the scales and
zero points of quantisation (reported apart, as are the frontend's window and mel banks). They are counted two
ways: as stored, by data type; and by the challenge's rule, every parameter at the precision of its layer
(the rule of the challenge's complexity script and of the submissions it ranked): an int8 layer's bias counts as
int8 although ONNX keeps it as an int32 accumulator constant, a layer kept in float32 counts 4 bytes a parameter.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kd_errors import KdError
from students import create_student, student_cfg

__all__ = ["DCASE23_LIMITS", "Complexity", "ExportedComplexity", "complexity", "count_macs", "dcase23_check",
           "exported_complexity", "memory_by_dtype", "published_check"]

_RNN = (nn.GRU, nn.LSTM, nn.RNN)
DCASE23_LIMITS = {"param_bytes": 128 * 1024, "macs_per_second": 30_000_000}
DTYPE_BYTES = {"float32": 4, "float16": 2, "int8": 1}


def memory_by_dtype(params: int) -> dict[str, int]:
    """Bytes ``params`` parameters take as float32, float16 and int8."""
    return {dtype: params * size for dtype, size in DTYPE_BYTES.items()}


def dcase23_check(param_bytes: int, macs: int, seconds: float) -> dict[str, Any]:
    """The DCASE'23 Task 1 limits: parameter memory and MACs per second of audio, each with its limit and verdict."""
    per_second = macs / seconds
    return {"param_bytes": int(param_bytes), "param_bytes_limit": DCASE23_LIMITS["param_bytes"],
            "param_bytes_ok": param_bytes <= DCASE23_LIMITS["param_bytes"],
            "macs_per_second": per_second, "macs_per_second_limit": DCASE23_LIMITS["macs_per_second"],
            "macs_per_second_ok": per_second <= DCASE23_LIMITS["macs_per_second"],
            "ok": param_bytes <= DCASE23_LIMITS["param_bytes"] and per_second <= DCASE23_LIMITS["macs_per_second"]}


@dataclass(frozen=True)
class Complexity:
    """Cost of one inference of ``seconds`` of audio (see the module docstring for what is counted)."""

    name: str | None
    seconds: float
    input_shape: tuple[int, ...]
    params: int
    macs: int
    precision_bits: int
    param_bytes: int
    macs_by_kind: dict[str, int] = field(default_factory=dict)
    published: dict[str, Any] | None = None
    param_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    dcase23: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (``params``/``macs`` ints), for ``--json`` output and tracking."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out


def complexity(
    model_or_name: nn.Module | str,
    seconds: float | None = None,
    num_classes: int | None = None,
    precision_bits: int = 32,
) -> Complexity:
    """Parameters, MACs and parameter memory of one inference on ``seconds`` of audio.

    Args:
        model_or_name: a student (anything with ``frontend``, ``forward_spectrogram`` and ``spectrogram_shape``)
            or a registered student name.
        seconds: audio length; default: the input length the paper reports (``input_seconds`` of the cfg).
        num_classes: classes of the student built from a name; default: the cfg's (e.g. 527 for AudioSet).
        precision_bits: bits per parameter for ``param_bytes`` (32 float, 16 half, 8 for quantised DCASE models).
    """
    model, name, cfg = _resolve(model_or_name, num_classes)
    seconds = float(seconds if seconds is not None else cfg.get("input_seconds", 10.0))
    if seconds <= 0:
        raise KdError(f"seconds must be positive, got {seconds}")
    if precision_bits <= 0:
        raise KdError(f"precision_bits must be positive, got {precision_bits}")
    shape = (1, *model.spectrogram_shape(seconds))
    frontend_params = {id(p) for p in model.frontend.parameters()}
    params = sum(p.numel() for p in model.parameters() if id(p) not in frontend_params)
    by_kind = count_macs(model, shape)
    macs, param_bytes = int(sum(by_kind.values())), math.ceil(params * precision_bits / 8)
    return Complexity(
        name=name, seconds=seconds, input_shape=shape, params=int(params), macs=macs,
        precision_bits=precision_bits, param_bytes=param_bytes, macs_by_kind=dict(by_kind),
        published=cfg.get("published"), param_bytes_by_dtype=memory_by_dtype(int(params)),
        dcase23=dcase23_check(param_bytes, macs, seconds),
    )


@dataclass(frozen=True)
class ExportedComplexity:
    """Parameter memory and MACs of a file written by ``kd export`` (see the module docstring for what counts).

    Attributes:
        params: parameter values in the network part of the file (BatchNorm folded into the convolutions).
        stored_bytes: those parameters' bytes as stored, by data type.
        param_bytes: their bytes by the challenge's rule (each parameter at its layer's precision).
        quantization_bytes: scales and zero points of int8 quantisation.
        frontend_bytes: constants of the frontend subgraph (window, mel banks), not parameters.
        macs: one inference of ``seconds`` of audio, counted on the source architecture (:func:`complexity`).
    """

    path: str
    student: str
    seconds: float
    quantization: str
    params: int
    stored_bytes: dict[str, int]
    param_bytes: int
    quantization_bytes: int
    frontend_bytes: int
    file_bytes: int
    macs: int
    dcase23: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exported_complexity(path: str | os.PathLike, seconds: float | None = None) -> ExportedComplexity:
    """Parameter memory by data type, MACs and the DCASE'23 verdict of a ``kd export`` file.

    Args:
        seconds: audio length of one inference (default: the clip length the file was exported for).
    """
    import onnx  # the optional [export] extra; only ONNX files need it

    if not Path(path).is_file():
        raise KdError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path))
    except (onnx.onnx_cpp2py_export.checker.ValidationError, onnx.message.DecodeError, ValueError) as e:
        raise KdError(f"{path} is not a readable ONNX model: {type(e).__name__}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if "student" not in meta or "num_classes" not in meta:
        raise KdError(f"{path} is not a model written by kd export (no kd metadata)")
    seconds = float(seconds if seconds is not None else meta["clip_seconds"])
    tensors = {t.name: t for t in model.graph.initializer}
    tensors.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                    if a.name == "value"})
    uses: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            uses[name].add((node.op_type, index))
    stored: dict[str, int] = defaultdict(int)
    params = param_bytes = quant_bytes = frontend_bytes = 0
    for name, tensor in tensors.items():
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        numel = math.prod(tensor.dims)
        if name.startswith("frontend/"):
            frontend_bytes += numel * dtype.itemsize
        elif any(op in ("QuantizeLinear", "DequantizeLinear") and i > 0 for op, i in uses[name]):
            quant_bytes += numel * dtype.itemsize
        elif dtype != np.int64:
            params += numel
            stored[dtype.name] += numel * dtype.itemsize
            quantized_bias = dtype == np.int32 and ("DequantizeLinear", 0) in uses[name]
            param_bytes += numel * (1 if quantized_bias else dtype.itemsize)
    macs = complexity(meta["student"], seconds=seconds, num_classes=int(meta["num_classes"])).macs
    return ExportedComplexity(
        path=str(path), student=meta["student"], seconds=seconds, quantization=meta.get("quantization", "none"),
        params=params, stored_bytes=dict(stored), param_bytes=param_bytes, quantization_bytes=quant_bytes,
        frontend_bytes=frontend_bytes, file_bytes=Path(path).stat().st_size, macs=macs,
        dcase23=dcase23_check(param_bytes, macs, seconds),
    )


def count_macs(model: nn.Module, spectrogram_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs of ``model.forward_spectrogram`` on a zero spectrogram of ``spectrogram_shape``, by layer kind."""
    totals: dict[str, int] = defaultdict(int)

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        kind, macs = _module_macs(module, inputs, output)
        totals[kind] += macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if _is_counted(m)]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.forward_spectrogram(torch.zeros(spectrogram_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return dict(totals)


def published_check(result: Complexity) -> dict[str, tuple[float, float, bool]]:
    """Measured vs published figure for each published number: ``{key: (measured, published, matches)}``.

    A figure matches when it lies within one unit of the last published digit (``"0.54"`` GMACs: 0.53..0.55):
    the tables give 2-4 significant digits and do not all round the same way (EfficientAT lists mn04's
    983 599 parameters as 0.983 M but mn10's 4 876 831 as 4.88 M), so no tighter tolerance is justified.
    """
    pub = result.published or {}
    if pub.get("seconds") is not None and float(pub["seconds"]) != result.seconds:
        raise KdError(f"published figures are for {pub['seconds']} s, the count is for {result.seconds} s")
    measured = {"params_m": result.params / 1e6, "params_k": result.params / 1e3, "gmacs": result.macs / 1e9,
                "mmacs": result.macs / 1e6}
    out = {}
    for key, text in pub.items():
        if key not in measured:
            continue
        decimals = len(text.split(".")[1]) if "." in text else 0
        unit = 10.0 ** -decimals
        value = measured[key]
        out[key] = (value, float(text), abs(value - float(text)) < unit)
    return out


def _resolve(model_or_name: nn.Module | str, num_classes: int | None) -> tuple[nn.Module, str | None, dict]:
    if isinstance(model_or_name, str):
        cfg = student_cfg(model_or_name)
        model = create_student(model_or_name, num_classes or cfg.get("num_classes", 527))
        return model, model_or_name, cfg
    model = model_or_name
    for attr in ("frontend", "forward_spectrogram", "spectrogram_shape"):
        if not hasattr(model, attr):
            raise KdError(f"{type(model).__name__} is not a student: it has no {attr!r}")
    return model, getattr(model, "student_name", None), dict(getattr(model, "cfg", {}) or {})


def _is_counted(m: nn.Module) -> bool:
    return hasattr(m, "count_macs") or isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, *_RNN))


def _module_macs(module: nn.Module, inputs: tuple, output: Any) -> tuple[str, int]:
    if hasattr(module, "count_macs"):
        return type(module).__name__, int(module.count_macs(inputs, output))
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        positions = math.prod(output.shape[2:]) * output.shape[0]
        bias = module.bias.numel() if module.bias is not None else 0
        return "conv", (module.weight.numel() + bias) * positions
    if isinstance(module, nn.Linear):
        positions = output.numel() // output.shape[-1]
        bias = module.bias.numel() if module.bias is not None else 0
        return "linear", (module.weight.numel() + bias) * positions
    # recurrent layer: output is (sequence, state); every parameter is used once per step and direction
    sequence = output[0]
    steps = sequence.shape[1] if module.batch_first else sequence.shape[0]
    batch = sequence.shape[0] if module.batch_first else sequence.shape[1]
    return "recurrent", steps * batch * sum(p.numel() for p in module.parameters())
