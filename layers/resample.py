"""Band-limited resampling in plain torch (windowed-sinc polyphase filter, runs on any device).

Used where audio decoded once at one rate must feed models at several rates (a teacher ensemble mixing
32 kHz PaSST and 16 kHz AST). The filter is the classic Hann-windowed sinc interpolator (Smith, "Digital
Audio Resampling"): the rate ratio is reduced by the gcd, one kernel per output phase, and the whole
signal is filtered by a single strided ``conv1d``. The cut-off sits at 99% of the lower Nyquist rate.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

__all__ = ["resample"]

_ZEROS_PER_SIDE = 6
_ROLLOFF = 0.99


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Filter ``[new, 1, taps]`` for the reduced ratio ``orig -> new`` and its one-sided width in input samples."""
    cutoff = min(orig, new) * _ROLLOFF
    width = math.ceil(_ZEROS_PER_SIDE * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig
    phase = -torch.arange(new, dtype=torch.float64)[:, None] / new
    t = ((phase + taps[None, :]) * cutoff).clamp(-_ZEROS_PER_SIDE, _ZEROS_PER_SIDE)
    window = torch.cos(t * math.pi / (2 * _ZEROS_PER_SIDE)).square()
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t).where(t != 0, 1.0))
    kernel = sinc * window * (cutoff / orig)
    return kernel.to(torch.float32).unsqueeze(1), width


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample ``[..., N]`` audio from ``orig_rate`` to ``new_rate``; output length ``ceil(N * new / orig)``."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    kernel, width = _sinc_kernel(orig, new)
    kernel = kernel.to(device=waveform.device)
    shape, n = waveform.shape[:-1], waveform.shape[-1]
    x = nn.functional.pad(waveform.reshape(-1, 1, n).float(), (width, width + orig))
    y = nn.functional.conv1d(x, kernel, stride=orig)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    return y[:, : math.ceil(new * n / orig)].reshape(*shape, -1)
