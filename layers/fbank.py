"""Kaldi-compatible log mel filter banks in plain torch (no torchaudio).

The frontend of AST (Gong et al., "AST: Audio Spectrogram Transformer", Interspeech 2021) and of many
self-supervised audio transformers: Kaldi's ``compute-fbank-feats`` with the options those models use
(25 ms Hanning frames every 10 ms, ``snip_edges``, per-frame DC removal, pre-emphasis 0.97, power
spectrum on a window zero-padded to the next power of two, Kaldi mel banks from 20 Hz to Nyquist,
``log(max(x, float32 eps))``, no energy term, no dither). Batched: a whole batch is one ``unfold``, one
``rfft`` and one matmul.
"""
from __future__ import annotations

import torch
from torch import nn

from .mel import kaldi_mel_banks

__all__ = ["KaldiFbank"]

_FLOAT_EPS = torch.finfo(torch.float32).eps


class KaldiFbank(nn.Module):
    """Waveform ``[B, N]`` -> log mel filter bank ``[B, frames, n_mels]``, Kaldi's algorithm.

    Frames: ``1 + (N - frame_length) // frame_shift`` (Kaldi's ``snip_edges``); inputs shorter than one
    frame are refused.

    Args:
        fmin: lower mel edge in Hz (Kaldi's ``low_freq``, default 20).
        fmax: upper mel edge; a non-positive value counts down from Nyquist (Kaldi's ``high_freq``, default 0).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 128,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        preemphasis: float = 0.97,
        fmin: float = 20.0,
        fmax: float = 0.0,
    ) -> None:
        super().__init__()
        self.sample_rate, self.n_mels = sample_rate, n_mels
        self.frame_length = int(sample_rate * frame_length_ms / 1000)
        self.frame_shift = int(sample_rate * frame_shift_ms / 1000)
        self.n_fft = 1 << (self.frame_length - 1).bit_length()
        self.preemphasis, self.fmin, self.fmax = preemphasis, fmin, fmax
        self.register_buffer("window", torch.hann_window(self.frame_length, periodic=False), persistent=False)
        self.register_buffer(
            "mel_basis", kaldi_mel_banks(n_mels, self.n_fft, sample_rate, fmin, fmax), persistent=False
        )

    def num_frames(self, num_samples: int) -> int:
        return 1 + (num_samples - self.frame_length) // self.frame_shift if num_samples >= self.frame_length else 0

    def extra_repr(self) -> str:
        return (
            f"sr={self.sample_rate}, n_mels={self.n_mels}, frame={self.frame_length}, shift={self.frame_shift}, "
            f"n_fft={self.n_fft}, preemphasis={self.preemphasis}, fmin={self.fmin}, fmax={self.fmax}"
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.shape[-1] < self.frame_length:
            raise ValueError(
                f"waveform of {waveform.shape[-1]} samples is shorter than one {self.frame_length}-sample fbank frame"
            )
        frames = waveform.float().unfold(-1, self.frame_length, self.frame_shift)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - self.preemphasis * previous) * self.window
        spectrum = torch.fft.rfft(frames, n=self.n_fft)
        power = spectrum.abs().pow(2.0)
        with torch.autocast(device_type=power.device.type, enabled=False):
            mel = torch.matmul(power, self.mel_basis.t())
        return mel.clamp_min(_FLOAT_EPS).log()
