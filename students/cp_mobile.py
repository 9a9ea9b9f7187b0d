"""CP-Mobile, the CP-JKU student for DCASE'23 Task 1 (low-complexity acoustic scene classification).

Schmid, Morocutti, Masoudian, Koutini, Widmer, "CP-JKU submission to DCASE23: Efficient Acoustic Scene
Classification with CP-Mobile", DCASE 2023 technical report, and "Distilling the Knowledge of Transformers and
CNNs with CP-Mobile", DCASE Workshop 2023 (github.com/fschmid56/cpjku_dcase23, models/cp_mobile_clean.py).
A receptive-field-regularised MobileNet: two strided 3x3 convs, three stages of inverted-residual blocks
(1x1 expand, 3x3 depthwise, 1x1 project; all BatchNorm + ReLU) each followed by Global Response Normalisation
and ReLU, residuals where the width does not change (average-pooled when strided), and a 1x1 conv classifier
with BatchNorm and global average pooling. Input: 256-bin log mels of 1-s clips at 32 kHz (hop 500, window 3072,
FFT 4096), the frontend of the submission.

The registered ``cp_mobile`` is the repository's training default (base 32 channels, channel multiplier 2.3,
expansion rate 3, blocks (3, 2, 1)), within the challenge limits of 128 K parameters and 30 M MACs per second.
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

__all__ = ["GRN", "CPMobile", "CPMobileBlock", "checkpoint_filter_fn", "dcase23_frontend"]

DCASE23_FRONTEND = {"n_mels": 256, "sample_rate": 32000, "win_length": 3072, "hop_length": 500, "n_fft": 4096,
                    "freqm": 48, "timem": 0, "fmin_aug_range": 1, "fmax_aug_range": 1000}


def dcase23_frontend(**overrides: Any) -> MelSTFT:
    """CP-JKU's DCASE'23 log-mel frontend (the math of EfficientAT's, 256 mels of a 4096-point FFT)."""
    return MelSTFT(**{**DCASE23_FRONTEND, **overrides})


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) with scalar ``gamma``/``beta``, as in CP-Mobile."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class CPMobileBlock(nn.Module):
    """Expand -> depthwise (strided) -> project, [+ shortcut], GRN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, expansion_rate: float, stride: tuple[int, int]) -> None:
        super().__init__()
        expanded = make_divisible(in_channels * expansion_rate, 8)
        self.block = nn.Sequential(
            ConvNormAct(in_channels, expanded, 1),
            ConvNormAct(expanded, expanded, 3, stride=stride, groups=expanded),
            ConvNormAct(expanded, out_channels, 1, act_layer=None),
        )
        self.use_shortcut = in_channels == out_channels
        self.shortcut_pool = stride != (1, 1)
        self.stride = stride
        self.after_block_norm = GRN()
        self.after_block_activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_shortcut:
            out = out + (F.avg_pool2d(x, 3, self.stride, 1) if self.shortcut_pool else x)
        return self.after_block_activation(self.after_block_norm(out))


class CPMobile(Student):
    """CP-Mobile (see module docstring).

    Args:
        base_channels, channels_multiplier, expansion_rate, n_blocks: the three scaling knobs and the stage depths.
        strides: ``{"b<k>": (freq, time)}`` for the strided blocks (numbered from 1 across stages).
        frontend_kwargs: overrides of the DCASE'23 frontend.
    """

    frames_per_second = None
    classifier_names = ("feed_forward.0", "feed_forward.1")

    def __init__(
        self,
        num_classes: int = 10,
        base_channels: int = 32,
        channels_multiplier: float = 2.3,
        expansion_rate: float = 3.0,
        n_blocks: Sequence[int] = (3, 2, 1),
        strides: dict[str, tuple[int, int]] | None = None,
        frontend_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.frontend = dcase23_frontend(**(frontend_kwargs or {}))
        self.sample_rate = self.frontend.sample_rate
        strides = {"b2": (2, 2), "b4": (2, 1)} if strides is None else strides
        base = make_divisible(base_channels, 8)
        widths = [base] + [make_divisible(base * channels_multiplier ** s, 8) for s in range(len(n_blocks))]
        self.in_c = nn.Sequential(ConvNormAct(1, widths[0] // 4, 3, stride=2),
                                  ConvNormAct(widths[0] // 4, widths[0], 3, stride=2))
        self.stages = nn.Sequential()
        block_id = 0
        for stage_id, depth in enumerate(n_blocks):
            stage = nn.Sequential()
            in_ch = widths[stage_id]
            for _ in range(depth):
                block_id += 1
                stride = tuple(strides.get(f"b{block_id}", (1, 1)))
                stage.add_module(f"b{block_id}", CPMobileBlock(in_ch, widths[stage_id + 1], expansion_rate, stride))
                in_ch = widths[stage_id + 1]
            self.stages.add_module(f"s{stage_id + 1}", stage)
        self.feed_forward = nn.Sequential(
            nn.Conv2d(widths[-1], num_classes, 1, bias=False), nn.BatchNorm2d(num_classes), nn.AdaptiveAvgPool2d(1)
        )
        self.apply(init_mobile_weights)

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.stages(self.in_c(spec))).flatten(1)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a CP-JKU Lightning checkpoint (``model.*`` plus frontend/quantisation entries) to this layout."""
    state_dict = strip_prefixes(state_dict, ("module.",))
    if any(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    return state_dict


# --- registry ------------------------------------------------------------------------------------------------------
_PAPER = "Schmid et al., DCASE 2023 Task 1 (CP-Mobile, cpjku_dcase23)"
_CFG = {"paper": _PAPER, "sample_rate": 32000, "input_seconds": 1.0, "num_classes": 10, "task": "asc",
        "limits": {"params": 128_000, "macs": 30_000_000, "seconds": 1.0}}


@register_student(cfg=_CFG, checkpoint_filter=checkpoint_filter_fn)
def cp_mobile(num_classes: int = 10, **kwargs: Any) -> CPMobile:
    """CP-Mobile as trained by the CP-JKU DCASE'23 recipe (32 base channels, x2.3, expansion 3)."""
    return CPMobile(num_classes=num_classes, **kwargs)


@register_student(
    cfg={**_CFG, "note": "the small configuration of the repository's test_cp_mobile.py"},
    checkpoint_filter=checkpoint_filter_fn,
)
def cp_mobile_tiny(num_classes: int = 10, **kwargs: Any) -> CPMobile:
    """CP-Mobile with 16 base channels, x1.5 and expansion 1.75: a few thousand parameters, fast on a CPU."""
    return CPMobile(num_classes=num_classes, **{"base_channels": 16, "channels_multiplier": 1.5,
                                                "expansion_rate": 1.75, **kwargs})
