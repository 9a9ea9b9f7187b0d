"""EfficientAT MobileNetV3 students (``mn01`` ... ``mn40``).

Schmid, Koutini, Widmer, "Efficient Large-Scale Audio Tagging via Transformer-to-CNN Knowledge Distillation",
ICASSP 2023 (github.com/fschmid56/EfficientAT). MobileNetV3-Large (Howard et al., 2019) on a one-channel
log-mel spectrogram: the 15 inverted-residual blocks of the paper's table, channel widths scaled by the width
multiplier, the four downsampling blocks' strides configurable (``strides``, default ``(2, 2, 2, 2)``),
squeeze-excitation after the depthwise conv of the SE blocks (EfficientAT's concurrent SE: channel SE by
default, optionally frequency/time SE aggregated by max/avg/add/min), a 1x1 conv to ``6 * last`` channels, global
average pooling and an MLP head ``Linear -> Hardswish -> Dropout -> Linear``. Module names follow the released
checkpoints (``features.*``, ``classifier.2``, ``classifier.5``), which load with ``strict=True``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from layers import MelSTFT
from layers.blocks import ConcurrentSE, ConvNormAct, make_divisible

from ._base import Student, init_mobile_weights, strip_prefixes
from ._registry import register_student

__all__ = ["InvertedResidual", "MobileNet", "checkpoint_filter_fn", "mobilenet_features"]

Pair = int | tuple[int, int]
EFFICIENTAT_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


@dataclass(frozen=True)
class BlockSpec:
    """One row of the MobileNetV3-Large table (channels before width scaling)."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    hardswish: bool


_RE, _HS = False, True
MNV3_LARGE = (
    BlockSpec(16, 3, 16, 16, False, _RE),
    BlockSpec(16, 3, 64, 24, False, _RE),
    BlockSpec(24, 3, 72, 24, False, _RE),
    BlockSpec(24, 5, 72, 40, True, _RE),
    BlockSpec(40, 5, 120, 40, True, _RE),
    BlockSpec(40, 5, 120, 40, True, _RE),
    BlockSpec(40, 3, 240, 80, False, _HS),
    BlockSpec(80, 3, 200, 80, False, _HS),
    BlockSpec(80, 3, 184, 80, False, _HS),
    BlockSpec(80, 3, 184, 80, False, _HS),
    BlockSpec(80, 3, 480, 112, True, _HS),
    BlockSpec(112, 3, 672, 112, True, _HS),
    BlockSpec(112, 5, 672, 160, True, _HS),
    BlockSpec(160, 5, 960, 160, True, _HS),
    BlockSpec(160, 5, 960, 160, True, _HS),
)
# Blocks that downsample in MobileNetV3 (C1..C4); EfficientAT's ``strides`` argument sets their strides.
DOWNSAMPLING_BLOCKS = (1, 3, 6, 12)


def clip_block_strides(strides: Sequence[int] = (2, 2, 2, 2)) -> list[int]:
    """Per-block strides of the clip-level model: ``strides[i]`` at the i-th downsampling block, 1 elsewhere."""
    if len(strides) != len(DOWNSAMPLING_BLOCKS):
        raise ValueError(f"strides needs {len(DOWNSAMPLING_BLOCKS)} values (C1..C4), got {tuple(strides)}")
    per_block = [1] * len(MNV3_LARGE)
    for index, stride in zip(DOWNSAMPLING_BLOCKS, strides, strict=True):
        per_block[index] = stride
    return per_block


def as_pair(value: Pair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_out_size(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    padding = (kernel - 1) // 2 * dilation
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)


def scaled(channels: int, width_mult: float) -> int:
    return make_divisible(channels * width_mult, 8)


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand (skipped when not widening) -> depthwise -> [SE] -> 1x1 project, + residual.

    Children of ``block`` are numbered as in the released checkpoints: ``0`` expand, ``1`` depthwise, then
    ``2`` SE and ``3`` project (or ``2`` project without SE).
    """

    def __init__(
        self,
        in_channels: int,
        kernel: int,
        expanded: int,
        out_channels: int,
        stride: Pair,
        act_layer: type[nn.Module],
        se: nn.Module | None = None,
        dilation: Pair = 1,
    ) -> None:
        super().__init__()
        stride, dilation = as_pair(stride), as_pair(dilation)
        self.use_residual = stride == (1, 1) and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormAct(in_channels, expanded, 1, norm_layer=EFFICIENTAT_NORM, act_layer=act_layer))
        layers.append(
            ConvNormAct(expanded, expanded, kernel, stride=stride, groups=expanded, dilation=dilation,
                        norm_layer=EFFICIENTAT_NORM, act_layer=act_layer)
        )
        if se is not None:
            layers.append(se)
        layers.append(ConvNormAct(expanded, out_channels, 1, norm_layer=EFFICIENTAT_NORM, act_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


def mobilenet_features(
    width_mult: float,
    block_strides: Sequence[Pair],
    *,
    se_axes: str = "c",
    se_agg: str = "max",
    se_reduction: int = 4,
    input_dims: tuple[int, int] = (128, 1000),
    block_dilations: Sequence[Pair] | None = None,
) -> tuple[nn.Sequential, int]:
    """The convolutional trunk (``features``) and its output channel count.

    ``input_dims`` (mel bins, frames) only matters for frequency/time SE, whose layers are sized by the
    feature map they see, as in EfficientAT.
    """
    first = scaled(MNV3_LARGE[0].in_channels, width_mult)
    layers: list[nn.Module] = [ConvNormAct(1, first, 3, stride=2, norm_layer=EFFICIENTAT_NORM, act_layer=nn.Hardswish)]
    f_dim, t_dim = conv_out_size(input_dims[0], 3, 2), conv_out_size(input_dims[1], 3, 2)
    dilations = block_dilations or [1] * len(MNV3_LARGE)
    for spec, stride, dilation in zip(MNV3_LARGE, block_strides, dilations, strict=True):
        (sf, st), (df, dt) = as_pair(stride), as_pair(dilation)
        f_dim, t_dim = conv_out_size(f_dim, spec.kernel, sf, df), conv_out_size(t_dim, spec.kernel, st, dt)
        expanded = scaled(spec.expanded, width_mult)
        se = ConcurrentSE({"c": expanded, "f": f_dim, "t": t_dim}, se_axes, se_agg, se_reduction) \
            if spec.use_se and se_axes else None
        layers.append(InvertedResidual(
            scaled(spec.in_channels, width_mult), spec.kernel, expanded, scaled(spec.out_channels, width_mult),
            stride, nn.Hardswish if spec.hardswish else nn.ReLU, se, dilation,
        ))
    last_in = scaled(MNV3_LARGE[-1].out_channels, width_mult)
    layers.append(ConvNormAct(last_in, 6 * last_in, 1, norm_layer=EFFICIENTAT_NORM, act_layer=nn.Hardswish))
    return nn.Sequential(*layers), 6 * last_in


class MobileNet(Student):
    """EfficientAT's MobileNetV3 for clip-level tagging (see module docstring).

    Args:
        width_mult: channel width multiplier (``mn10`` = 1.0).
        strides: strides of the four downsampling blocks.
        se_axes, se_agg, se_reduction: EfficientAT's ``se_dims`` (``"c"``, ``"cf"``, ...), ``se_agg``, ``se_r``.
        head_dropout: dropout before the last linear layer.
        frontend_kwargs: overrides of the :class:`layers.MelSTFT` defaults (EfficientAT's 32 kHz, 128 mels).
    """

    sample_rate = 32000
    frames_per_second = None
    classifier_names = ("classifier.5",)

    def __init__(
        self,
        num_classes: int = 527,
        width_mult: float = 1.0,
        strides: Sequence[int] = (2, 2, 2, 2),
        se_axes: str = "c",
        se_agg: str = "max",
        se_reduction: int = 4,
        head_dropout: float = 0.2,
        frontend_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.width_mult = num_classes, width_mult
        self.frontend = MelSTFT(**(frontend_kwargs or {}))
        self.sample_rate = self.frontend.sample_rate
        self.features, channels = mobilenet_features(
            width_mult, clip_block_strides(strides), se_axes=se_axes, se_agg=se_agg, se_reduction=se_reduction,
            input_dims=(self.frontend.n_mels, 1000),
        )
        self.classifier = mlp_head(channels, scaled(1280, width_mult), num_classes, head_dropout)
        self.apply(init_mobile_weights)

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(spec))


def mlp_head(in_channels: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """EfficientAT's head: global average pooling, then ``Linear -> Hardswish -> Dropout -> Linear``."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_channels, hidden), nn.Hardswish(),
        nn.Dropout(dropout), nn.Linear(hidden, num_classes),
    )


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official EfficientAT files already use this layout; only a DataParallel/Lightning prefix is removed."""
    return strip_prefixes(state_dict, ("module.", "model.", "net."))


# --- registry ------------------------------------------------------------------------------------------------------
_PAPER = "Schmid et al., ICASSP 2023 (EfficientAT)"
# README table of EfficientAT (params in M, GMACs for 10 s), the reference code's state-dict size without BatchNorm
# statistics (= its parameter count), release file.
_PUBLISHED = {
    "mn04": ("0.983", "0.11", 983_599, "mn04_as_mAP_432.pt"),
    "mn05": ("1.43", "0.16", None, "mn05_as_mAP_443.pt"),
    "mn10": ("4.88", "0.54", 4_876_831, "mn10_as_mAP_471.pt"),
    "mn20": ("17.91", "2.06", None, "mn20_as_mAP_478.pt"),
    "mn30": ("39.09", "4.55", None, "mn30_as_mAP_482.pt"),
    "mn40": ("68.43", "8.03", 68_427_303, "mn40_as_mAP_484.pt"),
}
_WIDTHS = {"mn01": 0.1, "mn02": 0.2, "mn04": 0.4, "mn05": 0.5, "mn06": 0.6, "mn10": 1.0, "mn20": 2.0, "mn30": 3.0,
           "mn40": 4.0}


def _cfg(name: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {"paper": _PAPER, "sample_rate": 32000, "input_seconds": 10.0, "num_classes": 527,
                           "width_mult": _WIDTHS[name],
                           "task": "tagging"}
    if name in _PUBLISHED:
        params_m, gmacs, exact, release = _PUBLISHED[name]
        cfg.update(published={"params_m": params_m, "gmacs": gmacs, "seconds": 10.0}, release_file=release)
        if exact is not None:
            cfg["reference_state_size"] = exact
    return cfg


def _entrypoint(name: str):
    def build(num_classes: int = 527, **kwargs: Any) -> MobileNet:
        return MobileNet(num_classes=num_classes, width_mult=_WIDTHS[name], **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"EfficientAT MobileNetV3 with width multiplier {_WIDTHS[name]}."
    return build


for _name in _WIDTHS:
    register_student(_entrypoint(_name), cfg=_cfg(_name), checkpoint_filter=checkpoint_filter_fn)
