"""CP-ResNet, the receptive-field-regularised ResNet of CP-JKU (teacher and baseline in DCASE'23 Task 1).

Koutini, Eghbal-zadeh, Widmer, "Receptive Field Regularization Techniques for Audio Classification and Tagging
with Deep Convolutional Neural Networks", IEEE/ACM TASLP 2021; configuration of the CP-JKU DCASE'23 repository
(github.com/fschmid56/cpjku_dcase23, models/cp_resnet.py, run_cp-resnet_training.py). A 5x5 strided input conv,
three stages of four basic blocks (conv-BN-ReLU-conv-BN + shortcut, ReLU) with max pooling after blocks 1, 2 and
4 of stage 1, kernel sizes set by the receptive-field parameter ``rho`` (3x3 early, 1x1 late, limiting the
receptive field), channels doubling per stage, and a 1x1 conv + BatchNorm classifier with global average
pooling. Input: 256-bin log mels of 1-s clips at 32 kHz with hop 750 (the repository's CP-ResNet frontend).

``cp_resnet`` is the repository's teacher (rho 7, 32 base channels, ~0.25 M parameters: above the DCASE
limit); ``cp_resnet_dcase`` narrows it to 22 base channels, the widest that fits 128 K parameters and 30 M MACs per second.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._base import Student, strip_prefixes
from ._registry import register_student
from .cp_mobile import dcase23_frontend

__all__ = ["BasicBlock", "CPResNet", "checkpoint_filter_fn", "rho_kernel_sizes"]


def rho_kernel_sizes(rho: int = 7) -> dict[str, tuple[list[int], list[int]]]:
    """Kernel sizes ``(k1s, k2s)`` per stage for receptive-field parameter ``rho`` (CP-ResNet's default spread).

    ``rho`` = 7 is the reference; smaller values turn early 3x3 kernels into 1x1, larger ones late 1x1 into 3x3.
    """
    e = rho - 7
    return {
        "stage1": ([3, 3 - (-e > 6) * 2, 3 - (-e > 4) * 2, 3 - (-e > 2) * 2],
                   [1, 3 - (-e > 5) * 2, 3 - (-e > 3) * 2, 3 - (-e > 1) * 2]),
        "stage2": ([3 - (-e > 0) * 2, 1 + (e > 1) * 2, 1 + (e > 3) * 2, 1 + (e > 5) * 2],
                   [1 + (e > 0) * 2, 1 + (e > 2) * 2, 1 + (e > 4) * 2, 1 + (e > 6) * 2]),
        "stage3": ([1 + (e > 7) * 2, 1 + (e > 9) * 2, 1 + (e > 11) * 2, 1 + (e > 13) * 2],
                   [1 + (e > 8) * 2, 1 + (e > 10) * 2, 1 + (e > 12) * 2, 1 + (e > 14) * 2]),
    }


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; padding ``k // 3`` as in CP-ResNet."""

    def __init__(self, in_channels: int, out_channels: int, k1: int = 3, k2: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, k1, padding=k1 // 3, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, k2, padding=k2 // 3, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False))
            self.shortcut.add_module("bn", nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class CPResNet(Student):
    """CP-ResNet (see module docstring).

    Args:
        base_channels: channels of stage 1 (then x2 per stage).
        rho: receptive-field parameter choosing the kernel sizes.
        maxpool_stage1: blocks of stage 1 after which a 2x2 max pooling follows (0 = before the first block).
        frontend_kwargs: overrides of the DCASE'23 frontend (hop 750 for CP-ResNet).
    """

    frames_per_second = None
    classifier_names = ("feed_forward.0", "feed_forward.1")

    def __init__(
        self,
        num_classes: int = 10,
        base_channels: int = 32,
        rho: int = 7,
        n_blocks: Sequence[int] = (4, 4, 4),
        maxpool_stage1: Sequence[int] = (1, 2, 4),
        frontend_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.frontend = dcase23_frontend(**{"hop_length": 750, **(frontend_kwargs or {})})
        self.sample_rate = self.frontend.sample_rate
        widths = [base_channels, base_channels * 2, base_channels * 4]
        self.in_c = nn.Sequential(nn.Conv2d(1, widths[0], 5, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        kernels = rho_kernel_sizes(rho)
        pools = {"stage1": set(maxpool_stage1), "stage2": set(), "stage3": set()}
        in_ch = widths[0]
        for (stage, (k1s, k2s)), width, depth in zip(kernels.items(), widths, n_blocks, strict=True):
            setattr(self, stage, self._make_stage(in_ch, width, depth, k1s, k2s, pools[stage]))
            in_ch = width
        self.feed_forward = nn.Sequential(
            nn.Conv2d(widths[-1], num_classes, 1, bias=False), nn.BatchNorm2d(num_classes), nn.AdaptiveAvgPool2d(1)
        )
        self._init_weights()

    @staticmethod
    def _make_stage(in_ch: int, out_ch: int, depth: int, k1s: list[int], k2s: list[int], pools: set[int]):
        stage = nn.Sequential()
        if 0 in pools:
            stage.add_module("maxpool0_0", nn.MaxPool2d(2, 2))
        for index in range(depth):
            stage.add_module(f"block{index + 1}", BasicBlock(in_ch, out_ch, k1s[index], k2s[index]))
            in_ch = out_ch
            if index + 1 in pools:
                stage.add_module(f"maxpool{index + 1}_{sorted(pools).index(index + 1)}", nn.MaxPool2d(2, 2))
        return stage

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.in_c(spec))))
        return self.feed_forward(x).flatten(1)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map CP-JKU teacher files (``cpr_*.pt``: ``model.*`` or ``net.*`` keys, frontend entries) to this layout."""
    state_dict = strip_prefixes(state_dict, ("module.",))
    for prefix in ("model.", "net."):
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


# --- registry ------------------------------------------------------------------------------------------------------
_PAPER = "Koutini et al., TASLP 2021 (CP-ResNet); CP-JKU DCASE'23 Task 1 configuration"
_CFG = {"paper": _PAPER, "sample_rate": 32000, "input_seconds": 1.0, "num_classes": 10, "task": "asc"}


@register_student(
    cfg={**_CFG, "release_files": ("cpr_ms_dir_1.pt", "cpr_dir_1.pt", "cpr_ms_1.pt")},
    checkpoint_filter=checkpoint_filter_fn,
)
def cp_resnet(num_classes: int = 10, **kwargs: Any) -> CPResNet:
    """CP-ResNet as the CP-JKU DCASE'23 teacher: rho 7, 32 base channels, hop 750."""
    return CPResNet(num_classes=num_classes, **kwargs)


@register_student(
    cfg={**_CFG, "limits": {"params": 128_000, "macs": 30_000_000, "seconds": 1.0}},
    checkpoint_filter=checkpoint_filter_fn,
)
def cp_resnet_dcase(num_classes: int = 10, **kwargs: Any) -> CPResNet:
    """CP-ResNet narrowed to 22 base channels (120 K params, 25 MMACs per second; 24 would exceed 128 K)."""
    return CPResNet(num_classes=num_classes, **{"base_channels": 22, **kwargs})
