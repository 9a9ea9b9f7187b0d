"""Convolutional building blocks shared by the student families (MobileNetV3, DyMN, CP-Mobile, frame-wise SED).

Key names follow the layouts of the released checkpoints the students load: ``ConvNormAct`` is a
``Sequential`` of ``0`` (conv), ``1`` (norm), ``2`` (activation), the layout of torchvision's
``ConvNormActivation`` that EfficientAT and CP-Mobile are built from (timm's ``ConvNormAct`` names its children
``conv``/``bn`` and would not load them). ``make_divisible`` is timm's, which rounds exactly like the
TensorFlow MobileNet code these papers took their channel counts from.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from timm.layers import make_divisible
from torch import nn

__all__ = ["ConcurrentSE", "ConvNormAct", "SqueezeExcitation", "make_divisible", "same_padding"]

AXES = {"c": 1, "f": 2, "t": 3}


def same_padding(kernel: int, dilation: int | Sequence[int] = 1) -> int | tuple[int, ...]:
    """Padding keeping the size of an odd ``kernel`` at stride 1 (per axis when ``dilation`` is a tuple)."""
    if isinstance(dilation, Sequence):
        return tuple((kernel - 1) // 2 * d for d in dilation)
    return (kernel - 1) // 2 * dilation


class ConvNormAct(nn.Sequential):
    """Conv (no bias) -> norm -> optional activation, children named ``0``, ``1``, ``2``.

    Args:
        stride, dilation: an int or a ``(freq, time)`` pair (frame-wise models stride the axes differently).
        act_layer: activation class, or None for a linear projection.
        norm_layer: defaults to BatchNorm with PyTorch's defaults; EfficientAT passes eps 1e-3, momentum 0.01.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int] = 1,
        groups: int = 1,
        dilation: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[..., nn.Module] | None = nn.ReLU,
    ) -> None:
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            norm_layer(out_channels),
        ]
        if act_layer is not None:
            layers.append(act_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation along one axis (Hu et al., 2018), with EfficientAT's axis choice.

    The input is averaged over every axis but ``axis`` (channels, frequency or time), passed through
    ``fc1 -> ReLU -> fc2 -> sigmoid`` and multiplied back. Channel SE is the MobileNetV3 block; frequency and
    time SE tie the block to a fixed input size along that axis.
    """

    def __init__(self, dim: int, squeeze_dim: int, axis: str = "c") -> None:
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"SE axis must be one of {sorted(AXES)}, got {axis!r}")
        self.axis = AXES[axis]
        self.fc1 = nn.Linear(dim, squeeze_dim)
        self.fc2 = nn.Linear(squeeze_dim, dim)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        others = [a for a in (1, 2, 3) if a != self.axis]
        s = x.mean(dim=others, keepdim=True).movedim(self.axis, -1)
        s = self.fc2(torch.relu(self.fc1(s)))
        return torch.sigmoid(s).movedim(-1, self.axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)

    def exportable(self) -> nn.Module:
        """Channel SE as global average pooling and 1x1 convolutions (operators ONNX Runtime runs in int8, with no
        transposes between them); SE along frequency or time as it is."""
        return ChannelSE(self) if self.axis == 1 else self


class ChannelSE(nn.Module):
    """The export form of a channel :class:`SqueezeExcitation`: the same function and weights, its linear layers as
    1x1 convolutions on the pooled ``[B, C, 1, 1]`` tensor."""

    def __init__(self, se: SqueezeExcitation) -> None:
        super().__init__()
        self.fc1, self.fc2 = (nn.Conv2d(fc.in_features, fc.out_features, 1) for fc in (se.fc1, se.fc2))
        with torch.no_grad():
            for conv, fc in ((self.fc1, se.fc1), (self.fc2, se.fc2)):
                conv.weight.copy_(fc.weight[:, :, None, None])
                conv.bias.copy_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class ConcurrentSE(nn.Module):
    """One SE per axis in ``axes`` applied to the same input, outputs aggregated element-wise.

    EfficientAT's ``se_dims``/``se_agg``: ``axes="c"`` (default) is MobileNetV3's channel SE; ``"cf"`` adds a
    frequency SE whose outputs are combined by ``agg`` (``max``, ``avg``, ``add`` or ``min``). The squeeze width
    is ``make_divisible(dim // reduction, 8)``, as in the released checkpoints.

    Args:
        dims: the size of each axis, ``{"c": channels, "f": freq_bins, "t": frames}`` (only the used axes needed).
    """

    AGGREGATIONS = ("max", "avg", "add", "min")

    def __init__(self, dims: dict[str, int], axes: str = "c", agg: str = "max", reduction: int = 4) -> None:
        super().__init__()
        if agg not in self.AGGREGATIONS:
            raise ValueError(f"SE aggregation must be one of {self.AGGREGATIONS}, got {agg!r}")
        missing = [a for a in axes if a not in dims]
        if missing:
            raise ValueError(f"SE over axes {axes!r} needs the size of axis/axes {missing}")
        self.agg = agg
        self.conc_se_layers = nn.ModuleList(
            SqueezeExcitation(dims[a], make_divisible(dims[a] // reduction, 8), a) for a in axes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.conc_se_layers) == 1:
            return self.conc_se_layers[0](x)
        outs = torch.stack([se(x) for se in self.conc_se_layers])
        if self.agg == "max":
            return outs.amax(0)
        if self.agg == "min":
            return outs.amin(0)
        return outs.sum(0) if self.agg == "add" else outs.mean(0)
