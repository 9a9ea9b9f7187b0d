"""int8 for ``kd export``: ONNX Runtime's static quantisation of the network by a :class:`QuantRecipe`, calibrated
on clips of a dataset (:func:`quantize_network`), quantisation-aware fine-tuning when that loses too much
(:func:`quantization_aware_finetune`, on BatchNorm folded into the convolutions), and the int8 file's metric against
the float32 checkpoint (:func:`quant_report`), measured by the predictors of ``kd eval``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kd.data import AudioError, Dataset, open_dataset
from kd.deploy.config import CALIBRATORS, LAYER_OPS, ExportConfig, QuantRecipe, QuantReport
from kd.deploy.graph import probe_noise, without_metadata
from kd.deploy.onnx_runtime import OnnxStudent, median_ms
from kd.deploy.predict import TorchPredictor, evaluate_predictor
from kd.train.loaders import ClipDataset, make_loader
from kd_errors import KdError
from students import Student

__all__ = ["FakeQuantized", "constant_products_as_scales", "fold_batchnorm", "in_int8_operators", "latencies",
           "load_clips", "open_calibration", "quant_report", "quantization_aware_finetune", "quantize_network",
           "spectrogram_batches", "spread"]


# --- int8 ----------------------------------------------------------------------------------------------------------


class _Batches(CalibrationDataReader):
    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"spectrogram": batch}


def quantize_network(network: onnx.ModelProto, spectrograms: Iterator[np.ndarray], recipe: QuantRecipe) -> onnx.ModelProto:
    """The network (spectrogram input) statically quantised to int8 by ``recipe``, calibrated on ``spectrograms``.

    Quantised are the layers with constant weights and, with ``recipe.elementwise``, every other operator ONNX
    Runtime has int8 kernels for; products of two computed tensors stay float32.
    """
    constants = {t.name for t in network.graph.initializer} | \
        {n.output[0] for n in network.graph.node if n.op_type == "Constant"}
    products = [n for n in network.graph.node if n.op_type in LAYER_OPS]
    layers = [n.name for n in products if n.input[1] in constants]
    keep = set(layers[:1] if "first" in recipe.keep_float else []) | \
        set(layers[-1:] if "last" in recipe.keep_float else []) | \
        {n.name for n in products if n.input[1] not in constants}
    selection = ({"nodes_to_exclude": sorted(keep)} if recipe.elementwise else
                 {"nodes_to_quantize": [name for name in layers if name not in keep],
                  "op_types_to_quantize": list(LAYER_OPS)})
    if recipe.elementwise:
        network = in_int8_operators(network)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(without_metadata(network), source)
        quantize_static(
            str(source), str(target), _Batches(spectrograms), quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
            calibrate_method=CALIBRATORS[recipe.calibrate_method], **selection,
        )
        return constant_products_as_scales(onnx.load(target))


def in_int8_operators(network: onnx.ModelProto) -> onnx.ModelProto:
    """``network`` computing the same function in operators ONNX Runtime has int8 kernels for, where it can.

    ``HardSwish(x)`` becomes ``x * clip(x + 3, 0, 6) * (1 / 6)`` (an addition, a clip and two products, all
    quantised; once quantised, the product by ``1 / 6`` becomes a scale, :func:`constant_products_as_scales`) and a
    ``ReduceMean`` over both axes of a 4-D tensor that keeps them becomes ``GlobalAveragePool``; in int8 both would
    otherwise be float32 islands (dequantise, compute, quantise again) between quantised layers.
    """
    network = copy.deepcopy(network)
    graph = network.graph
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    values.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.value_info, *graph.input)}
    for name, value in (("kd_int8_three", 3.0), ("kd_int8_zero", 0.0), ("kd_int8_six", 6.0), ("kd_int8_sixth", 1 / 6)):
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, dtype=np.float32), name))
    nodes = []
    for node in graph.node:
        if node.op_type == "HardSwish":
            x, out, base = node.input[0], node.output[0], node.name or node.output[0]
            nodes += [onnx.helper.make_node("Add", [x, "kd_int8_three"], [f"{out}/shifted"], f"{base}/add"),
                      onnx.helper.make_node("Clip", [f"{out}/shifted", "kd_int8_zero", "kd_int8_six"],
                                            [f"{out}/clipped"], f"{base}/clip"),
                      onnx.helper.make_node("Mul", [x, f"{out}/clipped"], [f"{out}/scaled"], f"{base}/mul"),
                      onnx.helper.make_node("Mul", [f"{out}/scaled", "kd_int8_sixth"], [out], f"{base}/sixth")]
        elif node.op_type == "ReduceMean" and _pools_both_axes(node, values, ranks):
            nodes.append(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), node.name))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return network


def constant_products_as_scales(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (QDQ) with each product by a positive scalar constant between two quantisations folded into the
    first one's scale: ``Q(x, s1) -> DQ -> Mul(c) -> Q(s2)`` becomes ``Q(x, s2 / c)``, the integers the next
    operator reads unchanged but for one rounding less, and one int8 operator less (HardSwish's ``1 / 6``: 21
    quantised products in mn04).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed: set[int] = set()
    for mul in [n for n in graph.node if n.op_type == "Mul"]:
        dq, constant = (producer.get(name) for name in mul.input)
        quantize = consumers.get(mul.output[0], [None])[0]
        factor = _dequantized_scalar(constant, values)
        if not (dq is not None and dq.op_type == "DequantizeLinear" and factor is not None and factor > 0
                and quantize is not None and quantize.op_type == "QuantizeLinear"
                and len(consumers[mul.output[0]]) == 1 and len(consumers[dq.output[0]]) == 1):
            continue
        first = producer.get(dq.input[0])
        if first is None or first.op_type != "QuantizeLinear" or len(consumers[first.output[0]]) != 1:
            continue
        scale = f"{quantize.input[1]}/over_{mul.name}"
        graph.initializer.append(onnx.numpy_helper.from_array(
            (values[quantize.input[1]] / np.float32(factor)).astype(np.float32), scale))
        first.input[1:] = [scale, quantize.input[2]]
        first.output[0] = quantize.output[0]
        removed |= {id(dq), id(mul), id(quantize)}
    kept = [n for n in graph.node if id(n) not in removed]
    used = {name for n in kept for name in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "DequantizeLinear" or n.output[0] in used]  # constants no longer read
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _dequantized_scalar(node: onnx.NodeProto | None, values: dict[str, np.ndarray]) -> float | None:
    """The value of a ``DequantizeLinear`` of a constant scalar, or None."""
    if node is None or node.op_type != "DequantizeLinear" or not all(name in values for name in node.input):
        return None
    quantized, scale, zero = (values[name] for name in node.input)
    if quantized.size != 1:
        return None
    return float((quantized.astype(np.float64) - zero.astype(np.float64)) * scale.astype(np.float64))


def _pools_both_axes(node: onnx.NodeProto, values: dict[str, np.ndarray], ranks: dict[str, int]) -> bool:
    keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    if keepdims != 1 or len(node.input) < 2 or node.input[1] not in values or ranks.get(node.input[0]) != 4:
        return False
    return sorted(int(a) % 4 for a in np.atleast_1d(values[node.input[1]])) == [2, 3]


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
    tuned = fold_batchnorm(model.exportable())
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


def open_calibration(cfg: ExportConfig, classes: list[str]) -> Dataset:
    data = open_dataset(cfg.calibration, split=cfg.calibration_split)
    if data.classes != classes:
        raise KdError(f"{cfg.checkpoint} was trained on other classes than {cfg.calibration} has")
    if not data.clips:
        raise KdError(f"{cfg.calibration} has no {cfg.calibration_split} clips to calibrate on")
    return data


def spread(clips: Sequence[Any], count: int) -> list[Any]:
    """``count`` clips spread evenly over ``clips`` (all of them when there are fewer)."""
    if count >= len(clips):
        return list(clips)
    return [clips[int(i * len(clips) / count)] for i in range(count)]


def load_clips(data: Dataset, clips: Sequence[Any], sample_rate: int, seconds: float) -> np.ndarray:
    audio = []
    for clip in clips:
        try:
            audio.append(data.load_audio(clip, sample_rate, seconds))
        except AudioError as e:
            warnings.warn(f"skipping clip {clip.id}: {e}", stacklevel=2)
    if not audio:
        raise KdError("none of the calibration clips could be decoded")
    return np.stack(audio).astype(np.float32)


def spectrogram_batches(model: Student, data: Dataset, cfg: ExportConfig, seconds: float) -> Iterator[np.ndarray]:
    """Spectrograms of the calibration clips, one clip a batch (ONNX Runtime's histogram calibrators stack the
    batches they see, so they must all have one shape)."""
    clips = spread(data.clips, cfg.calibration_clips)
    for start in range(0, len(clips), cfg.batch_size):
        audio = load_clips(data, clips[start:start + cfg.batch_size], model.sample_rate, seconds)
        with torch.inference_mode():
            yield from model.frontend(torch.from_numpy(audio)).numpy()[:, None]


def quant_report(cfg: ExportConfig, model: Student, meta: dict[str, Any], quantized: onnx.ModelProto,
                  seconds: float, method: str) -> QuantReport:
    calibration_clips = min(cfg.calibration_clips, len(open_dataset(cfg.calibration, split=cfg.calibration_split)))
    data = open_dataset(cfg.calibration, split=cfg.check_split)
    clips = spread(data.labelled_clips, cfg.check_clips)
    if not clips:
        raise KdError(f"{cfg.calibration} has no labelled {cfg.check_split} clips to check the int8 model on")
    reference = evaluate_predictor(TorchPredictor(model, meta, torch.device("cpu"), seconds), data, clips,
                                   cfg.batch_size)
    int8 = evaluate_predictor(OnnxStudent(quantized.SerializeToString(), device="cpu", name="the int8 model"), data,
                              clips, cfg.batch_size, seconds=seconds)
    metric = data.task.primary_metric
    return QuantReport(cfg.recipe.describe(), method, metric, float(reference[metric]), float(int8[metric]),
                       float(reference[metric] - int8[metric]), len(clips), calibration_clips)


def latencies(float32: onnx.ModelProto, int8: onnx.ModelProto, samples: int) -> dict[str, float]:
    """``{"float32_ms", "int8_ms"}``: one clip of ``samples`` through each whole file on one thread, timed in turns
    (see :class:`kd.deploy.config.QuantReport`)."""
    clip = probe_noise(1, samples).numpy()
    runs = {}
    for kind, model in (("float32", float32), ("int8", int8)):
        student = OnnxStudent(model.SerializeToString(), device="cpu", threads=1, name=f"the {kind} model")
        feed = {student.input_name: student.model_input(clip)}  # the waveform, or a frontend-less file's spectrogram
        runs[f"{kind}_ms"] = lambda session=student.session, feed=feed: session.run(None, feed)
    return median_ms(runs, repeats=20)
