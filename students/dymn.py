"""EfficientAT dynamic MobileNets (``dymn04``, ``dymn10``, ``dymn20``).

Schmid, Koutini, Widmer, "Dynamic Convolutional Neural Networks as Efficient Pre-trained Audio Models",
IEEE/ACM TASLP 2024 (github.com/fschmid56/EfficientAT, models/dymn). The MobileNetV3-Large block table of
:mod:`students.mobilenet`, every block replaced by a dynamic block:

* a **context generator** pools the block input along time and along frequency, transforms both sequences with a
  shared 1x1 conv (``joint_conv``/``joint_norm``, Hardswish) and yields a context vector (their mean) plus a
  frequency and a time sequence for coordinate attention (``conv_f``/``conv_t``, average-pooled to the block's
  stride);
* **dynamic convolutions** (expand, depthwise, project): K = 4 kernels mixed per example by
  ``softmax(Linear(context) / temperature)``;
* **dynamic ReLU** (variant B, M = 2): per-channel piecewise-linear activation whose slopes and intercepts are
  predicted from the context, after the depthwise conv;
* **coordinate attention**: the depthwise output times ``sigmoid(g_f) * sigmoid(g_t)``.

Names follow the released checkpoints (``in_c``, ``layers.N.{exp,depth,proj}_{conv,norm}``, ``depth_act``,
``context_gen``, ``out_c``, ``classifier.{2,5}``); the dynamic kernels are stored as ``[1, 1, K, numel]``.

Export forms (``exportable()``, see :mod:`layers.export_forms`): the dynamic convolution folds the batch into its
groups, a group count ONNX cannot express; :class:`ExportDynamicConv` computes the same function with a fixed
graph and :class:`ExportDyReLU` the dynamic ReLU with operations ONNX Runtime runs fast. int8 is refused
(``int8_refusal``): the per-example kernels are products of two computed tensors, which stay float32 between
quantised layers, and the file lost 9 points of mAP on dymn04 while running 3x slower than float32.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from layers import MelSTFT
from layers.blocks import ConvNormAct, make_divisible

from ._base import Student, init_mobile_weights, strip_prefixes
from ._registry import register_student
from .mobilenet import EFFICIENTAT_NORM, MNV3_LARGE, Pair, as_pair, clip_block_strides, mlp_head, scaled

__all__ = ["DyMN", "DyReLU", "DynamicBlock", "DynamicConv", "ExportDyReLU", "ExportDynamicConv", "checkpoint_filter_fn",
           "dymn_features"]

INT8_REFUSAL = ("DyMN's per-example kernels do not quantise (dymn04 lost 9 points of mAP in int8, running 3x slower "
                "than float32); export it in float32")


class DynamicConv(nn.Module):
    """Convolution whose kernel is a per-example softmax mixture of ``k`` kernels (Chen et al., 2020).

    ``weight`` keeps the released layout ``[1, 1, k, out * in / groups * kh * kw]``; ``residuals`` maps the context
    vector to the ``k`` mixing logits. The mixed kernels of a batch are applied as one grouped convolution.
    """

    int8_refusal = INT8_REFUSAL

    def __init__(
        self, in_channels: int, out_channels: int, context_dim: int, kernel_size: int = 1, stride: Pair = 1,
        groups: int = 1, k: int = 4,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups, self.k = in_channels, out_channels, groups, k
        self.kernel_size, self.stride = kernel_size, as_pair(stride)
        self.padding = (kernel_size - 1) // 2
        self.temperature = 1.0
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        kernels = torch.empty(k, out_channels, in_channels // groups, kernel_size, kernel_size)
        for kernel in kernels:
            nn.init.kaiming_normal_(kernel, mode="fan_out")
        self.weight = nn.Parameter(kernels.reshape(1, 1, k, -1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, f, t = x.shape
        attention = torch.softmax(self.residuals(context.reshape(b, -1)) / self.temperature, dim=-1)
        kernels = (attention @ self.weight[0, 0]).reshape(
            b * self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size
        )
        out = F.conv2d(x.reshape(1, b * self.in_channels, f, t), kernels, stride=self.stride, padding=self.padding,
                       groups=self.groups * b)
        return out.reshape(b, self.out_channels, out.shape[-2], out.shape[-1])

    def exportable(self) -> ExportDynamicConv:
        return ExportDynamicConv(self)

    def count_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        """Kernel mixing (``k`` MACs per kernel weight) plus the convolution with the mixed kernel."""
        per_kernel = self.weight.shape[-1]
        positions = output.shape[-2] * output.shape[-1]
        return output.shape[0] * (self.k * per_kernel + per_kernel * positions)


class DyReLU(nn.Module):
    """Dynamic ReLU-B (Chen et al., 2020): ``max_m(a_m(x) * x + b_m(x))`` with per-channel coefficients.

    ``lambdas`` and ``init_v`` (scales and offsets of the predicted coefficients) are persistent buffers, as in the
    released checkpoints.
    """

    def __init__(self, channels: int, context_dim: int, m: int = 2) -> None:
        super().__init__()
        self.channels, self.m = channels, m
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * m * channels))
        self.register_buffer("lambdas", torch.tensor([1.0] * m + [0.5] * m))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * m - 1)))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        theta = 2 * torch.sigmoid(self.coef_net(context.reshape(x.shape[0], -1))) - 1
        coefs = theta.reshape(-1, self.channels, 1, 1, 2 * self.m) * self.lambdas + self.init_v
        mapped = x.unsqueeze(-1) * coefs[..., : self.m] + coefs[..., self.m:]
        return mapped.amax(dim=-1)

    def exportable(self) -> ExportDyReLU:
        return ExportDyReLU(self)


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


class ContextGen(nn.Module):
    """Context vector for dynamic conv/ReLU and frequency/time sequences for coordinate attention."""

    def __init__(self, context_dim: int, in_channels: int, expanded: int, stride: Pair = 1) -> None:
        super().__init__()
        sf, st = as_pair(stride)
        self.joint_conv = nn.Conv2d(in_channels, context_dim, 1, bias=False)
        self.joint_norm = EFFICIENTAT_NORM(context_dim)
        self.joint_act = nn.Hardswish()
        self.conv_f = nn.Conv2d(context_dim, expanded, 1)
        self.conv_t = nn.Conv2d(context_dim, expanded, 1)
        self.pool_f = nn.AvgPool2d((3, 1), (sf, 1), (1, 0)) if sf > 1 else nn.Identity()
        self.pool_t = nn.AvgPool2d((1, 3), (1, st), (0, 1)) if st > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        freq = x.mean(dim=3, keepdim=True)  # [B, C, F, 1]
        time = x.mean(dim=2, keepdim=True).transpose(2, 3)  # [B, C, T, 1]
        joint = self.joint_act(self.joint_norm(self.joint_conv(torch.cat([freq, time], dim=2))))
        h_f, h_t = torch.split(joint, [freq.shape[2], time.shape[2]], dim=2)
        context = joint.mean(dim=2, keepdim=True)
        g_f = self.conv_f(self.pool_f(h_f))
        g_t = self.conv_t(self.pool_t(h_t.transpose(2, 3)))
        return context, g_f, g_t


class DynamicBlock(nn.Module):
    """DyMN's inverted residual block (see module docstring); ``stride`` may differ per axis (frame-wise DyMN)."""

    def __init__(
        self, in_channels: int, kernel: int, expanded: int, out_channels: int, stride: Pair,
        act_layer: type[nn.Module], width_mult: float, context_ratio: int = 4, min_context: int = 32,
        max_context: int = 128, dyconv_k: int = 4, dyrelu_m: int = 2,
    ) -> None:
        super().__init__()
        stride = as_pair(stride)
        self.use_residual = stride == (1, 1) and in_channels == out_channels
        context_dim = min(max(make_divisible(expanded // context_ratio, 8), make_divisible(min_context * width_mult, 8)),
                          make_divisible(max_context * width_mult, 8))
        if expanded != in_channels:
            self.exp_conv = DynamicConv(in_channels, expanded, context_dim, 1, k=dyconv_k)
            self.exp_norm = EFFICIENTAT_NORM(expanded)
            self.exp_act = act_layer()
        else:
            self.exp_conv = None
        self.depth_conv = DynamicConv(expanded, expanded, context_dim, kernel, stride, groups=expanded, k=dyconv_k)
        self.depth_norm = EFFICIENTAT_NORM(expanded)
        self.depth_act = DyReLU(expanded, context_dim, dyrelu_m)
        self.proj_conv = DynamicConv(expanded, out_channels, context_dim, 1, k=dyconv_k)
        self.proj_norm = EFFICIENTAT_NORM(out_channels)
        self.context_gen = ContextGen(context_dim, in_channels, expanded, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, g_f, g_t = self.context_gen(x)
        out = x
        if self.exp_conv is not None:
            out = self.exp_act(self.exp_norm(self.exp_conv(out, context)))
        out = self.depth_act(self.depth_norm(self.depth_conv(out, context)), context)
        out = out * torch.sigmoid(g_f) * torch.sigmoid(g_t)  # coordinate attention
        out = self.proj_norm(self.proj_conv(out, context))
        return out + x if self.use_residual else out


def dymn_features(width_mult: float, block_strides: Sequence[Pair], **block_kwargs: Any) -> tuple[nn.Module, ...]:
    """``(in_c, layers, out_c, out_channels)``: the DyMN trunk with the released module names."""
    first = scaled(MNV3_LARGE[0].in_channels, width_mult)
    in_c = ConvNormAct(1, first, 3, stride=2, norm_layer=EFFICIENTAT_NORM, act_layer=nn.Hardswish)
    layers = nn.ModuleList(
        DynamicBlock(scaled(s.in_channels, width_mult), s.kernel, scaled(s.expanded, width_mult),
                     scaled(s.out_channels, width_mult), stride, nn.Hardswish if s.hardswish else nn.ReLU,
                     width_mult, **block_kwargs)
        for s, stride in zip(MNV3_LARGE, block_strides, strict=True)
    )
    last_in = scaled(MNV3_LARGE[-1].out_channels, width_mult)
    out_c = ConvNormAct(last_in, 6 * last_in, 1, norm_layer=EFFICIENTAT_NORM, act_layer=nn.Hardswish)
    return in_c, layers, out_c, 6 * last_in


def set_dyconv_temperature(model: nn.Module, temperature: float) -> None:
    """Set the softmax temperature of every dynamic convolution in ``model``."""
    for m in model.modules():
        if isinstance(m, DynamicConv):
            m.temperature = float(temperature)


def dyconv_temperature_at(epoch: int, t_max: float = 30.0, t_min: float = 1.0, t0_slope: float = 1.0,
                          t1_slope: float = 0.02) -> float:
    """DyMN's temperature schedule for training from scratch (two linear decays from ``t_max``, floor ``t_min``)."""
    t0 = t_max - t0_slope * epoch
    t1 = 1 + t1_slope * (t_max - 1) / t0_slope - t1_slope * epoch
    return max(t0, t1, t_min)


class DyMN(Student):
    """EfficientAT's dynamic MobileNet for clip-level tagging (see module docstring).

    Args:
        width_mult: channel width multiplier (``dymn10`` = 1.0).
        strides: strides of the four downsampling blocks.
        temperature: softmax temperature of the dynamic convolutions. 1.0 is the value the released AudioSet
            models end training with; training from scratch follows :func:`dyconv_temperature_at` (call
            :func:`set_dyconv_temperature` every epoch).
        frontend_kwargs: overrides of the :class:`layers.MelSTFT` defaults (EfficientAT's 32 kHz, 128 mels).
    """

    sample_rate = 32000
    frames_per_second = None
    classifier_names = ("classifier.5",)

    def __init__(
        self, num_classes: int = 527, width_mult: float = 1.0, strides: Sequence[int] = (2, 2, 2, 2),
        temperature: float = 1.0, head_dropout: float = 0.2, frontend_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.width_mult = num_classes, width_mult
        self.frontend = MelSTFT(**(frontend_kwargs or {}))
        self.sample_rate = self.frontend.sample_rate
        self.in_c, self.layers, self.out_c, channels = dymn_features(width_mult, clip_block_strides(strides))
        self.classifier = mlp_head(channels, scaled(1280, width_mult), num_classes, head_dropout)
        self.apply(init_mobile_weights)
        set_dyconv_temperature(self, temperature)

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.in_c(spec)
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(spec))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official DyMN files already use this layout; only a DataParallel/Lightning prefix is removed."""
    return strip_prefixes(state_dict, ("module.", "model.", "net."))


# --- registry ------------------------------------------------------------------------------------------------------
_PAPER = "Schmid et al., IEEE/ACM TASLP 2024 (DyMN, EfficientAT)"
# Width, published params (M) and GMACs for 10 s (EfficientAT README), the reference code's state-dict size without
# BatchNorm statistics (parameters plus the 8 Dy-ReLU coefficient buffers per block), release file. The released
# architecture reproduces the MACs and the reference sizes exactly; the README's parameter figures for dymn10
# (10.57 M) and dymn20 (40.02 M) exceed what its own code builds (10.55 M, 39.97 M) and are kept for reference only.
_MODELS = {
    "dymn04": (0.4, "1.97", "0.12", 1_961_359, "dymn04_as.pt"),
    "dymn10": (1.0, "10.57", "0.58", 10_548_599, "dymn10_as.pt"),
    "dymn20": (2.0, "40.02", "2.2", 39_966_263, "dymn20_as_mAP_493.pt"),
}


def _entrypoint(name: str):
    width = _MODELS[name][0]

    def build(num_classes: int = 527, **kwargs: Any) -> DyMN:
        return DyMN(num_classes=num_classes, width_mult=width, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"EfficientAT dynamic MobileNet with width multiplier {width}."
    return build


for _name, (_width, _params, _gmacs, _exact, _release) in _MODELS.items():
    register_student(_entrypoint(_name), checkpoint_filter=checkpoint_filter_fn, cfg={
        "paper": _PAPER, "sample_rate": 32000, "input_seconds": 10.0, "num_classes": 527, "width_mult": _width,
        "task": "tagging", "release_file": _release, "reference_state_size": _exact,
        "published": {"params_m": _params, "gmacs": _gmacs, "seconds": 10.0},
        "unreproducible": ("params_m",) if _name != "dymn04" else (),
    })
