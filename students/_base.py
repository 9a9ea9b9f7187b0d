"""The contract every student follows (see the package docstring) and the helpers its families share."""
from __future__ import annotations

import abc

import torch
from torch import nn

from layers.export_forms import int8_refusal, with_export_forms
from layers.probe import min_input_samples

__all__ = ["Student", "init_mobile_weights"]


class Student(nn.Module, abc.ABC):
    """Base of all students: a frontend and a spectrogram-level forward.

    Subclasses set ``sample_rate``, ``num_classes``, ``frames_per_second`` (None for clip-level students),
    ``frontend`` and ``classifier_names`` (the modules sized by ``num_classes``, which keep their fresh
    initialisation when ``create_student`` loads a checkpoint with another class count), and implement
    ``forward_spectrogram``. Modules that ONNX cannot hold (or runs slowly) provide their own export forms
    (:mod:`layers.export_forms`), which :meth:`exportable` assembles.
    """

    sample_rate: int
    num_classes: int
    frames_per_second: float | None = None
    frontend: nn.Module
    classifier_names: tuple[str, ...]

    @abc.abstractmethod
    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` (clip students) or ``[B, T, C]`` (frame students) for ``[B, 1, F, T]`` spectrograms."""

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of waveforms ``[B, N]`` at ``sample_rate``."""
        return self.forward_spectrogram(self.frontend(waveform))

    def exportable(self) -> Student:
        """A copy in eval mode whose modules (frontend included) take the forms ``kd export`` writes: the same
        function and weights, in operations ONNX holds and ONNX Runtime runs fast."""
        return with_export_forms(self)

    def int8_refusal(self) -> str | None:
        """Why this student must not be exported in int8 (one line), or None when it may."""
        return int8_refusal(self)

    def min_input_samples(self) -> int:
        """The fewest samples this student takes: shorter clips are padded with zeros up to it.

        Measured once, on silence (:func:`layers.probe.shortest_input`): CP-ResNet's pooling stack needs 17 frames,
        the MobileNets' centred STFT just over half an FFT window.
        """
        return min_input_samples(self)

    def spectrogram_shape(self, seconds: float) -> tuple[int, int, int]:
        """``(1, F, T)`` of the spectrogram ``frontend`` makes of ``seconds`` of audio (without running it)."""
        samples = round(seconds * self.sample_rate)
        return 1, self.frontend.n_mels, self.frontend.num_frames(samples)


def init_mobile_weights(m: nn.Module) -> None:
    """The initialisation of EfficientAT, DyMN and CP-Mobile (torchvision's MobileNetV3 scheme)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
        if m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def strip_prefixes(state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``module.`` of DataParallel, ``model.`` of a Lightning module) shared by all keys."""
    for prefix in prefixes:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict
