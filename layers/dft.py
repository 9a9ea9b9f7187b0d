"""The power spectrogram of a centred STFT as two matrix products (a two-stage Cooley-Tukey DFT), for export.

ONNX Runtime's ``STFT`` operator transforms frame after frame without a fast FFT, and a DFT as one convolution
costs ``n_fft`` multiply-adds per bin and frame. Splitting the ``n_fft = N1 * N2`` point DFT in two
(``n = N2 * n1 + n2``, ``k = k1 + N1 * k2``) turns it into a real ``N1``-point DFT along ``n1`` for each ``n2``,
twiddle factors, and a complex ``N2``-point DFT along ``n2``: two dense matrix products ONNX Runtime runs at full
speed, about ``N1 + N2`` multiply-adds per bin. The input is real, so the first stage computes only
``k1 <= N1 / 2``: the power at ``k1 + N1 * k2`` for a larger ``k1`` equals that at
``(N1 - k1) + N1 * (N2 - 1 - k2)`` (``X[N - k]`` is the conjugate of ``X[k]``), and a gather picks each requested
bin. Frames are cut from ``hop``-sample blocks by slicing (a gather of every sample is slower than the transform
itself) and rows of the frame the window leaves at zero are skipped.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MatmulPowerSpectrum", "dft_factors"]


def dft_factors(n_fft: int, win_length: int | None = None) -> tuple[int, int]:
    """``(N1, N2)`` with ``N1 * N2 = n_fft`` and the fewest multiply-adds per frame for a ``win_length`` window.

    Per frame, the first stage costs ``2 H * rows * N2`` and the second ``H * (2 N2) ** 2``, with ``H = N1 // 2 + 1``
    and ``rows`` the rows of ``N2`` samples the centred window reaches.
    """
    win_length = win_length or n_fft

    def cost(n2: int) -> int:
        half, offset = n_fft // n2 // 2 + 1, (n_fft - win_length) // 2
        rows = -(-(offset + win_length) // n2) - offset // n2
        return 2 * half * rows * n2 + half * 4 * n2 * n2

    n2 = min((d for d in range(1, n_fft + 1) if n_fft % d == 0), key=cost)
    return n_fft // n2, n2


class MatmulPowerSpectrum(nn.Module):
    """``|STFT(x)|^2`` of waveforms ``[B, N]`` as ``[B, frames, hi - lo]``, bins ``lo..hi-1``.

    The STFT is torch's ``stft(center=True, pad_mode="reflect")`` with ``window`` (``win_length`` samples, centred
    in ``n_fft`` as torch pads it): ``frames = N // hop_length + 1``.
    """

    def __init__(self, window: torch.Tensor, n_fft: int, hop_length: int, bins: tuple[int, int]) -> None:
        super().__init__()
        lo, hi = bins
        if not 0 <= lo < hi <= n_fft // 2 + 1:
            raise ValueError(f"bins {lo}..{hi} outside the {n_fft // 2 + 1} bins of a {n_fft}-point DFT")
        n1, n2 = dft_factors(n_fft, window.numel())
        offset = (n_fft - window.numel()) // 2
        first, last = offset // n2, -(-(offset + window.numel()) // n2)  # rows n1 the window reaches
        self.n_fft, self.hop_length, self.lo, self.hi = n_fft, hop_length, lo, hi
        self.n1, self.n2, self.first, self.rows = n1, n2, first * n2, last - first
        half = n1 // 2 + 1  # real input: the k1 above N1 / 2 mirror those below
        self.half = half
        padded = torch.zeros(n_fft, dtype=torch.float64)
        padded[offset:offset + window.numel()] = window.double()
        self.register_buffer("window", padded.reshape(n1, n2)[first:last].float().contiguous())  # [rows, N2]
        k1 = torch.arange(half, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * k1 * torch.arange(first, last, dtype=torch.float64)[None, :] / n1
        self.register_buffer("stage1", torch.cat([angle.cos(), -angle.sin()]).float())  # [2 H, rows]
        twiddle = -2 * math.pi * k1 * torch.arange(n2, dtype=torch.float64)[None, :] / n_fft  # [H, N2]
        self.register_buffer("twiddle_cos", twiddle.cos().float())
        self.register_buffer("twiddle_sin", twiddle.sin().float())
        angle = 2 * math.pi * torch.arange(n2, dtype=torch.float64)[:, None] * torch.arange(n2)[None, :] / n2
        cos, sin = angle.cos(), angle.sin()
        self.register_buffer("stage2", torch.cat([torch.cat([cos, -sin], 1), torch.cat([sin, cos], 1)]).float())
        k = torch.arange(lo, hi)
        low, high = k % n1, k // n1
        mirrored = low > n1 // 2
        index = torch.where(mirrored, (n1 - low) * n2 + (n2 - 1 - high), low * n2 + high)
        self.register_buffer("bins", index)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, frames, rows, N2]``: each frame's samples the window reaches (``n1`` major), from hop blocks."""
        pad = self.n_fft // 2
        x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)[:, self.first:]
        batch, count = x.shape[0], (x.shape[1] + self.first - self.n_fft) // self.hop_length + 1
        span = self.rows * self.n2
        blocks_per_frame = -(-span // self.hop_length)
        blocks = count + blocks_per_frame - 1
        x = F.pad(x, (0, blocks_per_frame * self.hop_length))[:, :blocks * self.hop_length]
        x = x.reshape(batch, blocks, self.hop_length)
        framed = torch.cat([x[:, j:j + count] for j in range(blocks_per_frame)], dim=2)[:, :, :span]
        return framed.reshape(batch, count, self.rows, self.n2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stage1 = self.stage1 @ (self.frames(x) * self.window)  # [B, T, 2 H, N2]
        re, im = stage1[:, :, :self.half], stage1[:, :, self.half:]
        twiddled = torch.cat([re * self.twiddle_cos - im * self.twiddle_sin,
                              re * self.twiddle_sin + im * self.twiddle_cos], dim=3)  # [B, T, H, 2 N2]
        stage2 = twiddled @ self.stage2  # [B, T, H, 2 N2]
        re, im = stage2[..., :self.n2], stage2[..., self.n2:]
        power = (re * re + im * im).flatten(2)  # [B, T, H N2]: bin k1 + N1 k2 at k1 N2 + k2
        return power[:, :, self.bins]
