"""The teacher contract shared by every family, and the windowing of inputs longer than a teacher's context."""
from __future__ import annotations

import abc
import math
from typing import Any, NamedTuple

import torch
from torch import nn

from kd_errors import KdError
from layers.probe import min_input_samples

__all__ = ["Teacher", "TeacherInputError", "TeacherOutput"]


class TeacherInputError(KdError):
    """An input a teacher cannot process as given (wrong rank, too short, spectrogram of the wrong size)."""


class TeacherOutput(NamedTuple):
    """Raw logits of one teacher: ``clip`` ``[B, C]``; ``frame`` ``[B, T, C]`` for frame-wise teachers, else None."""

    clip: torch.Tensor
    frame: torch.Tensor | None = None


class Teacher(nn.Module, abc.ABC):
    """Base of all teachers: a frontend, a spectrogram-level forward and waveform windowing.

    Subclasses set ``sample_rate``, ``clip_seconds``, ``num_classes``, ``frames_per_second`` (None for
    clip-only teachers), ``frontend`` and ``classifier_names`` (the modules sized by ``num_classes``; an optional
    head that a variant does not build, like PaSST's ``frame_head``, is None there), and implement
    ``forward_spectrogram`` and ``frontend_config``.

    Inputs up to ``clip_seconds`` go through the model in one pass. Longer inputs are windowed:

    * clip-only teachers follow hear21passt's scene embeddings: the waveform is reflect-padded by half a
      window on both sides, cut into ``clip_seconds`` windows every ``window_hop_seconds`` (plus one window
      aligned to the end, so no tail is dropped) and the clip logits of all windows are averaged;
    * frame-wise teachers follow PretrainedSED's inference: consecutive windows (the last one zero-padded),
      their frame logits concatenated and cut to the frame count of the input; the clip logits are the
      windows' clip logits averaged with weights proportional to the real audio each window holds.
      ``frame_window_hop_samples`` lets a family shift windows so that concatenated frames keep a constant rate.
    """

    sample_rate: int
    clip_seconds: float
    num_classes: int
    frames_per_second: float | None = None
    window_hop_seconds: float
    frontend: nn.Module
    classifier_names: tuple[str, ...]

    @abc.abstractmethod
    def forward_spectrogram(self, spec: torch.Tensor) -> TeacherOutput:
        """Logits for a batch of spectrograms as produced by ``self.frontend``."""

    @abc.abstractmethod
    def frontend_config(self) -> dict[str, Any]:
        """Frontend and windowing settings, JSON-serialisable, recorded next to stored logits."""

    @property
    def context_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    def min_input_samples(self) -> int:
        """The fewest samples this teacher takes in one pass: shorter clips are padded with zeros up to it.

        Measured once, on silence (:func:`layers.probe.shortest_input`), because the frontend and the network set
        it together: PaSST needs one 16-frame patch, a CNN enough frames for its pooling stack.
        """
        return min_input_samples(self)

    def frame_window_hop_samples(self) -> int:
        """Hop between consecutive windows for frame-wise teachers (default: the whole context)."""
        return self.context_samples

    def num_output_frames(self, num_samples: int) -> int:
        """Frames a frame-wise teacher returns for ``num_samples`` of audio (from its frame rate by default)."""
        return math.ceil(num_samples * self.frames_per_second / self.sample_rate)

    def windowing_config(self) -> dict[str, Any]:
        if self.frames_per_second is None:
            return {
                "context_seconds": self.clip_seconds,
                "long_input": "reflect-pad half a window, windows every window_hop_seconds, mean of clip logits",
                "window_hop_seconds": self.window_hop_seconds,
            }
        return {
            "context_seconds": self.clip_seconds,
            "long_input": "consecutive windows, frame logits concatenated, clip logits weighted mean",
            "window_hop_seconds": self.frame_window_hop_samples() / self.sample_rate,
            "frames_per_second": self.frames_per_second,
        }

    def forward(self, waveform: torch.Tensor) -> TeacherOutput:
        """Logits for mono audio ``[B, N]`` at ``self.sample_rate``; longer inputs are windowed, never cut."""
        if waveform.dim() != 2:
            raise TeacherInputError(f"expected a waveform batch [B, N], got shape {tuple(waveform.shape)}")
        if waveform.shape[-1] <= self.context_samples:
            return self.forward_spectrogram(self.frontend(waveform))
        if self.frames_per_second is None:
            return self._forward_overlapping_windows(waveform)
        return self._forward_consecutive_windows(waveform)

    def _forward_overlapping_windows(self, waveform: torch.Tensor) -> TeacherOutput:
        window = self.context_samples
        hop = max(1, round(self.window_hop_seconds * self.sample_rate))
        pad = window // 2
        padded = nn.functional.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        starts = list(range(0, padded.shape[-1] - window + 1, hop))
        if starts[-1] + window < padded.shape[-1]:
            starts.append(padded.shape[-1] - window)  # hear21passt's unfold would drop this tail
        clip = sum(self.forward_spectrogram(self.frontend(padded[:, s : s + window])).clip for s in starts)
        return TeacherOutput(clip / len(starts))

    def _forward_consecutive_windows(self, waveform: torch.Tensor) -> TeacherOutput:
        window, hop = self.context_samples, self.frame_window_hop_samples()
        num_samples = waveform.shape[-1]
        starts = range(0, num_samples - window + hop, hop)
        clips, frames, weights = [], [], []
        for start in starts:
            piece = waveform[:, start : start + window]
            weights.append(piece.shape[-1] / window)
            piece = nn.functional.pad(piece, (0, window - piece.shape[-1]))
            out = self.forward_spectrogram(self.frontend(piece))
            clips.append(out.clip * weights[-1])
            frames.append(out.frame)
        clip = sum(clips) / sum(weights)
        frame = torch.cat(frames, dim=1)[:, : self.num_output_frames(num_samples)]
        return TeacherOutput(clip, frame)
