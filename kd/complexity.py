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
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from kd_errors import KdError
from students import create_student, student_cfg

__all__ = ["Complexity", "complexity", "count_macs", "published_check"]

_RNN = (nn.GRU, nn.LSTM, nn.RNN)


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
    return Complexity(
        name=name, seconds=seconds, input_shape=shape, params=int(params), macs=int(sum(by_kind.values())),
        precision_bits=precision_bits, param_bytes=int(math.ceil(params * precision_bits / 8)),
        macs_by_kind=dict(by_kind), published=cfg.get("published"),
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
