"""Frame-wise SED students: MobileNetV3/DyMN turned frame-wise, a sequence model and a frame-wise head.

After Morocutti, Schmid, Koutini, Widmer, "Exploring Performance-Complexity Trade-Offs in Sound Event
Detection", EUSIPCO 2025 (github.com/theMoro/EfficientSED, models/efficient_cnns/frame_mn). The EfficientAT
trunk keeps its blocks and channel widths, but its strides are split by axis: frequency is strided by 2 in blocks
1, 2, 5, 7, 10 and 14 (so 128 mel bins shrink to 1 after the stem), time only by the stem and block 1 (4x in
total). There is no global pooling: the remaining frequency axis is averaged away (a no-op for 128 mels), giving one
embedding per frame, which a sequence model (``gru``: 2-layer BiGRU, ``transformer``: 2 RoFormer blocks,
``tcn``: 2 temporal conv nets, or ``none``) refines before a linear frame-wise head.

Frontend as in EfficientSED: 16 kHz, 128 Kaldi mel bins, window 400, hop 160 (100 frames/s), so the students
output 25 frames per second (``frames_per_second``). A clip-level EfficientAT release (``mn10_as``, ...)
initialises the trunk: its features load strictly, the sequence model and head keep their initialisation.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from layers import MelSTFT

from ._base import Student, init_mobile_weights, strip_prefixes
from ._registry import register_student
from ._sequence import SEQUENCE_MODELS, build_sequence_model
from .dymn import dymn_features
from .mobilenet import mobilenet_features

__all__ = ["FrameDyMNBackbone", "FrameMNBackbone", "FrameWiseStudent", "checkpoint_filter_fn"]

#                 blocks 0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
FRAME_F_STRIDES = (1, 2, 2, 1, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 2)
FRAME_T_STRIDES = (1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
FRAME_STRIDES = tuple(zip(FRAME_F_STRIDES, FRAME_T_STRIDES, strict=True))
SED_FRONTEND = {"sample_rate": 16000, "win_length": 400, "hop_length": 160, "n_fft": 512, "n_mels": 128,
                "freqm": 0, "timem": 0}


class FrameMNBackbone(nn.Module):
    """EfficientAT MobileNetV3 trunk with frame-wise strides: ``[B, 1, F, T]`` -> ``[B, T / 4, 960 * w]``."""

    def __init__(self, width_mult: float, n_mels: int = 128) -> None:
        super().__init__()
        self.features, self.out_dim = mobilenet_features(width_mult, FRAME_STRIDES, input_dims=(n_mels, 1000))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.features(spec).mean(dim=2).transpose(1, 2)


class FrameDyMNBackbone(nn.Module):
    """DyMN trunk with frame-wise strides: ``[B, 1, F, T]`` -> ``[B, T / 4, 960 * w]``."""

    def __init__(self, width_mult: float, n_mels: int = 128) -> None:
        super().__init__()
        self.in_c, self.layers, self.out_c, self.out_dim = dymn_features(width_mult, FRAME_STRIDES)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.in_c(spec)
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x).mean(dim=2).transpose(1, 2)


BACKBONES = {"mn": FrameMNBackbone, "dymn": FrameDyMNBackbone}


class FrameWiseStudent(Student):
    """Frame-wise CNN + sequence model + linear head: frame logits ``[B, T, C]`` at 25 frames/s.

    Args:
        backbone: ``"mn"`` (MobileNetV3) or ``"dymn"`` (dynamic MobileNet).
        width_mult: channel width multiplier of the trunk.
        seq_model: ``"none"``, ``"gru"``, ``"transformer"`` or ``"tcn"``.
        seq_dim, seq_layers: width and depth of the sequence model (EfficientSED: 256, 2).
        frontend_kwargs: overrides of the 16 kHz EfficientSED frontend.
    """

    classifier_names = ("strong_head",)
    TIME_STRIDE = 4

    def __init__(
        self,
        num_classes: int = 447,
        backbone: str = "mn",
        width_mult: float = 1.0,
        seq_model: str = "gru",
        seq_dim: int = 256,
        seq_layers: int = 2,
        frontend_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        if seq_model not in SEQUENCE_MODELS:
            raise ValueError(f"unknown sequence model {seq_model!r}; choose one of {', '.join(SEQUENCE_MODELS)}")
        self.num_classes = num_classes
        self.frontend = MelSTFT(**{**SED_FRONTEND, **(frontend_kwargs or {})})
        self.sample_rate = self.frontend.sample_rate
        self.frames_per_second = self.frontend.frames_per_second / self.TIME_STRIDE
        self.backbone = BACKBONES[backbone](width_mult, self.frontend.n_mels)
        self.backbone.apply(init_mobile_weights)
        self.seq_model, features = build_sequence_model(seq_model, self.backbone.out_dim, seq_dim, seq_layers)
        self.strong_head = nn.Linear(features, num_classes)

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        return self.strong_head(self.seq_model(self.backbone(spec)))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map checkpoints onto a frame-wise student.

    * saved from this model: unchanged (a DataParallel/Lightning prefix removed);
    * EfficientSED files (``model.fmn.*``/``model.*`` trunk, ``seq_model.*``, ``strong_head.*``, ``weak_head.*``):
      the trunk moves to ``backbone.*``, the weak (clip) head is dropped;
    * clip-level EfficientAT releases (``features.*`` or ``in_c``/``layers``/``out_c`` plus ``classifier.*``): the
      trunk moves to ``backbone.*``; the classifier is dropped and the sequence model and frame head keep the
      model's initialisation, as when EfficientSED starts strong-label training from AudioSet weights.
    """
    state_dict = strip_prefixes(state_dict, ("module.", "net."))
    trunk = ("features.", "in_c.", "layers.", "out_c.")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for prefix in ("model.fmn.", "model.frame_mn.", "model.dymn.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key.startswith(trunk):
            out["backbone." + key] = value
        elif not key.startswith(("classifier.", "weak_head.", "mel.")):
            out[key] = value
    if not any(k.startswith(("seq_model.", "strong_head.")) for k in out):
        out.update({k: v for k, v in model.state_dict().items() if k.startswith(("seq_model.", "strong_head."))})
    return out


# --- registry ------------------------------------------------------------------------------------------------------
_PAPER = "Morocutti et al., EUSIPCO 2025 (EfficientSED)"
_MODELS: dict[str, dict[str, Any]] = {
    "fmn04": {"width_mult": 0.4, "seq_model": "none"},
    "fmn10": {"width_mult": 1.0, "seq_model": "none"},
    "fmn04_gru": {"width_mult": 0.4, "seq_model": "gru"},
    "fmn10_gru": {"width_mult": 1.0, "seq_model": "gru"},
    "fmn04_tf": {"width_mult": 0.4, "seq_model": "transformer"},
    "fmn10_tf": {"width_mult": 1.0, "seq_model": "transformer"},
    "fmn04_tcn": {"width_mult": 0.4, "seq_model": "tcn"},
    "fmn10_tcn": {"width_mult": 1.0, "seq_model": "tcn"},
    "fdymn04_gru": {"backbone": "dymn", "width_mult": 0.4, "seq_model": "gru"},
    "fdymn10_tf": {"backbone": "dymn", "width_mult": 1.0, "seq_model": "transformer"},
    # for CPU demos and tests: the narrowest trunk and a one-layer 32-unit BiGRU
    "fmn_tiny": {"width_mult": 0.1, "seq_model": "gru", "seq_dim": 32, "seq_layers": 1},
}


def _entrypoint(name: str):
    defaults = _MODELS[name]

    def build(num_classes: int = 447, **kwargs: Any) -> FrameWiseStudent:
        return FrameWiseStudent(num_classes=num_classes, **{**defaults, **kwargs})

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"Frame-wise SED student {defaults}."
    return build


for _name, _defaults in _MODELS.items():
    register_student(_entrypoint(_name), checkpoint_filter=checkpoint_filter_fn, cfg={
        "paper": _PAPER, "sample_rate": 16000, "input_seconds": 10.0, "num_classes": 447, "task": "sed",
        "frames_per_second": 25.0, **_defaults,
    })
